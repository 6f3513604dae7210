package batcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/telemetry"
)

// Config configures a Batcher. Zero fields take the documented defaults.
type Config struct {
	// Pool is the pool whose drafts (sled.draft.<pool>.*) this batcher batches.
	// Default events.DefaultPool.
	Pool string
	// Policy decides when batches close.
	Policy Policy
	// HeartbeatTimeout: a worker silent this long gets no new batches. Default 3s.
	HeartbeatTimeout time.Duration
	// ActiveWindow: a device counts as active (for Policy's early close) when it
	// sent a draft within this window. Default 1s. Devices, not sessions, are
	// counted: a device runs one generation at a time, so it has at most one round
	// in flight, while a finished session would look active for the whole window.
	ActiveWindow time.Duration
	// AckWait of the drafts consumer: a draft not batched and stored within it is
	// redelivered (a crashed batcher's drafts go to its replacement). Default 5s.
	AckWait time.Duration
	// VocabSize, when > 0, makes the batcher reject drafts with larger token ids.
	VocabSize int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Telemetry receives the batcher's spans and metrics. Default: none.
	Telemetry *telemetry.Telemetry
}

// TracerName is the instrumentation scope of the batcher's spans.
const TracerName = "github.com/sled-project/sled/batcher"

// Stats are a Batcher's counters.
type Stats struct {
	Drafts, Batches, Superseded, Stale, Moved uint64
	ByReason                                  map[string]uint64
}

// Batcher consumes a pool's drafts and publishes verification batches. A draft is
// acknowledged only after the batch holding it is stored in JetStream, so a crash
// loses nothing: unacknowledged drafts are redelivered. Several batchers of one
// pool may run (they share the durable consumer), at the cost of smaller batches.
// A batcher manages the streams it uses: one that vanishes (SLED_DRAFTS, its
// durable consumer, SLED_BATCHES on publish) is recreated (infra.StreamKeeper).
type Batcher struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	keeper *infra.StreamKeeper // recreates the SLED streams if they vanish
	pub    *infra.Publisher
	source string
	seq    atomic.Uint64
	prefix string

	mu     sync.Mutex
	router *Router
	queues map[string]*queue        // worker ("" = shared) -> pending drafts
	recent Activity                 // devices seen within ActiveWindow
	costs  map[string]goodput.Curve // worker -> its pass-cost estimate, from heartbeats
	stats  Stats
	wake   chan struct{}

	tel       *telemetry.Telemetry
	tracer    trace.Tracer
	m         *telemetry.Metrics
	poolAttrs metric.MeasurementOption            // pool
	byPolicy  map[string]metric.MeasurementOption // pool, policy
	byOutcome map[string]metric.MeasurementOption // pool, outcome
}

// Draft outcomes at the batcher (the outcome label of sled_batcher_drafts_total).
const (
	OutcomeBatched    = "batched"
	OutcomeSuperseded = "superseded" // a newer round of the session replaced it
	OutcomeStale      = "stale"      // past its deadline on arrival
)

type queue struct {
	items  []item
	oldest time.Time
}

type item struct {
	d     *events.DraftReady
	msg   jetstream.Msg
	at    time.Time
	round trace.SpanContext // the round's span, from the draft's traceparent
	span  trace.Span        // "batcher.queue": arrival to batch close
}

// New creates a batcher; Run runs it.
func New(nc *nats.Conn, js jetstream.JetStream, cfg Config) (*Batcher, error) {
	if cfg.Pool == "" {
		cfg.Pool = events.DefaultPool
	}
	if !events.ValidID(cfg.Pool) {
		return nil, fmt.Errorf("batcher: invalid pool %q", cfg.Pool)
	}
	cfg.Policy = cfg.Policy.WithDefaults()
	if cfg.ActiveWindow <= 0 {
		cfg.ActiveWindow = time.Second
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	tel := cfg.Telemetry.Or()
	pool := attribute.String("pool", cfg.Pool)
	// The streams the batcher uses: drafts in, batches out, error results and
	// dead letters of rejected drafts.
	keeper := infra.NewStreamKeeper(js, infra.KeeperConfig{
		Streams: infra.Topology{}.Select(infra.StreamDrafts, infra.StreamBatches, infra.StreamResults, infra.StreamDLQ),
		Logger:  cfg.Logger, Telemetry: cfg.Telemetry,
	})
	b := &Batcher{
		cfg: cfg, nc: nc, js: js, keeper: keeper, pub: infra.NewPublisher(js, infra.PublisherConfig{Keeper: keeper}), source: "/sled/batcher/" + cfg.Pool,
		prefix: cfg.Pool + "-" + hex.EncodeToString(rb[:]),
		router: NewRouter(cfg.HeartbeatTimeout, 0),
		queues: map[string]*queue{}, costs: map[string]goodput.Curve{}, recent: Activity{Window: cfg.ActiveWindow},
		stats: Stats{ByReason: map[string]uint64{}}, wake: make(chan struct{}, 1),
		tel: tel, tracer: tel.Tracer(TracerName), m: tel.Metrics,
		poolAttrs: metric.WithAttributeSet(attribute.NewSet(pool)),
		byPolicy:  map[string]metric.MeasurementOption{},
		byOutcome: map[string]metric.MeasurementOption{},
	}
	for _, r := range []string{ReasonSize, ReasonAll, ReasonDeadline, ReasonSLO} {
		b.byPolicy[r] = metric.WithAttributeSet(attribute.NewSet(pool, attribute.String("policy", r)))
	}
	for _, o := range []string{OutcomeBatched, OutcomeSuperseded, OutcomeStale} {
		b.byOutcome[o] = metric.WithAttributeSet(attribute.NewSet(pool, attribute.String("outcome", o)))
	}
	return b, nil
}

// Stats returns a copy of the counters.
func (b *Batcher) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats
	s.ByReason = make(map[string]uint64, len(b.stats.ByReason))
	for k, v := range b.stats.ByReason {
		s.ByReason[k] = v
	}
	return s
}

// Workers lists the workers currently considered alive.
func (b *Batcher) Workers() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.router.Alive(time.Now())
}

// Run consumes drafts until ctx ends, then flushes nothing more and returns ctx's
// error; drafts still queued are redelivered to the next batcher.
func (b *Batcher) Run(ctx context.Context) error {
	hb, err := b.nc.Subscribe(events.HeartbeatFilter(b.cfg.Pool), func(m *nats.Msg) {
		var h events.Heartbeat
		if json.Unmarshal(m.Data, &h) != nil || !events.ValidID(h.Worker) {
			return
		}
		b.mu.Lock()
		b.router.Heartbeat(h.Worker, time.Now())
		if len(h.PassCost) > 0 {
			b.costs[h.Worker] = h.PassCost
		}
		b.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("batcher: heartbeats: %w", err)
	}
	defer hb.Unsubscribe()
	// Recreated streams get the configuration they were provisioned with.
	if err := b.keeper.Learn(ctx); err != nil {
		b.cfg.Logger.Debug("learn stream configurations", "err", err)
	}
	if stop, err := b.keeper.Watch(ctx, b.nc); err != nil {
		b.cfg.Logger.Warn("stream deletions will be noticed late", "err", err)
	} else {
		defer stop()
	}
	cons, err := infra.NewConsumer(ctx, b.js, infra.ConsumerConfig{
		Stream: infra.StreamDrafts, Durable: "batcher-" + b.cfg.Pool,
		FilterSubjects: []string{events.DraftFilter(b.cfg.Pool)},
		AckWait:        b.cfg.AckWait,
		Decoder:        &events.Decoder{VocabSize: b.cfg.VocabSize},
		Source:         b.source, Logger: b.cfg.Logger, Telemetry: b.cfg.Telemetry, Keeper: b.keeper,
	})
	if err != nil {
		return fmt.Errorf("batcher: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); b.flusher(ctx) }()
	err = cons.Run(ctx, b.handle)
	wg.Wait()
	return err
}

// handle queues one draft; the ack waits for the batch to be stored.
func (b *Batcher) handle(ctx context.Context, ev *events.Event, msg jetstream.Msg) error {
	d, ok := ev.Data.(*events.DraftReady)
	if !ok {
		return infra.Permanent(fmt.Errorf("%w: %s on a draft subject", events.ErrInvalid, ev.Type()))
	}
	now := time.Now()
	// The draft's trace context is its round's: the queue span is the round's
	// child, and the draft carries the context on into the batch.
	rctx := b.tel.Extract(ctx, ev)
	_, span := b.tracer.Start(rctx, "batcher.queue", trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(telemetry.EventAttrs(ev, msg.Subject(), "receive")...)
		span.SetAttributes(telemetry.AttrDevice.String(d.DeviceID), telemetry.AttrSession.String(d.SessionID),
			telemetry.AttrRound.Int64(int64(d.Round)), telemetry.AttrDrafted.Int(len(d.Draft)), telemetry.AttrPool.String(b.cfg.Pool))
	}
	if d.TraceParent == "" {
		d.TraceParent, d.TraceState = ev.TraceParent, ev.TraceState
	}
	if !d.Deadline.IsZero() && now.After(d.Deadline) {
		// The device has given up on this round and resent its tokens in a new one.
		b.mu.Lock()
		b.stats.Stale++
		b.mu.Unlock()
		b.dropped(ctx, span, OutcomeStale)
		return nil
	}
	b.mu.Lock()
	b.stats.Drafts++
	b.recent.Seen(d.DeviceID, now)
	worker, moved := b.router.Route(d.SessionID, now)
	if moved {
		b.stats.Moved++
	}
	q := b.queues[worker]
	if q == nil {
		q = &queue{}
		b.queues[worker] = q
	}
	// A newer round of a session supersedes the queued one: its drafts include
	// everything the older round carried.
	for i, it := range q.items {
		if it.d.SessionID == d.SessionID {
			if it.d.Round < d.Round {
				_ = it.msg.Ack()
				b.stats.Superseded++
				b.dropped(ctx, it.span, OutcomeSuperseded)
				q.items = append(q.items[:i], q.items[i+1:]...)
			} else {
				b.stats.Superseded++
				b.mu.Unlock()
				b.dropped(ctx, span, OutcomeSuperseded)
				return nil
			}
			break
		}
	}
	if len(q.items) == 0 {
		q.oldest = now
	}
	q.items = append(q.items, item{d: d, msg: msg, at: now, round: trace.SpanContextFromContext(rctx), span: span})
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return infra.ErrDetached
}

// dropped ends the queue span of a draft that will not be batched and counts it.
func (b *Batcher) dropped(ctx context.Context, span trace.Span, outcome string) {
	b.m.BatcherDrafts.Add(ctx, 1, b.byOutcome[outcome])
	if span.IsRecording() {
		span.SetAttributes(telemetry.AttrOutcome.String(outcome))
	}
	span.End()
}

// active counts devices seen within ActiveWindow (caller holds mu).
func (b *Batcher) active(now time.Time) int { return b.recent.Count(now) }

// flusher closes batches as the policy says.
func (b *Batcher) flusher(ctx context.Context) {
	timer := time.NewTimer(b.cfg.Policy.MaxWait)
	defer timer.Stop()
	sweep := time.NewTicker(time.Minute)
	defer sweep.Stop()
	for {
		wait := b.flushReady(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		case <-timer.C:
		case <-sweep.C:
			b.mu.Lock()
			b.router.Sweep(time.Now())
			b.mu.Unlock()
		}
	}
}

// flushReady publishes every queue the policy closes and returns how long until
// the next look.
func (b *Batcher) flushReady(ctx context.Context) time.Duration {
	now := time.Now()
	wait := b.cfg.Policy.MaxWait
	type closed struct {
		worker, reason string
		items          []item
	}
	var out []closed
	b.mu.Lock()
	active := b.active(now)
	// Sessions routed to different workers form separate batches. "Every active
	// device is in the batch" can only be judged when one queue holds drafts;
	// with several, each waits for its size or deadline.
	busy := 0
	for w, q := range b.queues {
		if len(q.items) == 0 {
			delete(b.queues, w)
			continue
		}
		busy++
	}
	for w, q := range b.queues {
		share := active
		if busy > 1 {
			share = 0
		}
		slack, pass := b.slack(now, w, q)
		sizes, reason, next := b.cfg.Policy.Drain(Queue{Drafts: len(q.items), Active: share, Age: now.Sub(q.oldest), Slack: slack, Pass: pass})
		for _, n := range sizes {
			out = append(out, closed{worker: w, reason: reason, items: append([]item(nil), q.items[:n]...)})
			q.items = append(q.items[:0], q.items[n:]...)
			q.oldest = now
			reason = ReasonSize
		}
		if len(q.items) > 0 {
			wait = min(wait, next)
		}
	}
	b.mu.Unlock()
	for _, c := range out {
		b.publish(ctx, c.worker, c.reason, c.items)
	}
	return max(wait, 100*time.Microsecond)
}

// slack is q's Slack for the SLO-aware policy, its drafts' earliest due time
// less the estimated pass over them, and that pass, from the worker's
// pass-cost curve (any worker's for the shared queue). Called with b.mu held.
func (b *Batcher) slack(now time.Time, worker string, q *queue) (time.Duration, time.Duration) {
	if !b.cfg.Policy.SLO {
		return NoSlack, 0
	}
	dues := make([]time.Time, 0, len(q.items))
	tokens := 0
	for _, it := range q.items {
		dues = append(dues, it.d.Due)
		tokens += len(it.d.Committed) + len(it.d.Draft)
	}
	curve, ok := b.costs[worker]
	if !ok {
		for _, c := range b.costs {
			curve = c
			break
		}
	}
	ms, _ := curve.Ms(tokens)
	return Slack(now, dues, ms), time.Duration(ms * float64(time.Millisecond))
}

// publish stores one batch, then acknowledges its drafts (or, if the batch could
// not be stored, naks them for redelivery).
func (b *Batcher) publish(ctx context.Context, worker, reason string, items []item) {
	batch := &events.VerifyBatch{
		BatchID: fmt.Sprintf("%s-%d", b.prefix, b.seq.Add(1)),
		Pool:    b.cfg.Pool, Worker: worker, Policy: reason,
		CreatedAt: time.Now(),
	}
	for _, it := range items {
		batch.Drafts = append(batch.Drafts, *it.d)
	}
	ctx, span := b.startBatch(ctx, batch, items)
	defer span.End()
	ev := events.New(b.source, batch)
	b.tel.Inject(ctx, ev)
	_, err := b.pub.Publish(ctx, ev)
	if span.IsRecording() {
		span.SetAttributes(telemetry.EventAttrs(ev, batch.NATSSubject(), "send")...)
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "publish failed")
		}
	}
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			b.cfg.Logger.Warn("publish batch", "batch", batch.BatchID, "err", err)
		}
		for _, it := range items {
			_ = it.msg.NakWithDelay(100 * time.Millisecond)
		}
		return
	}
	for _, it := range items {
		_ = it.msg.Ack()
	}
	b.mu.Lock()
	b.stats.Batches++
	b.stats.ByReason[reason]++
	b.mu.Unlock()
	pol, ok := b.byPolicy[reason]
	if !ok {
		pol = metric.WithAttributes(attribute.String("pool", b.cfg.Pool), attribute.String("policy", reason))
	}
	b.m.Batches.Add(ctx, 1, pol)
	b.m.BatchSize.Record(ctx, int64(len(items)), pol)
	b.m.BatchFill.Record(ctx, float64(len(items))/float64(b.cfg.Policy.Size), b.poolAttrs)
	b.m.BatcherDrafts.Add(ctx, int64(len(items)), b.byOutcome[OutcomeBatched])
}

// startBatch ends the queue spans of a closing batch's drafts, records their
// queue wait, and starts the batch's span: the root of the batch's own trace
// (a batch serves many rounds), linked to every round it holds. The batch
// event carries its context, so the verifier's batch span is its child.
func (b *Batcher) startBatch(ctx context.Context, batch *events.VerifyBatch, items []item) (context.Context, trace.Span) {
	now := batch.CreatedAt
	var links []trace.Link
	tracing := b.tel.Tracing()
	for _, it := range items {
		b.m.QueueWait.Record(ctx, now.Sub(it.at).Seconds(), b.poolAttrs)
		if it.span.IsRecording() {
			it.span.SetAttributes(telemetry.AttrOutcome.String(OutcomeBatched), telemetry.AttrBatchID.String(batch.BatchID),
				telemetry.AttrBatchPolicy.String(batch.Policy), telemetry.AttrBatchSize.Int(len(items)))
		}
		it.span.End(trace.WithTimestamp(now))
		if tracing && it.round.IsValid() {
			links = append(links, trace.Link{SpanContext: it.round})
		}
	}
	ctx, span := b.tracer.Start(ctx, "batcher.batch", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(links...), trace.WithTimestamp(now))
	if span.IsRecording() {
		span.SetAttributes(telemetry.AttrBatchID.String(batch.BatchID), telemetry.AttrBatchPolicy.String(batch.Policy),
			telemetry.AttrBatchSize.Int(len(items)), telemetry.AttrPool.String(b.cfg.Pool), telemetry.AttrWorker.String(batch.Worker),
			telemetry.AttrMsgBatchCount.Int(len(items)))
	}
	return ctx, span
}
