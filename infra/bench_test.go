package infra

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
)

// latencies records one duration per iteration and reports p50/p99 (µs)
// and, when a core-NATS baseline was measured in the same run, the p50 ratio
// against it.
type latencies []time.Duration

func (l latencies) report(b *testing.B, baselineP50 float64) (p50 float64) {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	q := func(p float64) float64 {
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Nanoseconds()) / 1e3
	}
	p50 = q(0.50)
	b.ReportMetric(p50, "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	if baselineP50 > 0 {
		b.ReportMetric(p50/baselineP50, "x-core-p50")
	}
	return p50
}

// BenchmarkLatency measures, on loopback against one embedded server with
// file storage, with a separate connection per role:
//
//   - core-request-reply: raw core NATS request/reply of a draft-sized
//     message (the baseline);
//   - jetstream-hop: Publisher.Publish of a draft (encode, dedupe id, TTL,
//     stored and acked) until a Consumer's handler has it decoded and
//     validated;
//   - round-trip: device → SLED_DRAFTS → batcher (batch of 1) →
//     SLED_BATCHES → instant verifier → SLED_RESULTS → device (core
//     subscription on its result subject), every hop encoded, published with
//     ack and decoded with validation.
func BenchmarkLatency(b *testing.B) {
	e := newEnv(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := func(name string) (*nats.Conn, jetstream.JetStream) {
		nc, js, err := Connect(ctx, e.srv.ClientURL(), name)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		return nc, js
	}
	devNC, devJS := conn("device")
	_, batJS := conn("batcher")
	verNC, verJS := conn("verifier")
	dec := &events.Decoder{VocabSize: 32000}
	devPub := NewPublisher(devJS, PublisherConfig{})

	sample, err := events.Encode(events.New("/sled/device/d1", draft("d1", "s1", 1)))
	if err != nil {
		b.Fatal(err)
	}
	reply, _ := events.Encode(events.New("/sled/verifier/w1", &events.VerifyResult{
		DeviceID: "d1", SessionID: "s1", Round: 1, Status: events.StatusOK, Accepted: 4, Token: 9}))

	var coreP50 float64
	b.Run("core-request-reply", func(b *testing.B) {
		sub, err := verNC.Subscribe("bench.verify", func(m *nats.Msg) {
			r := nats.NewMsg(m.Reply)
			r.Header, r.Data = reply.Header, reply.Data
			_ = m.RespondMsg(r)
		})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Unsubscribe()
		_ = verNC.Flush()
		req := nats.NewMsg("bench.verify")
		req.Header, req.Data = sample.Header, sample.Data
		lat := make(latencies, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if _, err := devNC.RequestMsg(req, 5*time.Second); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		coreP50 = lat.report(b, 0)
	})

	var round uint64
	nextDraft := func(dev, sess string) *events.DraftReady {
		round++
		return draft(dev, sess, round)
	}

	hop := make(chan struct{}, 1)
	run := func(cfg ConsumerConfig, js jetstream.JetStream, h Handler) {
		cfg.Decoder, cfg.Logger = dec, quiet
		c, err := NewConsumer(ctx, js, cfg)
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = c.Run(ctx, h) }()
	}
	run(ConsumerConfig{Stream: StreamDrafts, Durable: "hop", FilterSubjects: []string{events.DraftFilter("hop")}}, batJS,
		func(context.Context, *events.Event, jetstream.Msg) error { hop <- struct{}{}; return nil })
	b.Run("jetstream-hop", func(b *testing.B) {
		lat := make(latencies, 0, b.N)
		for b.Loop() {
			d := nextDraft("d1", "hop1")
			d.Pool = "hop"
			t0 := time.Now()
			if _, err := devPub.Publish(ctx, events.New("/sled/device/d1", d)); err != nil {
				b.Fatal(err)
			}
			<-hop
			lat = append(lat, time.Since(t0))
		}
		lat.report(b, coreP50)
	})

	// The round trip: batcher and instant verifier.
	batPub, verPub := NewPublisher(batJS, PublisherConfig{}), NewPublisher(verJS, PublisherConfig{})
	run(ConsumerConfig{Stream: StreamDrafts, Durable: "batcher-p0", FilterSubjects: []string{events.DraftFilter("p0")}}, batJS,
		func(ctx context.Context, ev *events.Event, _ jetstream.Msg) error {
			d := ev.Data.(*events.DraftReady)
			bt := &events.VerifyBatch{BatchID: fmt.Sprintf("b%d", d.Round), Pool: d.Pool, Policy: "size",
				Drafts: []events.DraftReady{*d}, CreatedAt: time.Now()}
			out := events.New("/sled/batcher/p0", bt)
			out.TraceParent = ev.TraceParent
			_, err := batPub.Publish(ctx, out)
			return err
		})
	run(ConsumerConfig{Stream: StreamBatches, Durable: "verifier-p0", FilterSubjects: []string{events.BatchSubject("p0", "")}}, verJS,
		func(ctx context.Context, ev *events.Event, _ jetstream.Msg) error {
			bt := ev.Data.(*events.VerifyBatch)
			for _, d := range bt.Drafts {
				r := &events.VerifyResult{DeviceID: d.DeviceID, SessionID: d.SessionID, Round: d.Round, Status: events.StatusOK,
					Accepted: len(d.Draft), Token: 29892, BatchID: bt.BatchID, BatchSize: len(bt.Drafts)}
				if _, err := verPub.Publish(ctx, events.New("/sled/verifier/w1", r)); err != nil {
					return err
				}
			}
			return nil
		})
	results := make(chan *events.VerifyResult, 1)
	sub, err := devNC.Subscribe(events.ResultSubject("d2"), func(m *nats.Msg) {
		ev, err := dec.DecodeMsg(m)
		if err != nil {
			b.Error(err)
			return
		}
		results <- ev.Data.(*events.VerifyResult)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = devNC.Flush()
	b.Run("round-trip", func(b *testing.B) {
		lat := make(latencies, 0, b.N)
		for b.Loop() {
			d := nextDraft("d2", "rt1")
			t0 := time.Now()
			if _, err := devPub.Publish(ctx, events.New("/sled/device/d2", d)); err != nil {
				b.Fatal(err)
			}
			r := <-results
			lat = append(lat, time.Since(t0))
			if r.Round != d.Round {
				b.Fatalf("result for round %d, want %d", r.Round, d.Round)
			}
		}
		lat.report(b, coreP50)
	})
}
