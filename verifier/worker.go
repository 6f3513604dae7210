package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/schemas"
	"github.com/sled-project/sled/telemetry"
)

// WorkerConfig configures RunWorker. Zero fields take the documented defaults.
type WorkerConfig struct {
	// Pool whose batches the worker verifies. Default events.DefaultPool.
	Pool string
	// Name identifies the worker: batches for sessions it holds arrive on
	// sled.batch.<pool>.<name>, and a restarted worker with the same name picks up
	// what its predecessor left. Required; a valid id.
	Name string
	// Heartbeat is the interval of liveness reports to batchers and devices.
	// Default 500ms.
	Heartbeat time.Duration
	// Model is the id the target is served under, announced in heartbeats so
	// that every device names it alike. Default: the target file's name without
	// its extension (engine.ModelID).
	Model string
	// AckWait: a batch not acknowledged within it (a crashed worker) is delivered
	// again. Default 30s.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one batch. Default 5.
	MaxDeliver int
	// Budget is the goodput policy that gives each ok result the device's
	// draft budget for its next round (events.VerifyResult.DraftBudget), from
	// the worker's own pass timings and each device's acceptance (package
	// goodput). Budget.Static sends no budget: devices draft by their own
	// policy alone (the paper's fixed speculation length).
	Budget goodput.Policy
	// GatherMax bounds how long a free worker holding drafts waits for the
	// rounds it has just answered to come back and join the same pass
	// (goodput.Gather, from the policy's pass-cost curve and each device's
	// time outside the server), so that a fleet does not split into waves
	// that each pay a whole pass. The queued drafts' due times bound it too.
	// Default DefaultGatherMax; negative: never wait (every queued batch runs
	// as soon as the verifier frees). Budget.Static never waits.
	GatherMax time.Duration
	// Publishers is how many goroutines encode and publish one pass's
	// results, each a share of at least PublishShare of them. A pass's
	// results are published while the next pass runs, after the previous
	// pass's (so a device never gets a round's verdict before the one
	// before it). Default min(GOMAXPROCS, 8).
	Publishers int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Telemetry receives the worker's spans and metrics. Default: none.
	Telemetry *telemetry.Telemetry
}

// DefaultGatherMax is WorkerConfig.GatherMax's default: about one loaded
// pass of a small model on a CPU; a wave that takes longer to come back
// costs more idle time than its pass saves anyway.
const DefaultGatherMax = 50 * time.Millisecond

// PublishShare is the fewest results one publisher goroutine is given: below
// it a goroutine costs more than the encoding it takes off the others.
const PublishShare = 32

// Publishing is how many of up to publishers goroutines publish a pass of
// results results: one per PublishShare of them, at least one. The
// simulator models the worker's result path with it.
func Publishing(results, publishers int) int {
	return max(1, min(publishers, results/PublishShare))
}

// TracerName is the instrumentation scope of the verifier's spans.
const TracerName = "github.com/sled-project/sled/verifier"

// Worker feeds a Verifier with the batches of one pool from JetStream and
// publishes each verdict on its device's result subject. A batch is acknowledged
// only after all of its results are stored, so a crash mid-batch means the batch
// is verified again (verification is idempotent per round: see Verifier.Verify).
// A worker manages the streams it uses: one that vanishes (SLED_BATCHES, its
// durable consumers, SLED_RESULTS on publish) is recreated (infra.StreamKeeper).
type Worker struct {
	v      *Verifier
	cfg    WorkerConfig
	nc     *nats.Conn
	js     jetstream.JetStream
	keeper *infra.StreamKeeper // recreates the SLED streams if they vanish
	pub    *infra.Publisher
	source string

	// The goodput policy's state: the pass-cost curve and each device's
	// acceptance. Used by verifyLoop only; the curve is read by heartbeats.
	cost    *goodput.CostEstimator
	tracker *goodput.Tracker

	mu      sync.Mutex
	skipped uint64 // drafts past their deadline or superseded, left unanswered
	seen    Stats  // verifier counters already exported as metrics

	// Batches wait here between delivery and verification (see Run).
	qmu   sync.Mutex
	queue []delivery
	ready chan struct{} // signalled when queue grows

	// served holds the rounds the worker runs next on devices' behalf
	// (Verifier.NextRound): sessions held at budget 0 whose devices allow it.
	// Owned by verifyLoop.
	served []servedRound

	tel      *telemetry.Telemetry
	tracer   trace.Tracer
	m        *telemetry.Metrics
	attrs    metric.MeasurementOption                   // pool, worker
	byStatus map[events.Status]metric.MeasurementOption // pool, worker, status
	byReason map[string]metric.MeasurementOption        // pool, worker, reason (goodput plans)
	drafted  metric.MeasurementOption                   // pool, worker, kind=drafted
	accepted metric.MeasurementOption                   // pool, worker, kind=accepted
	position []metric.MeasurementOption                 // pool, worker, position=i
}

// NewWorker creates a worker; Run runs it.
func NewWorker(v *Verifier, nc *nats.Conn, js jetstream.JetStream, cfg WorkerConfig) (*Worker, error) {
	if cfg.Pool == "" {
		cfg.Pool = events.DefaultPool
	}
	if !events.ValidID(cfg.Pool) || !events.ValidID(cfg.Name) {
		return nil, fmt.Errorf("verifier: invalid pool %q or worker name %q", cfg.Pool, cfg.Name)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 500 * time.Millisecond
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("worker", cfg.Name)
	if cfg.Model == "" {
		cfg.Model = v.model.ID()
	}
	cfg.Budget = cfg.Budget.WithDefaults()
	if cfg.Publishers <= 0 {
		cfg.Publishers = min(runtime.GOMAXPROCS(0), 8)
	}
	if cfg.GatherMax == 0 {
		cfg.GatherMax = DefaultGatherMax
	}
	tel := cfg.Telemetry.Or()
	pool, name := attribute.String("pool", cfg.Pool), attribute.String("worker", cfg.Name)
	cost := goodput.NewEstimator(goodput.EstimatorConfig{})
	// The streams the worker uses: batches in, results out, dead letters of
	// rejected batches.
	keeper := infra.NewStreamKeeper(js, infra.KeeperConfig{
		Streams: infra.Topology{}.Select(infra.StreamBatches, infra.StreamResults, infra.StreamDLQ),
		Logger:  cfg.Logger, Telemetry: cfg.Telemetry,
	})
	w := &Worker{
		v: v, cfg: cfg, nc: nc, js: js, keeper: keeper, pub: infra.NewPublisher(js, infra.PublisherConfig{Keeper: keeper}),
		source: "/sled/verifier/" + cfg.Pool + "/" + cfg.Name,
		ready:  make(chan struct{}, 1),
		cost:   cost, tracker: goodput.NewTracker(cost, goodput.TrackerConfig{Policy: cfg.Budget}),
		tel: tel, tracer: tel.Tracer(TracerName), m: tel.Metrics,
		attrs:    metric.WithAttributeSet(attribute.NewSet(pool, name)),
		byStatus: map[events.Status]metric.MeasurementOption{},
		drafted:  metric.WithAttributeSet(attribute.NewSet(pool, name, attribute.String("kind", "drafted"))),
		accepted: metric.WithAttributeSet(attribute.NewSet(pool, name, attribute.String("kind", "accepted"))),
	}
	for _, st := range []events.Status{events.StatusOK, events.StatusUnknownSession, events.StatusPrefixMismatch,
		events.StatusInvalid, events.StatusOverloaded, events.StatusExpired} {
		w.byStatus[st] = metric.WithAttributeSet(attribute.NewSet(pool, name, attribute.String("status", string(st))))
	}
	w.byReason = map[string]metric.MeasurementOption{}
	for _, r := range []string{goodput.ReasonGoodput, goodput.ReasonSLO, goodput.ReasonNoEstimate, goodput.ReasonStatic} {
		w.byReason[r] = metric.WithAttributeSet(attribute.NewSet(pool, name, attribute.String("reason", r)))
	}
	for i := range schemas.MaxDraftTokens {
		w.position = append(w.position, metric.WithAttributeSet(attribute.NewSet(pool, name, attribute.Int("position", i))))
	}
	ctx := context.Background()
	w.m.Slots.Record(ctx, int64(v.Config().Slots), w.attrs)
	for _, c := range []metric.Int64Counter{w.m.VerifierResyncs, w.m.VerifierSessions, w.m.PrefixReused, w.m.SlotEvictions,
		w.m.VerifierSkipped, w.m.ServerRounds, w.m.SessionsEnded, w.m.SpecDrafts, w.m.SpecDraftTokens, w.m.SpecAcceptedTokens} {
		c.Add(ctx, 0, w.attrs) // the series exist before the first event
	}
	return w, nil
}

// Verifier is the worker's verifier.
func (w *Worker) Verifier() *Verifier { return w.v }

// Run verifies batches until ctx ends. It consumes two durable consumers: the
// worker's own subject (sticky sessions) and the pool's shared subject (batches
// routed while no worker was known alive).
//
// Verification is work-conserving: batches delivered while the verifier is busy
// queue up, and the next forward pass takes every queued batch at once (up to the
// verifier's slots), so a busy verifier runs fewer, fuller passes instead of a
// backlog of small ones. A batch is acknowledged after its results are stored.
func (w *Worker) Run(ctx context.Context) error {
	dec := &events.Decoder{VocabSize: w.v.model.VocabSize()}
	// Recreated streams get the configuration they were provisioned with.
	if err := w.keeper.Learn(ctx); err != nil {
		w.cfg.Logger.Debug("learn stream configurations", "err", err)
	}
	if stop, err := w.keeper.Watch(ctx, w.nc); err != nil {
		w.cfg.Logger.Warn("stream deletions will be noticed late", "err", err)
	} else {
		defer stop()
	}
	mk := func(durable, subject string) (*infra.Consumer, error) {
		return infra.NewConsumer(ctx, w.js, infra.ConsumerConfig{
			Stream: infra.StreamBatches, Durable: durable, FilterSubjects: []string{subject},
			AckWait: w.cfg.AckWait, MaxDeliver: w.cfg.MaxDeliver, PullBatch: 64,
			Decoder: dec, Source: w.source, Logger: w.cfg.Logger, Telemetry: w.cfg.Telemetry, Keeper: w.keeper,
		})
	}
	own, err := mk("verifier-"+w.cfg.Pool+"-"+w.cfg.Name, events.BatchSubject(w.cfg.Pool, w.cfg.Name))
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	shared, err := mk("verifier-"+w.cfg.Pool, events.BatchSubject(w.cfg.Pool, ""))
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	w.heartbeat() // announce at once, so batchers route to this worker
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for _, c := range []*infra.Consumer{own, shared} {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- c.Run(ctx, w.enqueue) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); w.verifyLoop(ctx) }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(w.cfg.Heartbeat)
		defer t.Stop()
		w.heartbeat() // at once: devices waiting for a verifier need not wait a tick
		for {
			select {
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			case <-t.C:
				w.heartbeat()
			}
		}
	}()
	wg.Wait()
	return <-errs
}

func (w *Worker) heartbeat() {
	cfg := w.v.Config()
	data, _ := json.Marshal(events.Heartbeat{Worker: w.cfg.Name, Pool: w.cfg.Pool, Sessions: w.v.Sessions(), Slots: cfg.Slots, Time: time.Now(), Model: w.cfg.Model, PassCost: w.cost.Curve()})
	if err := w.nc.Publish(events.HeartbeatSubject(w.cfg.Pool, w.cfg.Name), data); err != nil {
		w.cfg.Logger.Debug("heartbeat", "err", err)
	}
}

// resultTimeout bounds the wait for the stream to store a group's results.
const resultTimeout = 5 * time.Second

// servedRound is a round the worker runs on its device's behalf, built at
// at. Its deadline gives the device what the device's own last round gave.
type servedRound struct {
	d  events.DraftReady
	at time.Time
}

// delivery is one batch message waiting for verification.
type delivery struct {
	ev  *events.Event
	msg jetstream.Msg
	b   *events.VerifyBatch
}

// enqueue is the consumers' handler: it queues the batch for verifyLoop, which
// owns its acknowledgement.
func (w *Worker) enqueue(ctx context.Context, ev *events.Event, msg jetstream.Msg) error {
	b, ok := ev.Data.(*events.VerifyBatch)
	if !ok {
		return infra.Permanent(fmt.Errorf("%w: %s on a batch subject", events.ErrInvalid, ev.Type()))
	}
	for i := range b.Drafts {
		w.tracker.Arrived(b.Drafts[i].DeviceID)
	}
	w.qmu.Lock()
	w.queue = append(w.queue, delivery{ev: ev, msg: msg, b: b})
	w.qmu.Unlock()
	select {
	case w.ready <- struct{}{}:
	default:
	}
	return infra.ErrDetached
}

// TakeQueued is how many of n queued batches the next verification takes, the
// i-th holding drafts(i) drafts: batches in order while their drafts fit in
// slots, and always at least one (a batch larger than slots is verified in
// several passes by Verify). Both Worker and the simulator (bench/sim) take
// batches with it.
func TakeQueued(n int, drafts func(i int) int, slots int) int {
	k, sum := 0, 0
	for k < n && (k == 0 || sum+drafts(k) <= slots) {
		sum += drafts(k)
		k++
	}
	return k
}

// verifyLoop verifies queued batches, as many at a time as the verifier's slots
// hold, until ctx ends. Batches still queued then are left unacknowledged and are
// redelivered after AckWait.
//
// A pass's results are published without waiting for the stream to store
// them: the loop goes on to the next pass (the rounds it runs itself among
// them) and settles the previous one after that pass's Verify, or before it
// waits for work, so the store's round trip overlaps the next forward pass
// instead of following every pass. A batch is acknowledged only once every
// result of its pass is stored.
func (w *Worker) verifyLoop(ctx context.Context) {
	limit := w.v.Config().Slots
	freed := time.Now() // when the verifier last went idle
	var last *inflight  // the previous pass, its results not yet known to be stored
	defer func() {
		if last != nil {
			// Shutting down: a pass whose results are stored is acknowledged
			// (no redelivery of work done); give the store a moment.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			w.settle(sctx, last)
			cancel()
		}
	}()
	settle := func() {
		if last != nil {
			w.settle(ctx, last)
			last = nil
		}
	}
	for {
		if len(w.served) == 0 {
			settle()
		}
		if len(w.served) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-w.ready:
			}
		}
		for {
			w.qmu.Lock()
			n := TakeQueued(len(w.queue), func(i int) int { return len(w.queue[i].b.Drafts) }, max(limit-len(w.served), 1))
			group := append([]delivery(nil), w.queue[:n]...)
			w.qmu.Unlock()
			if len(group) == 0 && len(w.served) == 0 {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if wait := w.gather(group, freed); wait > 0 {
				// Wait for the expected rounds; a new batch (one of them)
				// makes the queue worth deciding on again.
				settle()
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-w.ready:
				case <-t.C:
				}
				t.Stop()
				continue
			}
			w.qmu.Lock()
			w.queue = append(w.queue[:0], w.queue[n:]...)
			w.qmu.Unlock()
			served := w.served
			w.served = nil
			pass, err := w.process(ctx, group, served, last)
			settle()
			if err != nil {
				w.nak(ctx, group, err)
			} else {
				last = pass
			}
			freed = time.Now()
		}
	}
}

// inflight is a pass whose results are being published or are published
// but not yet known to be stored.
type inflight struct {
	group  []delivery
	traces []*batchTrace
	// done is closed once every result is handed to the stream (futures) or
	// publishing failed (err).
	done    chan struct{}
	futures []jetstream.PubAckFuture
	err     error
}

// settle waits, for at most resultTimeout, until the stream has stored every
// result of pass p, then acknowledges its batches and ends their traces.
// Results not stored leave the batches to be redelivered (nak), and drop the
// rounds the worker was to run next: they follow verdicts that their devices
// may never have received (as after any failed pass, the devices retry or
// resync).
func (w *Worker) settle(ctx context.Context, p *inflight) {
	<-p.done // publishing ends on its own: every PublishAsync is bounded
	err := p.err
	// An async publish caught by a server restart may never be acked; give up after
	// resultTimeout so the batches are redelivered instead of stalling the worker.
	// Results no stream took (SLED_RESULTS vanished) are published again once the
	// keeper has recreated it.
	if err == nil {
		if err = w.pub.Await(ctx, resultTimeout, p.futures...); err != nil && ctx.Err() == nil {
			err = fmt.Errorf("verifier: results not stored: %w", err)
		}
	}
	for _, tr := range p.traces {
		tr.end(err)
	}
	if err != nil {
		w.served = nil
		w.nak(ctx, p.group, err)
		return
	}
	for _, d := range p.group {
		_ = d.msg.Ack()
	}
}

// nak hands the batches of a failed pass back for redelivery; while ctx is
// ending they are left for AckWait instead.
func (w *Worker) nak(ctx context.Context, group []delivery, err error) {
	if ctx.Err() != nil {
		return // shutting down: redelivered after AckWait
	}
	for _, d := range group {
		w.cfg.Logger.Warn("verify batch", "batch", d.b.BatchID, "err", err)
		_ = d.msg.NakWithDelay(250 * time.Millisecond)
	}
}

// gather is how long the free verifier, idle since freed, waits before it
// verifies group and the rounds it runs itself (Tracker.Gather; 0: now): for
// the rounds the worker has answered and expects back, no longer than
// GatherMax since freed nor past the slack of a queued draft with a due
// time. Its own rounds are queued drafts like the others: a device's round
// that would otherwise need a pass of its own is worth their wait.
func (w *Worker) gather(group []delivery, freed time.Time) time.Duration {
	if w.cfg.Budget.Static || w.cfg.GatherMax < 0 {
		return 0
	}
	tokens := 0
	var due time.Time
	add := func(d *events.DraftReady) {
		tokens += len(d.Draft) + max(len(d.Committed), len(d.Prefix))
		if !d.Due.IsZero() && (due.IsZero() || d.Due.Before(due)) {
			due = d.Due
		}
	}
	for _, g := range group {
		for i := range g.b.Drafts {
			add(&g.b.Drafts[i])
		}
	}
	for i := range w.served {
		add(&w.served[i].d)
	}
	return w.tracker.Gather(time.Now(), freed, tokens, due, w.cfg.GatherMax)
}

// process verifies the drafts of a group of batches and the rounds the
// worker runs on devices' behalf (served) in one Verify call and publishes
// every result. Drafts past their deadline, and older rounds of a session
// that also has a newer one in the group, get no result: their device has
// already moved on to the newer round (a device that sends a round of its own
// numbers it above every round the worker may run for it, so its own round
// supersedes them). It hands the results to publishAll, which publishes them
// beside the next pass once prev's (the pass before, unsettled; nil if
// settled) are out, sets w.served to the rounds to run next, and returns
// the pass for settle; on an error the pass's traces are ended and nothing is
// left to settle.
func (w *Worker) process(ctx context.Context, group []delivery, served []servedRound, prev *inflight) (*inflight, error) {
	now := time.Now()
	latest := map[string]uint64{}
	note := func(d *events.DraftReady) {
		if k := sessionKey(d); d.Round > latest[k] {
			latest[k] = d.Round
		}
	}
	for _, g := range group {
		for i := range g.b.Drafts {
			note(&g.b.Drafts[i])
		}
	}
	for i := range served {
		note(&served[i].d)
	}
	type span struct{ from, to int } // a batch's drafts within all
	var all []events.DraftReady
	var arrived []time.Time // when each draft's batch closed, or its served round was built
	keep := func(d *events.DraftReady) bool {
		if d.End && d.Round >= latest[sessionKey(d)] {
			// The device ended the session: release it, run no more of its
			// rounds (they are older), answer nothing.
			w.v.Forget(d.DeviceID, d.SessionID)
			w.m.SessionsEnded.Add(ctx, 1, w.attrs)
			return false
		}
		stale := !d.Deadline.IsZero() && now.After(d.Deadline)
		if d.End || stale || d.Round < latest[sessionKey(d)] {
			w.mu.Lock()
			w.skipped++
			w.mu.Unlock()
			w.m.VerifierSkipped.Add(ctx, 1, w.attrs)
			return false
		}
		latest[sessionKey(d)] = d.Round + 1 // one draft per session and round
		return true
	}
	for i := range served {
		if keep(&served[i].d) {
			all = append(all, served[i].d)
			arrived = append(arrived, served[i].at)
		}
	}
	nServed := len(all)
	spans := make([]span, len(group))
	traces := make([]*batchTrace, len(group))
	for gi, g := range group {
		from := len(all)
		for _, d := range g.b.Drafts {
			if keep(&d) {
				all = append(all, d)
				arrived = append(arrived, g.b.CreatedAt)
			}
		}
		spans[gi] = span{from, len(all)}
		traces[gi] = w.startTrace(ctx, g.ev, g.msg, g.b, all[from:len(all):len(all)])
	}
	endAll := func(err error) error {
		for _, tr := range traces {
			tr.end(err)
		}
		return err
	}
	before := w.v.Stats()
	results, err := w.v.Verify(ctx, all)
	verified := time.Now()
	if err != nil {
		return nil, endAll(err)
	}
	w.m.VerifyTime.Record(ctx, verified.Sub(now).Seconds(), w.attrs)
	after := w.v.Stats()
	w.cost.ObservePass(int(after.PassTokens-before.PassTokens), int(after.PrefillTokens-before.PrefillTokens), verified.Sub(now))
	plan := w.planBudgets(ctx, all, results, arrived, nServed, verified)
	for _, tr := range traces {
		tr.plan = plan
	}
	next := w.serveNext(all, results, arrived, verified)
	out := make([]*events.Event, 0, len(results))
	for i := range nServed {
		r := &results[i]
		r.ServerTiming.TotalMs = float64(time.Since(arrived[i]).Microseconds()) / 1000
		w.observeResult(ctx, &all[i], r)
		out = append(out, events.New(w.source, r))
	}
	for gi, g := range group {
		batchMs := float64(now.Sub(g.b.CreatedAt).Microseconds()) / 1000
		for i := spans[gi].from; i < spans[gi].to; i++ {
			r := &results[i]
			r.BatchID = g.b.BatchID
			r.ServerTiming.BatchMs = batchMs
			r.ServerTiming.TotalMs = float64(time.Since(g.b.CreatedAt).Microseconds())/1000 + r.ServerTiming.QueueMs
			w.observeResult(ctx, &all[i], r)
			rev := events.New(w.source, r)
			traces[gi].verdict(i-spans[gi].from, now, verified, r, rev)
			out = append(out, rev)
		}
	}
	pass := &inflight{group: group, traces: traces, done: make(chan struct{})}
	go func() {
		defer close(pass.done)
		if prev != nil {
			<-prev.done // the previous pass's verdicts go out first
		}
		pass.futures, pass.err = w.publishAll(out)
	}()
	w.served = next
	if n := len(next); n > 0 {
		w.m.ServerRounds.Add(ctx, int64(n), w.attrs)
	}
	w.cost.ObserveOverhead(time.Since(verified))
	w.observeBatch(ctx)
	return pass, nil
}

// publishAll encodes and publishes evs, split among up to cfg.Publishers
// goroutines, and returns the futures of the stream's acks, or the first
// failure. An event that does not encode is logged and left out: sending it
// again cannot help, and its device's round times out and is retried.
func (w *Worker) publishAll(evs []*events.Event) ([]jetstream.PubAckFuture, error) {
	futures := make([]jetstream.PubAckFuture, len(evs))
	errs := make([]error, len(evs))
	one := func(i int) {
		f, err := w.pub.PublishAsync(evs[i])
		switch {
		case errors.Is(err, infra.ErrEncode):
			w.cfg.Logger.Error("encode result", "err", err)
		case err != nil:
			errs[i] = fmt.Errorf("verifier: publish result: %w", err)
		default:
			futures[i] = f
		}
	}
	n := Publishing(len(evs), w.cfg.Publishers)
	var wg sync.WaitGroup
	for k := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := k * len(evs) / n; i < (k+1)*len(evs)/n; i++ {
				one(i)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // the first: the others are most likely the same
		}
	}
	return slices.DeleteFunc(futures, func(f jetstream.PubAckFuture) bool { return f == nil }), nil
}

// serveNext marks the ok results whose sessions the worker goes on with
// itself (ServerNext) and returns those next rounds: the plan gave the
// device budget 0, its round allowed the server rounds, and the verifier
// still holds the session as the result left it (Verifier.NextRound). With a
// static policy no budget is 0 and nothing is served.
func (w *Worker) serveNext(all []events.DraftReady, results []events.VerifyResult, arrived []time.Time, now time.Time) []servedRound {
	var next []servedRound
	for i := range results {
		r := &results[i]
		if r.DraftBudget == nil || *r.DraftBudget != 0 {
			continue
		}
		timeout := all[i].Deadline.Sub(arrived[i])
		n, ok := w.v.NextRound(&all[i], r, now, now.Add(timeout))
		if !ok {
			continue
		}
		r.ServerNext = true
		next = append(next, servedRound{d: n, at: now})
	}
	return next
}

// planBudgets gives every ok result of a verification its device's draft
// budget for the next round (unless the policy is static) and records the
// plan's metrics. The first nServed drafts are rounds the worker ran on their
// devices' behalf.
//
// A device's time outside the server is counted up to its batch's closing:
// the wait in this worker's queue, behind other passes, is the server's.
func (w *Worker) planBudgets(ctx context.Context, drafts []events.DraftReady, results []events.VerifyResult, closed []time.Time, nServed int, answered time.Time) *goodput.Plan {
	if w.cfg.Budget.Static {
		return nil
	}
	var rounds []goodput.Round
	var idx []int
	for i := range results {
		if results[i].Status != events.StatusOK || results[i].EOS {
			continue // no next round follows
		}
		d := &drafts[i]
		rounds = append(rounds, goodput.Round{
			Device: d.DeviceID, Drafted: len(d.Draft), Accepted: results[i].Accepted,
			// A round the worker ran comes from a device that allows them,
			// even the last of a chain (which allows no more itself).
			TPOTMs: d.TPOTMs, Arrived: closed[i], ByServer: i < nServed, ServerRounds: d.ServerRounds > 0 || i < nServed,
		})
		idx = append(idx, i)
	}
	if len(rounds) == 0 {
		return nil
	}
	plan := w.tracker.Plan(rounds, answered)
	for k, i := range idx {
		b := plan.Budgets[k]
		results[i].DraftBudget = &b
		w.m.DraftBudget.Record(ctx, int64(b), w.attrs)
	}
	w.m.BudgetPlans.Add(ctx, 1, w.planAttrs(plan.Reason))
	if plan.Missed > 0 {
		w.m.BudgetMissed.Add(ctx, int64(plan.Missed), w.attrs)
	}
	w.m.PlannedPassMs.Record(ctx, plan.PassMs, w.attrs)
	w.m.PlannedGoodput.Record(ctx, plan.Goodput, w.attrs)
	return &plan
}

func (w *Worker) planAttrs(reason string) metric.MeasurementOption {
	if a, ok := w.byReason[reason]; ok {
		return a
	}
	return w.attrs
}
