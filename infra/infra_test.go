package infra

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/internal/testwait"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type env struct {
	srv *Embedded
	nc  *nats.Conn
	js  jetstream.JetStream
	pub *Publisher
}

// newEnv starts an embedded server on a random port with a temp store and
// provisions the SLED streams.
func newEnv(t testing.TB) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := StartEmbedded(ctx, EmbeddedConfig{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, js, err := Connect(ctx, srv.ClientURL(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := ProvisionTopology(ctx, js, Topology{}); err != nil {
		t.Fatal(err)
	}
	return &env{srv: srv, nc: nc, js: js, pub: NewPublisher(js, PublisherConfig{})}
}

func draft(dev, sess string, round uint64) *events.DraftReady {
	prefix := []int32{1, 15043, 29892, 920}
	return &events.DraftReady{
		DeviceID: dev, SessionID: sess, Round: round, Pool: "p0",
		PrefixLen: len(prefix), PrefixHash: events.PrefixHash(prefix), Committed: prefix[3:],
		Draft: []int32{2599, 29973, 13, 306}, DraftProbs: []float32{0.9, 0.8, 0.95, 0.7},
		VocabFingerprint: "llama:32000:abc", Deadline: time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond),
	}
}

// results subscribes (core NATS) to a device's result subject and returns
// decoded results.
func (e *env) results(t testing.TB, device string) <-chan *events.VerifyResult {
	t.Helper()
	ch := make(chan *events.VerifyResult, 64)
	sub, err := e.nc.Subscribe(events.ResultSubject(device), func(m *nats.Msg) {
		ev, err := events.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Errorf("result does not decode: %v", err)
			return
		}
		ch <- ev.Data.(*events.VerifyResult)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	_ = e.nc.Flush()
	return ch
}

func (e *env) run(t testing.TB, cfg ConsumerConfig, h Handler) *Consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	c, err := NewConsumer(ctx, e.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx, h) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func recv[T any](t testing.TB, ch <-chan T, d time.Duration) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		var zero T
		t.Fatalf("nothing received in %v", d)
		return zero
	}
}

func jsonEq(t testing.TB, a, b any) {
	t.Helper()
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	if !bytes.Equal(x, y) {
		t.Fatalf("differ:\n%s\n%s", x, y)
	}
}

func TestProvisionIdempotent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for range 2 {
		if err := ProvisionTopology(ctx, e.js, Topology{}); err != nil {
			t.Fatal(err)
		}
	}
	names := map[string]bool{}
	for n := range e.js.StreamNames(ctx).Name() {
		names[n] = true
	}
	for _, n := range []string{StreamDrafts, StreamBatches, StreamResults, StreamDLQ} {
		if !names[n] {
			t.Errorf("stream %s missing", n)
		}
	}
	st, _ := e.js.Stream(ctx, StreamDrafts)
	if cfg := st.CachedInfo().Config; !cfg.AllowMsgTTL || cfg.Duplicates != 30*time.Second {
		t.Errorf("drafts config %+v", cfg)
	}
	if dlq, _ := e.js.Stream(ctx, StreamDLQ); dlq.CachedInfo().Config.Duplicates != 2*time.Minute {
		t.Errorf("DLQ duplicate window %v", dlq.CachedInfo().Config.Duplicates)
	}
	if _, err := NewConsumer(ctx, e.js, ConsumerConfig{Stream: StreamDrafts, Durable: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewConsumer(ctx, e.js, ConsumerConfig{Stream: StreamDrafts, Durable: "b"}); err != nil {
		t.Fatalf("consumer not idempotent: %v", err)
	}
}

func TestRoundTripEachType(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	got := make(chan *events.Event, 3)
	h := func(_ context.Context, ev *events.Event, _ jetstream.Msg) error { got <- ev; return nil }
	e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "batcher-p0", FilterSubjects: []string{events.DraftFilter("p0")}}, h)
	e.run(t, ConsumerConfig{Stream: StreamBatches, Durable: "verifier-p0", FilterSubjects: []string{events.BatchSubject("p0", "")}}, h)
	e.run(t, ConsumerConfig{Stream: StreamResults, Durable: "device-d1", FilterSubjects: []string{events.ResultSubject("d1")}}, h)

	d := draft("d1", "s1", 1)
	b := &events.VerifyBatch{BatchID: "b1", Pool: "p0", Policy: "size", Drafts: []events.DraftReady{*d}, CreatedAt: time.Now().UTC()}
	r := &events.VerifyResult{DeviceID: "d1", SessionID: "s1", Round: 1, Status: events.StatusOK, Accepted: 4, Token: 7, BatchID: "b1", BatchSize: 1}
	for _, p := range []events.Payload{d, b, r} {
		src := "/sled/test"
		if d, ok := p.(*events.DraftReady); ok {
			src = events.DeviceSource(d.DeviceID)
		}
		ev := events.New(src, p)
		ev.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		if _, err := e.pub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		out := recv(t, got, 5*time.Second)
		if out.ID != ev.ID || out.Type() != p.EventType() || out.TraceParent != ev.TraceParent {
			t.Fatalf("envelope %+v", out)
		}
		jsonEq(t, out.Data, p)
	}
}

// TestRedeliveryAfterAckWait: a worker takes a batch and dies without
// acking; after AckWait a second worker on the same durable gets it.
func TestRedeliveryAfterAckWait(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cfg := ConsumerConfig{Stream: StreamBatches, Durable: "verifiers", FilterSubjects: []string{"sled.batch.p0"}, AckWait: 300 * time.Millisecond, Logger: quiet}
	first, err := NewConsumer(ctx, e.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := &events.VerifyBatch{BatchID: "b1", Pool: "p0", Policy: "deadline", Drafts: []events.DraftReady{*draft("d1", "s1", 1)}, CreatedAt: time.Now().UTC()}
	if _, err := e.pub.Publish(ctx, events.New("/sled/batcher/p0", b)); err != nil {
		t.Fatal(err)
	}
	batch, err := first.JetStream().Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for range batch.Messages() {
		n++ // taken, never acked: the worker "crashed"
	}
	if n != 1 {
		t.Fatalf("first worker got %d messages", n)
	}
	start := time.Now()
	type delivery struct {
		ev  *events.Event
		num uint64
	}
	got := make(chan delivery, 1)
	e.run(t, cfg, func(_ context.Context, ev *events.Event, m jetstream.Msg) error {
		md, _ := m.Metadata()
		got <- delivery{ev, md.NumDelivered}
		return nil
	})
	d := recv(t, got, 5*time.Second)
	if d.num != 2 || d.ev.Data.(*events.VerifyBatch).BatchID != "b1" {
		t.Fatalf("redelivery %+v", d)
	}
	t.Logf("redelivered after %v (AckWait 300ms)", time.Since(start))
}

// TestMaxDeliverExpired: a message nobody acks in MaxDeliver deliveries is
// answered with an "expired" result on the device's subject.
func TestMaxDeliverExpired(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	w, err := WatchExpiries(ctx, e.nc, e.js, ExpiryConfig{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	res := e.results(t, "d7")
	var deliveries atomic.Int32
	e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "stuck", FilterSubjects: []string{events.DraftFilter("p0")},
		AckWait: 200 * time.Millisecond, MaxDeliver: 2, NakDelay: 50 * time.Millisecond},
		func(context.Context, *events.Event, jetstream.Msg) error {
			deliveries.Add(1)
			return errors.New("verifier overloaded") // transient: nak, until MaxDeliver
		})
	if _, err := e.pub.Publish(ctx, events.New("/sled/device/d7", draft("d7", "s7", 3))); err != nil {
		t.Fatal(err)
	}
	r := recv(t, res, 5*time.Second)
	if r.Status != events.StatusExpired || r.Reason != "expired" || r.SessionID != "s7" || r.Round != 3 || r.DeviceID != "d7" {
		t.Fatalf("result %+v", r)
	}
	if n := deliveries.Load(); n != 2 {
		t.Fatalf("%d deliveries, want 2", n)
	}
	dlq := dlqMessages(t, e, 1)
	if dlq[0].Subject != "sled.dlq.expired" || dlq[0].Header.Get(HeaderDLQSubject) != events.DraftSubject("p0", "d7") {
		t.Fatalf("dlq %s %v", dlq[0].Subject, dlq[0].Header)
	}
}

// PublishAsync sends with the same message id as Publish: an async retry of a
// stored round is a duplicate. An event that does not encode is ErrEncode, and
// nothing is sent.
func TestPublishAsync(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := draft("d1", "s1", 7)
	if _, err := e.pub.Publish(ctx, events.New("/sled/device/d1", d)); err != nil {
		t.Fatal(err)
	}
	f, err := e.pub.PublishAsync(events.New("/sled/device/d1", d))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ack := <-f.Ok():
		if !ack.Duplicate {
			t.Fatalf("async retry of a stored round not a duplicate: %+v", ack)
		}
	case err := <-f.Err():
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("no ack in 5s")
	}
	bad := draft("d1", "s1", 8)
	bad.DraftProbs = bad.DraftProbs[:1] // lengths disagree
	if _, err := e.pub.PublishAsync(events.New("/sled/device/d1", bad)); !errors.Is(err, ErrEncode) {
		t.Fatalf("invalid event: %v, want ErrEncode", err)
	}
	if _, err := e.pub.Publish(ctx, events.New("/sled/device/d1", bad)); !errors.Is(err, ErrEncode) {
		t.Fatalf("invalid event: %v, want ErrEncode", err)
	}
	st, _ := e.js.Stream(ctx, StreamDrafts)
	if info, _ := st.Info(ctx); info.State.Msgs != 1 {
		t.Fatalf("%d messages stored, want 1", info.State.Msgs)
	}
}

func TestDuplicateStoredOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := draft("d1", "s1", 5)
	a1, err := e.pub.Publish(ctx, events.New("/sled/device/d1", d))
	if err != nil {
		t.Fatal(err)
	}
	a2, err := e.pub.Publish(ctx, events.New("/sled/device/d1", d)) // a retry of the same round
	if err != nil {
		t.Fatal(err)
	}
	if a1.Duplicate || !a2.Duplicate || a1.Sequence != a2.Sequence {
		t.Fatalf("acks %+v %+v", a1, a2)
	}
	st, _ := e.js.Stream(ctx, StreamDrafts)
	info, _ := st.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("%d messages stored", info.State.Msgs)
	}
}

func TestStaleDraftNotDelivered(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pub := NewPublisher(e.js, PublisherConfig{DraftTTL: time.Second})
	if _, err := pub.Publish(ctx, events.New("/sled/device/d1", draft("d1", "old", 1))); err != nil {
		t.Fatal(err)
	}
	st, _ := e.js.Stream(ctx, StreamDrafts)
	gone := testwait.Eventually(6*time.Second, 100*time.Millisecond, func() bool {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs == 0
	})
	if !gone {
		t.Fatal("stale draft still stored")
	}
	got := make(chan *events.Event, 2)
	e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "late"}, func(_ context.Context, ev *events.Event, _ jetstream.Msg) error {
		got <- ev
		return nil
	})
	if _, err := pub.Publish(ctx, events.New("/sled/device/d1", draft("d1", "fresh", 1))); err != nil {
		t.Fatal(err)
	}
	if s := recv(t, got, 5*time.Second).Data.(*events.DraftReady).SessionID; s != "fresh" {
		t.Fatalf("delivered stale draft of session %s", s)
	}
}

func dlqMessages(t testing.TB, e *env, want int) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	st, err := e.js.Stream(ctx, StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	var stored uint64
	enough := testwait.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stored = info.State.Msgs
		return int(stored) >= want
	})
	if !enough {
		t.Fatalf("dead letters: %d, want %d", stored, want)
	}
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); len(out) < want; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// TestBadInput: each kind of bad input is rejected with an error result to
// the sender and a dead-letter copy, and the consumer keeps going.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	res := e.results(t, "d1")
	good, err := events.Encode(events.New("/sled/device/d1", draft("d1", "s1", 1)))
	if err != nil {
		t.Fatal(err)
	}
	variant := func(f func(m *nats.Msg)) *nats.Msg {
		m := nats.NewMsg(good.Subject)
		for k, v := range good.Header {
			m.Header[k] = append([]string(nil), v...)
		}
		m.Data = append([]byte(nil), good.Data...)
		f(m)
		return m
	}
	withData := func(f func(d *events.DraftReady)) func(m *nats.Msg) {
		return func(m *nats.Msg) {
			d := draft("d1", "s1", 1)
			f(d)
			m.Data, _ = json.Marshal(d)
		}
	}
	cases := []struct {
		reason string
		m      *nats.Msg
	}{
		{"malformed", variant(func(m *nats.Msg) { m.Header = nats.Header{"ce-id": {"x"}} })},
		{"unsupported_specversion", variant(func(m *nats.Msg) { m.Header.Set(events.HeaderSpecVersion, "0.3") })},
		{"unknown_type", variant(func(m *nats.Msg) { m.Header.Set(events.HeaderType, "com.example.other") })},
		{"schema", variant(withData(func(d *events.DraftReady) { d.Draft = make([]int32, 100); d.DraftProbs = make([]float32, 100) }))},
		{"too_large", variant(func(m *nats.Msg) { m.Data = bytes.Repeat([]byte(" "), 300<<10) })},
		{"token_range", variant(withData(func(d *events.DraftReady) { d.Draft[1] = 50000 }))},
		{"invalid", variant(withData(func(d *events.DraftReady) { d.DraftProbs = d.DraftProbs[:1] }))},
	}
	handled := make(chan *events.Event, 4)
	e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "batcher", Decoder: &events.Decoder{VocabSize: 32000}},
		func(_ context.Context, ev *events.Event, _ jetstream.Msg) error {
			handled <- ev
			return nil
		})
	for i, c := range cases {
		if _, err := e.js.PublishMsg(ctx, c.m, jetstream.WithMsgID(fmt.Sprint("bad", i))); err != nil {
			t.Fatalf("%s: %v", c.reason, err)
		}
		r := recv(t, res, 5*time.Second)
		if r.Status != events.StatusInvalid || r.Reason != c.reason || r.DeviceID != "d1" {
			t.Fatalf("%s: result %+v", c.reason, r)
		}
		if c.reason != "malformed" && c.reason != "too_large" && (r.SessionID != "s1" || r.Round != 1) {
			t.Errorf("%s: result not addressed to the round: %+v", c.reason, r)
		}
	}
	// The consumer is still running.
	if _, err := e.js.PublishMsg(ctx, good); err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, handled, 5*time.Second); ev.Data.(*events.DraftReady).SessionID != "s1" {
		t.Fatal("wrong event")
	}
	dl := dlqMessages(t, e, len(cases))
	for i, c := range cases {
		if dl[i].Subject != events.DLQSubject(c.reason) || !strings.HasPrefix(dl[i].Header.Get(HeaderDLQStream), StreamDrafts) {
			t.Errorf("dead letter %d: %s %v", i, dl[i].Subject, dl[i].Header)
		}
	}
	if len(handled) != 0 {
		t.Fatal("bad input reached the handler")
	}
}

// TestHandlerErrors: a permanent handler error terms, dead-letters and
// answers; a transient one is redelivered.
func TestHandlerErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	res := e.results(t, "d2")
	var calls atomic.Int32
	done := make(chan uint64, 4)
	e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "h", NakDelay: 10 * time.Millisecond},
		func(_ context.Context, ev *events.Event, m jetstream.Msg) error {
			d := ev.Data.(*events.DraftReady)
			if d.SessionID == "perm" {
				return Permanent(fmt.Errorf("vocab mismatch: %w", events.ErrInvalid))
			}
			if calls.Add(1) == 1 {
				return errors.New("try again")
			}
			md, _ := m.Metadata()
			done <- md.NumDelivered
			return nil
		})
	if _, err := e.pub.Publish(ctx, events.New(events.DeviceSource("d2"), draft("d2", "perm", 1))); err != nil {
		t.Fatal(err)
	}
	if r := recv(t, res, 5*time.Second); r.Status != events.StatusInvalid || r.Reason != "invalid" || r.SessionID != "perm" {
		t.Fatalf("result %+v", r)
	}
	if dl := dlqMessages(t, e, 1); dl[0].Subject != "sled.dlq.invalid" {
		t.Fatal(dl[0].Subject)
	}
	if _, err := e.pub.Publish(ctx, events.New(events.DeviceSource("d2"), draft("d2", "transient", 1))); err != nil {
		t.Fatal(err)
	}
	if n := recv(t, done, 5*time.Second); n != 2 {
		t.Fatalf("succeeded on delivery %d, want 2", n)
	}
}

func TestDraftTTL(t *testing.T) {
	p := NewPublisher(nil, PublisherConfig{DraftTTL: 10 * time.Second})
	now := time.Now()
	for _, c := range []struct {
		deadline time.Time
		want     time.Duration
	}{
		{time.Time{}, 10 * time.Second},
		{now.Add(time.Hour), 10 * time.Second},
		{now.Add(3*time.Second + 100*time.Millisecond), 3 * time.Second},
		{now.Add(-time.Second), time.Second}, // already late: the server's minimum
	} {
		d := draft("d", "s", 1)
		d.Deadline = c.deadline
		if got := p.draftTTL(d); got != c.want {
			t.Errorf("deadline in %v: ttl %v, want %v", time.Until(c.deadline).Round(time.Second), got, c.want)
		}
	}
}
