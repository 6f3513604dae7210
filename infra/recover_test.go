package infra

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/telemetry"
)

// recorder is a slog handler that keeps Warn records (and drops the rest).
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	b.WriteString(" ") // every attribute ends with a space: "k=v " matches exactly
	r.mu.Lock()
	r.msgs = append(r.msgs, b.String())
	r.mu.Unlock()
	return nil
}
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &withAttrs{r, as}
}
func (r *recorder) WithGroup(string) slog.Handler { return r }

// count is how many Warn records contain every one of parts.
func (r *recorder) count(parts ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
next:
	for _, m := range r.msgs {
		for _, p := range parts {
			if !strings.Contains(m, p) {
				continue next
			}
		}
		n++
	}
	return n
}

type withAttrs struct {
	r  *recorder
	as []slog.Attr
}

func (w *withAttrs) Enabled(ctx context.Context, l slog.Level) bool { return w.r.Enabled(ctx, l) }
func (w *withAttrs) Handle(ctx context.Context, rec slog.Record) error {
	rec.AddAttrs(w.as...)
	return w.r.Handle(ctx, rec)
}
func (w *withAttrs) WithAttrs(as []slog.Attr) slog.Handler {
	return &withAttrs{w.r, append(append([]slog.Attr(nil), w.as...), as...)}
}
func (w *withAttrs) WithGroup(string) slog.Handler { return w }

// meter returns a Telemetry whose metrics the returned function sums by
// metric name and attribute (key=value) filter.
func meter(t testing.TB) (*telemetry.Telemetry, func(name string, attrs ...attribute.KeyValue) int64) {
	reader := sdkmetric.NewManualReader()
	tel := &telemetry.Telemetry{Metrics: telemetry.NewMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))}
	return tel, func(name string, attrs ...attribute.KeyValue) int64 {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				sum, ok := m.Data.(metricdata.Sum[int64])
				if m.Name != name || !ok {
					continue
				}
			points:
				for _, dp := range sum.DataPoints {
					for _, a := range attrs {
						if v, ok := dp.Attributes.Value(a.Key); !ok || v != a.Value {
							continue points
						}
					}
					n += dp.Value
				}
			}
		}
		return n
	}
}

func batch(worker string, d *events.DraftReady) *events.VerifyBatch {
	return &events.VerifyBatch{BatchID: "b-" + d.SessionID, Pool: "p0", Worker: worker, Policy: "size",
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond), Drafts: []events.DraftReady{*d}}
}

// publishSoon publishes ev, retrying for a few seconds while no stream takes it
// (the stream is being recreated), and fails t otherwise. A publish right after
// a stream is recreated may go unanswered (the server still routing the subject
// to the deleted stream), so each try is bounded, as the services' are.
func publishSoon(t testing.TB, p *Publisher, ev *events.Event) {
	t.Helper()
	var err error
	if !testwait.Eventually(5*time.Second, 50*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err = p.Publish(ctx, ev)
		return err == nil
	}) {
		if st, err := p.js.Stream(context.Background(), StreamBatches); err == nil {
			t.Logf("batches: %+v", st.CachedInfo().State)
		}
		for _, subj := range []string{"sled.batch.p0.w1", "sled.batch.p0.w2", "sled.batch.p0"} {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			a, err := p.js.Publish(ctx, subj, []byte("x"))
			cancel()
			t.Logf("raw %s: %+v %v", subj, a, err)
		}
		t.Fatalf("publish %s: %v", ev.Data.MsgID(), err)
	}
}

// TestStreamsDeletedWhileConsuming deletes SLED_DRAFTS and SLED_BATCHES under
// a drafts consumer (the batcher's) and two batch consumers (a verifier
// worker's): they recreate both streams, with the configuration they were
// provisioned with and first sequences above the old ones, recreate their
// durable consumers, log and count it, and process what is published next.
func TestStreamsDeletedWhileConsuming(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// A non-default configuration, which the recreated stream must keep.
	if err := ProvisionTopology(ctx, e.js, Topology{DraftMaxAge: 3 * time.Minute, BatchMaxAge: 4 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	log := slog.New(rec)
	tel, sum := meter(t)
	keeper := NewStreamKeeper(e.js, KeeperConfig{Logger: log, Telemetry: tel})
	if err := keeper.Learn(ctx); err != nil {
		t.Fatal(err)
	}
	drafts := make(chan string, 16)
	batches := make(chan string, 16)
	e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "batcher-p0", FilterSubjects: []string{events.DraftFilter("p0")},
		Logger: log, Telemetry: tel, Keeper: keeper}, func(_ context.Context, ev *events.Event, _ jetstream.Msg) error {
		drafts <- ev.Data.(*events.DraftReady).SessionID
		return nil
	})
	for _, w := range []string{"w1", ""} {
		durable := "verifier-p0"
		if w != "" {
			durable += "-" + w
		}
		e.run(t, ConsumerConfig{Stream: StreamBatches, Durable: durable, FilterSubjects: []string{events.BatchSubject("p0", w)},
			Logger: log, Telemetry: tel, Keeper: keeper}, func(_ context.Context, ev *events.Event, _ jetstream.Msg) error {
			batches <- ev.Data.(*events.VerifyBatch).BatchID
			return nil
		})
	}
	// Before: a draft and a batch each way.
	publishSoon(t, e.pub, events.New("/sled/device/d1", draft("d1", "s1", 1)))
	publishSoon(t, e.pub, events.New("/sled/batcher/p0", batch("w1", draft("d1", "s2", 1))))
	publishSoon(t, e.pub, events.New("/sled/batcher/p0", batch("", draft("d1", "s3", 1))))
	if got := recv(t, drafts, 5*time.Second); got != "s1" {
		t.Fatalf("draft %s", got)
	}
	seen := map[string]bool{recv(t, batches, 5*time.Second): true, recv(t, batches, 5*time.Second): true}
	if !seen["b-s2"] || !seen["b-s3"] {
		t.Fatalf("batches %v", seen)
	}

	deleted := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(strings.Join(rec.msgs, "\n"))
		}
	})
	for _, s := range []string{StreamDrafts, StreamBatches} {
		if err := e.js.DeleteStream(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// Both come back, as they were.
	for _, s := range []string{StreamDrafts, StreamBatches} {
		var info *jetstream.StreamInfo
		if !testwait.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
			st, err := e.js.Stream(ctx, s)
			if err == nil {
				info = st.CachedInfo()
			}
			return err == nil
		}) {
			t.Fatalf("%s not recreated", s)
		}
		t.Logf("%s recreated %s after its deletion, first seq %d", s, time.Since(deleted).Round(time.Millisecond), info.Config.FirstSeq)
		want := map[string]time.Duration{StreamDrafts: 3 * time.Minute, StreamBatches: 4 * time.Minute}[s]
		if info.Config.MaxAge != want {
			t.Errorf("%s recreated with MaxAge %s, want the provisioned %s", s, info.Config.MaxAge, want)
		}
		if s == StreamDrafts && !info.Config.AllowMsgTTL {
			t.Errorf("%s recreated without AllowMsgTTL", s)
		}
		if s == StreamBatches && info.Config.Retention != jetstream.WorkQueuePolicy {
			t.Errorf("%s recreated with retention %v", s, info.Config.Retention)
		}
		if info.Config.FirstSeq < 2 {
			t.Errorf("%s recreated from sequence %d, want above the old stream's", s, info.Config.FirstSeq)
		}
	}
	// After: served by the same consumers.
	publishSoon(t, e.pub, events.New("/sled/device/d1", draft("d1", "s4", 1)))
	publishSoon(t, e.pub, events.New("/sled/batcher/p0", batch("w1", draft("d1", "s5", 1))))
	publishSoon(t, e.pub, events.New("/sled/batcher/p0", batch("", draft("d1", "s6", 1))))
	if got := recv(t, drafts, 5*time.Second); got != "s4" {
		t.Fatalf("draft after the deletion: %s", got)
	}
	seen = map[string]bool{recv(t, batches, 5*time.Second): true, recv(t, batches, 5*time.Second): true}
	if !seen["b-s5"] || !seen["b-s6"] {
		t.Fatalf("batches after the deletion %v", seen)
	}
	t.Logf("served again %s after the deletion", time.Since(deleted).Round(time.Millisecond))

	for _, s := range []string{StreamDrafts, StreamBatches} {
		if n := sum("sled.infra.stream_recreated", attribute.String("stream", s)); n != 1 {
			t.Errorf("sled.infra.stream_recreated{stream=%s} = %d, want 1", s, n)
		}
		if n := rec.count("stream vanished", "stream="+s+" "); n != 1 {
			t.Errorf("%d warnings of %s's recreation, want 1", n, s)
		}
	}
	for _, c := range []string{"batcher-p0", "verifier-p0", "verifier-p0-w1"} {
		if n := sum("sled.infra.consumer_recreated", attribute.String("consumer", c)); n != 1 {
			t.Errorf("sled.infra.consumer_recreated{consumer=%s} = %d, want 1", c, n)
		}
		if n := rec.count("consumer vanished", "consumer="+c+" "); n != 1 {
			t.Errorf("%d warnings of %s's recreation, want 1", n, c)
		}
	}
}

// TestConsumerDeletedWhileConsuming deletes the durable consumer alone: it is
// recreated (the stream left as it is) and serves what the stream holds and
// what is published next.
func TestConsumerDeletedWhileConsuming(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	rec := &recorder{}
	tel, sum := meter(t)
	got := make(chan string, 16)
	c := e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "batcher-p0", Logger: slog.New(rec), Telemetry: tel},
		func(_ context.Context, ev *events.Event, _ jetstream.Msg) error {
			got <- ev.Data.(*events.DraftReady).SessionID
			return nil
		})
	publishSoon(t, e.pub, events.New("/sled/device/d1", draft("d1", "s1", 1)))
	recv(t, got, 5*time.Second)
	deleted := time.Now()
	if err := e.js.DeleteConsumer(ctx, StreamDrafts, "batcher-p0"); err != nil {
		t.Fatal(err)
	}
	if !testwait.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
		_, err := e.js.Consumer(ctx, StreamDrafts, "batcher-p0")
		return err == nil
	}) {
		t.Fatal("consumer not recreated")
	}
	t.Logf("consumer recreated %s after its deletion", time.Since(deleted).Round(time.Millisecond))
	publishSoon(t, e.pub, events.New("/sled/device/d1", draft("d1", "s2", 1)))
	// The new consumer delivers what the stream holds, s1 again included (a
	// draft past its deadline is dropped by the batcher; the batches stream, a
	// work queue, holds only unacknowledged batches).
	var after []string
	for len(after) == 0 || after[len(after)-1] != "s2" {
		after = append(after, recv(t, got, 5*time.Second))
	}
	if len(after) > 2 {
		t.Fatalf("after the deletion got %v", after)
	}
	if info, err := c.JetStream().Info(ctx); err != nil || info.Config.AckPolicy != jetstream.AckExplicitPolicy {
		t.Fatalf("recreated consumer: %v %+v", err, info)
	}
	if n := sum("sled.infra.consumer_recreated", attribute.String("stream", StreamDrafts), attribute.String("consumer", "batcher-p0")); n != 1 {
		t.Errorf("sled.infra.consumer_recreated = %d, want 1", n)
	}
	if n := sum("sled.infra.stream_recreated"); n != 0 {
		t.Errorf("sled.infra.stream_recreated = %d, want 0: the stream never went", n)
	}
	if n := rec.count("consumer vanished", "consumer=batcher-p0 "); n != 1 {
		t.Errorf("%d warnings of the recreation, want 1", n)
	}
}

// TestPublishStreamGone publishes to streams that are gone: without a keeper
// (a device) the publish fails within a bound with an error wrapping
// ErrNoStream, sync or async; with one (a batcher, a verifier) the stream is
// recreated and the message stored, also when a core subscriber of the subject
// (a device listening for its results) leaves the publish unanswered instead
// of refused.
func TestPublishStreamGone(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, s := range []string{StreamDrafts, StreamResults} {
		if err := e.js.DeleteStream(ctx, s); err != nil {
			t.Fatal(err)
		}
	}

	// A device's publisher: bounded, and says why.
	began := time.Now()
	_, err := e.pub.Publish(ctx, events.New("/sled/device/d1", draft("d1", "s1", 1)))
	took := time.Since(began)
	t.Logf("sync publish with no stream: %v after %s", err, took.Round(time.Millisecond))
	if !errors.Is(err, ErrNoStream) || !strings.Contains(err.Error(), "sled.draft.p0.d1") {
		t.Fatalf("publish with no stream: %v, want an error wrapping ErrNoStream naming the subject", err)
	}
	if took > 2*time.Second {
		t.Errorf("publish with no stream failed after %s", took)
	}
	f, err := e.pub.PublishAsync(events.New("/sled/device/d1", draft("d1", "s1", 2)))
	if err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	err = e.pub.Await(ctx, 3*time.Second, f)
	t.Logf("async publish with no stream: %v after %s", err, time.Since(began).Round(time.Millisecond))
	if !errors.Is(err, ErrNoStream) || time.Since(began) > 2*time.Second {
		t.Fatalf("await with no stream: %v after %s, want ErrNoStream within 2s", err, time.Since(began))
	}
	if _, err := e.js.Stream(ctx, StreamDrafts); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("a publisher without a keeper touched the stream: %v", err)
	}

	// A managing role's publisher recreates the stream and stores the message.
	tel, sum := meter(t)
	keeper := NewStreamKeeper(e.js, KeeperConfig{Logger: quiet, Telemetry: tel})
	mp := NewPublisher(e.js, PublisherConfig{Keeper: keeper})
	ack, err := mp.Publish(ctx, events.New("/sled/device/d1", draft("d1", "s1", 3)))
	if err != nil || ack.Stream != StreamDrafts {
		t.Fatalf("publish with a keeper: %v %+v", err, ack)
	}
	// A result: the device's core subscription hears it, so no "no
	// responders"; the ack never comes; Await finds the stream gone at its
	// timeout, recreates it and publishes again.
	res := e.results(t, "d1")
	r := events.ErrorResult(events.Address{DeviceID: "d1", SessionID: "s1", Round: 1}, events.StatusExpired, nil)
	f, err = mp.PublishAsync(events.New("/sled/verifier/p0/w1", r))
	if err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	if err := mp.Await(ctx, 500*time.Millisecond, f); err != nil {
		t.Fatalf("await a result with a keeper: %v", err)
	}
	t.Logf("result stored %s after its publish, SLED_RESULTS recreated", time.Since(began).Round(time.Millisecond))
	recv(t, res, time.Second)
	st, err := e.js.Stream(ctx, StreamResults)
	if err != nil || st.CachedInfo().State.Msgs != 1 {
		t.Fatalf("SLED_RESULTS after the await: %v", err)
	}
	for _, s := range []string{StreamDrafts, StreamResults} {
		if n := sum("sled.infra.stream_recreated", attribute.String("stream", s)); n != 1 {
			t.Errorf("sled.infra.stream_recreated{stream=%s} = %d, want 1", s, n)
		}
	}
}

// TestKeeperWatchRecreates deletes a stream nobody publishes to or consumes:
// the keeper's advisory watch recreates it at once.
func TestKeeperWatchRecreates(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	keeper := NewStreamKeeper(e.js, KeeperConfig{Streams: Topology{}.Select(StreamDLQ), Logger: quiet})
	if _, err := keeper.Watch(ctx, e.nc); err != nil {
		t.Fatal(err)
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{StreamDLQ, StreamResults} {
		if err := e.js.DeleteStream(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if !testwait.Eventually(3*time.Second, 20*time.Millisecond, func() bool {
		_, err := e.js.Stream(ctx, StreamDLQ)
		return err == nil
	}) {
		t.Fatal("SLED_DLQ not recreated")
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := e.js.Stream(ctx, StreamResults); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("a stream the keeper does not know was recreated: %v", err)
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, c := range []struct {
		filter, subject string
		want            bool
	}{
		{"sled.draft.>", "sled.draft.p0.d1", true},
		{"sled.draft.>", "sled.draft", false},
		{"sled.draft.*", "sled.draft.p0", true},
		{"sled.draft.*", "sled.draft.p0.d1", false},
		{"sled.result.>", "sled.draft.p0", false},
		{"a.b", "a.b", true},
		{"a.b", "a.b.c", false},
		{"*.b.>", "a.b.c.d", true},
	} {
		if got := SubjectMatches(c.filter, c.subject); got != c.want {
			t.Errorf("SubjectMatches(%q, %q) = %v", c.filter, c.subject, got)
		}
	}
}

// TestServerLostItsStore replaces the server under a running consumer by one
// with an empty store, as a server whose disk was lost comes back: the
// consumer hears no "consumer deleted"; its pulls after the reconnect find no
// consumer (no responders), it looks the consumer up, recreates the stream and
// the consumer, and serves what is published next.
func TestServerLostItsStore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	got := make(chan string, 16)
	e.run(t, ConsumerConfig{Stream: StreamDrafts, Durable: "batcher-p0"}, func(_ context.Context, ev *events.Event, _ jetstream.Msg) error {
		got <- ev.Data.(*events.DraftReady).SessionID
		return nil
	})
	publishSoon(t, e.pub, events.New("/sled/device/d1", draft("d1", "s1", 1)))
	recv(t, got, 5*time.Second)

	port := e.srv.Addr().(*net.TCPAddr).Port
	e.srv.Shutdown()
	lost := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	srv, err := StartEmbedded(sctx, EmbeddedConfig{Port: port, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	if !testwait.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
		_, err := e.js.Consumer(ctx, StreamDrafts, "batcher-p0")
		return err == nil
	}) {
		t.Fatal("stream and consumer not recreated on the new server")
	}
	t.Logf("stream and consumer recreated %s after the server was replaced", time.Since(lost).Round(time.Millisecond))
	publishSoon(t, e.pub, events.New("/sled/device/d1", draft("d1", "s2", 1)))
	if s := recv(t, got, 5*time.Second); s != "s2" {
		t.Fatalf("after the replacement got %s", s)
	}
}
