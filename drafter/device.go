// Package drafter is the device agent: it drafts tokens with a small local model,
// sends them to the verification server over NATS JetStream, and turns verdicts into
// output that is exactly the target model's (see the policies in policy.go).
package drafter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/telemetry"
	"github.com/sled-project/sled/textgen"
)

// ErrRejected is returned by Generate when the server refused a round as invalid
// (for instance a draft model whose vocabulary differs from the target's). The
// wrapped message gives the server's reason.
var ErrRejected = errors.New("drafter: verification request rejected")

// ErrNoProgress is returned in strict mode when no round succeeded within
// RetryPolicy.MaxWait.
var ErrNoProgress = errors.New("drafter: no verification result in time")

// ErrNoVerifier is returned by Generate in strict mode, and by Health, when no
// verifier of the device's pool has sent a heartbeat within
// Config.VerifierTimeout: the request cannot be served, and says so at once
// rather than wait for rounds nobody will answer.
var ErrNoVerifier = errors.New("drafter: no live verifier for the pool")

// ErrNoDraftStream is returned by Generate in strict mode when no stream took
// the device's drafts for Config.NoStreamTimeout (the drafts stream was deleted
// and no batcher recreated it, or JetStream is down). It wraps infra.ErrNoStream
// and textgen.ErrUnavailable (a 503 from the API).
var ErrNoDraftStream = errors.New("drafter: no stream takes the drafts")

// DefaultVerifierTimeout is Config.VerifierTimeout's default: the batcher's
// heartbeat timeout, six verifier heartbeats.
const DefaultVerifierTimeout = 3 * time.Second

// Config configures a Device. Zero fields take the documented defaults.
type Config struct {
	// DeviceID names the device; it must be a valid NATS subject token
	// (events.ValidID). Required.
	DeviceID string
	// Pool is the verification pool (subject prefix) the device drafts for.
	// Default events.DefaultPool.
	Pool string
	// Draft is the dynamic drafting policy.
	Draft DraftPolicy
	// Retry is the timeout and fallback policy.
	Retry RetryPolicy
	// NoAsync turns off asynchronous drafting (drafting ahead while a round is
	// being verified).
	NoAsync bool
	// Threads for the draft model. Default: the model's DefaultThreads.
	Threads int
	// MaxContext bounds prompt plus output. Default: the draft model's
	// DefaultSlotContext (the target must allow at least as much).
	MaxContext int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Telemetry receives the device's spans (one trace per round) and metrics.
	// Default: none.
	Telemetry *telemetry.Telemetry
	// ModelName is the draft_model label of the device's metrics. Default: the
	// draft model file's base name without extension.
	ModelName string
	// VerifierTimeout: the device counts its pool as served while a verifier
	// heartbeat came within it (Health, and Generate's first check). Default
	// DefaultVerifierTimeout.
	VerifierTimeout time.Duration
	// NoStreamTimeout bounds how long a strict generation keeps resending
	// drafts that no stream takes (ErrNoDraftStream). Default VerifierTimeout.
	// On a JetStream cluster set it above a stream leader election (20 s):
	// a stream whose leader's node died has no leader, and takes no publish,
	// until raft elects one (its election timeout is 4 to 9 s, a split vote
	// takes another).
	NoStreamTimeout time.Duration
	// TPOT is the device's latency objective per output token for requests
	// that give none (textgen.Request.TPOT); 0: none. Each round tells the
	// verifier (events.DraftReady.TPOTMs, Due), whose draft budgets and, with
	// SLO-aware batching, the batcher try to meet it.
	TPOT time.Duration
	// TargetVocab, when its vocabulary is not the draft model's, makes the
	// device draft across vocabularies: its tokens (requests, drafts,
	// verdicts, Model) are TargetVocab's, and the draft model drafts text that
	// the device maps onto them (see crossVocab). A model loaded with
	// engine.ModelOptions.VocabOnly suffices: the target file itself, or any
	// file with the target's tokenizer. Nil, or the draft's own vocabulary:
	// the device drafts in the draft model's tokens, which must be the
	// target's. Greedy output is the target's either way; at temperature > 0
	// a cross-vocabulary device drafts greedily (coupled sampling stays exact
	// and reproducible; top-k declares point masses).
	TargetVocab *engine.Model
	// ServerRounds is the most rounds in a row the verifier may run on the
	// device's behalf while the server holds the device's draft budget at 0
	// (events.DraftReady.ServerRounds): those rounds would carry nothing but
	// the committed token, so the server decodes on by itself and the device
	// only receives, until a budget above 0 (a probe) or the limit hands the
	// rounds back. Default DefaultServerRounds; negative: none, every round
	// is the device's own.
	ServerRounds int
}

// DefaultServerRounds is Config.ServerRounds's default: the goodput policy's
// longest probe interval (goodput.DefaultProbeMax). Each chain's end costs
// the device a trip, and its round then waits for the pass in flight (at 32
// that was about one pass in 33 on the Qwen pair); a generation that stops
// early says so (events.DraftReady.End), so the allowance only bounds what a
// device that vanished mid-chain costs the server: that many one-token
// rounds at most, never past its generation's length limit.
const DefaultServerRounds = 256

// Device is one edge device: a draft model and a NATS connection. It implements
// textgen.Generator, serving one generation at a time (concurrent calls queue).
type Device struct {
	cfg    Config
	model  *engine.Model
	nc     *nats.Conn
	pub    *infra.Publisher
	dec    *events.Decoder
	sub    *nats.Subscription
	source string
	obs    *observer

	gen sync.Mutex // one generation at a time; guards ds and budget
	ds  draftSource
	// budget is the last verdict's draft budget, -1 before any or after a
	// verdict without one: a generation's first round drafts within it, as
	// the server asked of this device, rather than at full length.
	budget int

	closing context.Context // done once Close starts: generations in progress end
	close   context.CancelFunc

	wmu     sync.Mutex
	waiters map[string]chan *events.VerifyResult

	hbSub    *nats.Subscription
	lastBeat atomic.Int64           // unix nanoseconds of the pool's latest verifier heartbeat
	target   atomic.Pointer[string] // the target's model id, as the heartbeats name it
	beat     chan struct{}          // closed at the first heartbeat
	beatOnce sync.Once
}

// New starts a device on draft, publishing through js and receiving results on nc.
// Close releases it.
func New(ctx context.Context, draft *engine.Model, nc *nats.Conn, js jetstream.JetStream, cfg Config) (*Device, error) {
	if !events.ValidID(cfg.DeviceID) {
		return nil, fmt.Errorf("drafter: invalid device id %q", cfg.DeviceID)
	}
	if cfg.Pool == "" {
		cfg.Pool = events.DefaultPool
	}
	cfg.Draft = cfg.Draft.WithDefaults()
	if err := cfg.Draft.Validate(); err != nil {
		return nil, err
	}
	cfg.Retry = cfg.Retry.WithDefaults()
	if cfg.MaxContext <= 0 {
		cfg.MaxContext = draft.DefaultSlotContext()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("device", cfg.DeviceID)
	if cfg.ModelName == "" {
		cfg.ModelName = draft.ID()
	}
	if cfg.VerifierTimeout <= 0 {
		cfg.VerifierTimeout = DefaultVerifierTimeout
	}
	if cfg.NoStreamTimeout <= 0 {
		cfg.NoStreamTimeout = cfg.VerifierTimeout
	}
	if cfg.ServerRounds == 0 {
		cfg.ServerRounds = DefaultServerRounds
	}
	vocab := draft
	var ds draftSource
	if tv := cfg.TargetVocab; tv != nil && tv.Fingerprint() != draft.Fingerprint() {
		cv, err := newCrossVocab(tv, draft, cfg.Threads, cfg.MaxContext)
		if err != nil {
			return nil, fmt.Errorf("drafter: %w", err)
		}
		ds, vocab = cv, tv
		cfg.Logger.Info("drafting across vocabularies", "draft_vocab", draft.VocabSize(), "target_vocab", tv.VocabSize())
	} else {
		st, err := newDraftState(draft, cfg.Threads, cfg.MaxContext)
		if err != nil {
			return nil, fmt.Errorf("drafter: %w", err)
		}
		ds = sameVocab{st}
	}
	d := &Device{
		cfg: cfg, model: vocab, nc: nc, ds: ds,
		pub:     infra.NewPublisher(js, infra.PublisherConfig{}),
		dec:     &events.Decoder{VocabSize: vocab.VocabSize()},
		source:  events.DeviceSource(cfg.DeviceID),
		waiters: make(map[string]chan *events.VerifyResult),
		obs:     newObserver(cfg.Telemetry, cfg.DeviceID, cfg.ModelName),
		beat:    make(chan struct{}),
		budget:  -1,
	}
	d.closing, d.close = context.WithCancel(context.Background())
	var err error
	d.sub, err = nc.Subscribe(events.ResultSubject(cfg.DeviceID), d.onResult)
	if err != nil {
		ds.close()
		return nil, fmt.Errorf("drafter: subscribe: %w", err)
	}
	d.hbSub, err = nc.Subscribe(events.HeartbeatFilter(cfg.Pool), d.onHeartbeat)
	if err != nil {
		_ = d.sub.Unsubscribe()
		ds.close()
		return nil, fmt.Errorf("drafter: subscribe: %w", err)
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		d.Close()
		return nil, fmt.Errorf("drafter: subscribe: %w", err)
	}
	return d, nil
}

// Close stops receiving results and frees the draft context. A generation in
// progress ends with context.Canceled.
func (d *Device) Close() error {
	d.close()
	_ = d.sub.Unsubscribe()
	_ = d.hbSub.Unsubscribe()
	d.gen.Lock()
	defer d.gen.Unlock()
	return d.ds.close()
}

// Model implements textgen.Generator.
func (d *Device) Model() *engine.Model { return d.model }

// ID is the device id.
func (d *Device) ID() string { return d.cfg.DeviceID }

// Config returns the configuration with defaults filled in.
func (d *Device) Config() Config { return d.cfg }

// Activity returns the device's cumulative counts, e.g. for a live summary.
func (d *Device) Activity() Activity { return d.obs.activity() }

// onHeartbeat records a verifier heartbeat of the device's pool.
func (d *Device) onHeartbeat(m *nats.Msg) {
	var h events.Heartbeat
	if err := json.Unmarshal(m.Data, &h); err != nil || h.Pool != d.cfg.Pool {
		return
	}
	d.lastBeat.Store(time.Now().UnixNano())
	if h.Model != "" {
		if cur := d.target.Load(); cur == nil || *cur != h.Model {
			d.target.Store(&h.Model)
		}
	}
	d.beatOnce.Do(func() { close(d.beat) })
}

// TargetModel is the target's model id as the pool's verifiers announce it; ""
// before the first heartbeat. It implements httpapi.TargetNamer.
func (d *Device) TargetModel() string {
	if p := d.target.Load(); p != nil {
		return *p
	}
	return ""
}

// Health reports whether the device can serve verified text: nil while a
// verifier heartbeat came within Config.VerifierTimeout, else an error wrapping
// ErrNoVerifier. A device in fallback mode serves without one, so it is healthy
// as long as it is open.
func (d *Device) Health(context.Context) error {
	if d.closing.Err() != nil {
		return fmt.Errorf("drafter: device %s is closed", d.cfg.DeviceID)
	}
	if d.cfg.Retry.Fallback {
		return nil
	}
	return d.verifierAlive()
}

func (d *Device) verifierAlive() error {
	last := d.lastBeat.Load()
	if last == 0 {
		return fmt.Errorf("%w %q: no heartbeat seen yet (%w)", ErrNoVerifier, d.cfg.Pool, textgen.ErrUnavailable)
	}
	if age := time.Since(time.Unix(0, last)); age > d.cfg.VerifierTimeout {
		return fmt.Errorf("%w %q: the last heartbeat was %s ago (%w)", ErrNoVerifier, d.cfg.Pool, age.Round(time.Millisecond), textgen.ErrUnavailable)
	}
	return nil
}

// WaitVerifier returns nil at once while the pool is served; a device that has
// not heard a heartbeat yet (it just started) waits for one up to
// VerifierTimeout. In fallback mode it never waits.
func (d *Device) WaitVerifier(ctx context.Context) error {
	if d.cfg.Retry.Fallback || d.verifierAlive() == nil {
		return nil
	}
	if d.lastBeat.Load() == 0 {
		t := time.NewTimer(d.cfg.VerifierTimeout)
		defer t.Stop()
		select {
		case <-d.beat:
			return nil
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return d.verifierAlive()
}

// onResult dispatches a verify.result to the generation waiting for it. Results of
// sessions nobody waits for (a finished or abandoned generation) are dropped.
func (d *Device) onResult(m *nats.Msg) {
	ev, err := d.dec.DecodeMsg(m)
	if err != nil {
		d.cfg.Logger.Warn("bad result event", "err", err)
		return
	}
	r, ok := ev.Data.(*events.VerifyResult)
	if !ok {
		return
	}
	d.wmu.Lock()
	ch := d.waiters[r.SessionID]
	d.wmu.Unlock()
	if ch != nil {
		select {
		case ch <- r:
		default: // a full buffer holds only stale results
		}
	}
}

func newSessionID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Generate implements textgen.Generator with speculative decoding. See the package
// documentation for the protocol.
func (d *Device) Generate(ctx context.Context, req textgen.Request, emit func(textgen.Chunk) error) (textgen.Result, error) {
	if err := textgen.Validate(d.model, req, d.cfg.MaxContext); err != nil {
		return textgen.Result{}, err
	}
	if err := d.WaitVerifier(ctx); err != nil {
		return textgen.Result{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(d.closing, cancel)()
	d.gen.Lock()
	defer d.gen.Unlock()
	if d.closing.Err() != nil {
		return textgen.Result{}, fmt.Errorf("drafter: device %s is closed: %w", d.cfg.DeviceID, context.Canceled)
	}
	g := &generation{
		d: d, req: req, emit: emit, session: newSessionID(),
		st:      newRoundState(req.Prompt, req.MaxTokens, d.cfg.MaxContext, d.model.IsEOG),
		results: make(chan *events.VerifyResult, 64),
		budget:  d.budget,
		tpot:    req.TPOT,
		pick:    newPicker(req),
	}
	if g.tpot <= 0 {
		g.tpot = d.cfg.TPOT
	}
	d.wmu.Lock()
	d.waiters[g.session] = g.results
	d.wmu.Unlock()
	defer func() {
		d.wmu.Lock()
		delete(d.waiters, g.session)
		d.wmu.Unlock()
	}()
	err := g.run(ctx)
	d.budget = g.budget
	g.end()
	res := textgen.Result{Tokens: g.st.output(), FinishReason: g.finish, Stats: g.stats}
	if res.Stats.Drafted > 0 {
		res.Stats.AcceptanceRate = float64(res.Stats.Accepted) / float64(res.Stats.Drafted)
	}
	if errors.Is(err, textgen.ErrStop) {
		res.FinishReason = textgen.FinishStop
		err = nil
	}
	return res, err
}

// generation is one Generate call: the I/O, metrics and spans of its rounds
// around st, which decides what each round's outcome changes.
type generation struct {
	d       *Device
	req     textgen.Request
	emit    func(textgen.Chunk) error
	session string
	results chan *events.VerifyResult

	st *roundState
	// ahead and aheadProbs are the tokens drafted while an ok round was in
	// flight, for apply to hand to st.verdict.
	ahead      []engine.Token
	aheadProbs []float32
	round      uint64 // last round sent
	finish     string
	stats      textgen.Stats
	lastOK     time.Time
	rt         round // the open round's trace
	// budget is the last verdict's draft budget (events.VerifyResult.DraftBudget),
	// -1 when there is none (the device's own policy decides): the device
	// drafts at most that many tokens next. It starts at the device's last.
	budget int
	// pick chooses draft tokens (see picker).
	pick picker
	// tpot is the generation's latency objective per output token (0: none);
	// began is when the current round began (its drafting).
	tpot  time.Duration
	began time.Time
	// serverNext: the last verdict said the verifier runs the next round
	// itself (events.VerifyResult.ServerNext). serverUntil is the last round
	// number the verifier may run on the generation's behalf: the device's
	// own rounds are numbered above it.
	serverNext  bool
	serverUntil uint64
	// eos: the last verdict ended the text (the verifier released the
	// session itself).
	eos bool
}

// end tells the verifier that a generation which did not end in the
// verifier's end of text is over (events.DraftReady.End), so that it
// releases the session's slot and stops any rounds it runs on the
// generation's behalf, instead of running out their allowance. It does not
// wait for the stream's ack: a lost end costs the verifier those rounds and
// the slot until it is evicted, nothing else.
func (g *generation) end() {
	if g.eos || g.round == 0 {
		return
	}
	ev := SessionEnd(g.d.cfg.DeviceID, g.session, g.d.cfg.Pool, g.round, g.serverUntil, g.st.committed,
		g.d.model.Fingerprint(), g.d.cfg.Retry.Timeout, time.Now())
	if _, err := g.d.pub.PublishAsync(events.New(g.d.source, ev)); err != nil {
		g.d.cfg.Logger.Debug("publish session end", "session", g.session, "err", err)
	}
}

// maxLen is the most draft tokens the next round may carry: the drafting
// policy's, within the server's budget.
func (g *generation) maxLen() int {
	if g.budget >= 0 {
		return min(g.budget, g.d.cfg.Draft.MaxLen)
	}
	return g.d.cfg.Draft.MaxLen
}

// due is when the current round's result must arrive for the generation to
// keep its objective (RoundDue).
func (g *generation) due() time.Time {
	return RoundDue(g.began, g.tpot, len(g.st.pending), g.stats.Drafted, g.stats.Accepted)
}

func (g *generation) run(ctx context.Context) error {
	ds := g.d.ds
	if err := ds.reset(); err != nil {
		return err
	}
	g.lastOK = time.Now()
	defer func() {
		if g.rt.span != nil {
			g.endRound(OutcomeCanceled, nil) // the generation ended mid-round
		}
	}()
	for {
		if g.st.room() <= 0 {
			g.finish = textgen.FinishLength
			return nil
		}
		if g.serverNext {
			res, err := g.serverRound(ctx)
			if err != nil {
				return err
			}
			if res != nil {
				if done, err := g.apply(ctx, res); done || err != nil {
					return err
				}
				continue
			}
			// No verdict in time: the round is the device's own again.
		}
		g.beginRound(ctx)
		g.began = time.Now()
		_, sp := g.d.obs.tracer.Start(g.rt.ctx, "drafter.draft")
		err := g.draft(ctx)
		if sp.IsRecording() {
			sp.SetAttributes(telemetry.AttrDrafted.Int(len(g.st.pending)))
		}
		sp.End()
		if err != nil {
			return err
		}
		res, err := g.roundTrip(ctx)
		if errors.Is(err, errDone) {
			return nil
		}
		if err != nil {
			return err
		}
		if done, err := g.apply(ctx, res); done || err != nil {
			return err
		}
	}
}

// draft extends pending (which may hold reused tokens drafted ahead) by the
// dynamic drafting policy, within the generation's room.
func (g *generation) draft(ctx context.Context) error {
	st := g.st
	limit := st.draftLimit(g.maxLen())
	ds := g.d.ds
	if err := ds.sync(ctx, append(st.committed[:len(st.committed):len(st.committed)], st.pending...)); err != nil {
		return err
	}
	for len(st.pending) < limit && !st.endsInEOG(nil) { // nothing follows an end of sequence
		t, p, ok := g.pick.next(ds)
		if !ok || !g.d.cfg.Draft.Continue(len(st.pending), p) {
			break
		}
		if err := ds.push(ctx, t); err != nil {
			return err
		}
		st.addPending(t, p)
	}
	return nil
}

// serverRound waits for the round the verifier runs on the generation's
// behalf (serverNext): the next round number, no draft. It returns its ok
// verdict, or nil when none came within the round timeout or the verifier
// answered otherwise (a resync, an expired or overloaded round): the
// generation then sends a round of its own, numbered above every round the
// verifier may still run for it, so that a late verdict of the verifier's
// round cannot pass for one of the device's.
func (g *generation) serverRound(ctx context.Context) (*events.VerifyResult, error) {
	g.serverNext = false
	g.st.trim(0) // nothing drafted ahead rides on a round without a draft
	g.beginRound(ctx)
	g.began = time.Now()
	g.round++
	if g.rt.span.IsRecording() {
		g.rt.span.SetAttributes(telemetry.AttrRound.Int64(int64(g.round)), telemetry.AttrDrafted.Int(0),
			telemetry.AttrServerRound.Bool(true))
	}
	g.rt.sentAt = g.began // the round latency runs from the last verdict
	_, wsp := g.d.obs.tracer.Start(g.rt.ctx, "drafter.wait")
	defer wsp.End()
	timer := time.NewTimer(g.d.cfg.Retry.Timeout)
	defer timer.Stop()
	for {
		select {
		case r := <-g.results:
			if r.Round != g.round {
				continue
			}
			switch r.Status {
			case events.StatusOK:
				g.lastOK = time.Now()
				g.stats.ServerRounds++
				return r, nil
			case events.StatusInvalid:
				g.endRound(OutcomeInvalid, r)
				return nil, fmt.Errorf("%w: %s: %s", ErrRejected, r.Reason, r.Error)
			case events.StatusUnknownSession, events.StatusPrefixMismatch:
				g.endRound(OutcomeResync, r)
				g.d.obs.m.Resyncs.Add(ctx, 1, g.d.obs.dev)
				g.stats.Resyncs++
				g.st.resync(nil, nil)
			default:
				g.endRound(string(r.Status), r)
			}
		case <-timer.C:
			g.d.obs.m.Timeouts.Add(ctx, 1, g.d.obs.dev)
			g.endRound(OutcomeTimeout, nil)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return nil, nil // send numbers the device's own round (OwnRound)
	}
}

// send publishes the next round: every unverified token and the drafts.
func (g *generation) send(ctx context.Context, dists [][]engine.TokenProb) error {
	g.beginRound(ctx)
	g.round = OwnRound(g.round, g.serverUntil)
	st := g.st
	rounds := ServerAllowance(g.d.cfg.ServerRounds, st.room(), len(st.pending))
	g.serverUntil = g.round + uint64(rounds)
	ev := DraftRound{
		DeviceID: g.d.cfg.DeviceID, SessionID: g.session, Pool: g.d.cfg.Pool, Round: g.round,
		Committed: st.committed, Sent: st.sent, Draft: st.pending, Probs: st.probs, WithPrefix: st.needPrefix,
		Dists: dists, Sampling: g.pick.sampling(g.req),
		Logprobs: g.req.Logprobs, TopLogprobs: g.req.TopLogprobs,
		VocabFingerprint: g.d.model.Fingerprint(), Timeout: g.d.cfg.Retry.Timeout,
		TPOT: g.tpot, Due: g.due(), ServerRounds: rounds,
	}.Event(time.Now())
	e := events.New(g.d.source, ev)
	o := g.d.obs
	// The event carries the round span's context: the batcher's and the
	// verifier's spans for this round are its children.
	o.tel.Inject(g.rt.ctx, e)
	_, sp := o.tracer.Start(g.rt.ctx, "drafter.publish", trace.WithSpanKind(trace.SpanKindProducer))
	// Bound the wait for the stream's ack by the round's timeout: a publish caught
	// by a server restart is never acked, and the round is resent anyway.
	pctx, cancel := context.WithTimeout(ctx, g.d.cfg.Retry.Timeout)
	defer cancel()
	_, err := g.d.pub.Publish(pctx, e)
	if sp.IsRecording() {
		sp.SetAttributes(telemetry.EventAttrs(e, ev.NATSSubject(), "send")...)
		if err != nil {
			sp.RecordError(err)
			sp.SetStatus(codes.Error, "publish failed")
		}
	}
	sp.End()
	if g.rt.span.IsRecording() {
		g.rt.span.SetAttributes(telemetry.AttrRound.Int64(int64(g.round)), telemetry.AttrDrafted.Int(len(st.pending)))
	}
	g.observeSent(ctx)
	return err
}

// roundTrip sends the round and waits for its verdict, drafting ahead meanwhile.
// Timeouts, expired and overloaded results, and resync requests are handled here:
// it returns only an ok result or an error that ends the generation.
func (g *generation) roundTrip(ctx context.Context) (*events.VerifyResult, error) {
	retry := g.d.cfg.Retry
	var ahead []engine.Token
	var aheadProbs []float32
	var noStream time.Time // when the drafts stream began refusing this round's drafts
	for {
		if retry.MaxWait > 0 && time.Since(g.lastOK) > retry.MaxWait {
			return nil, fmt.Errorf("%w: %s without a verdict (%w)", ErrNoProgress, retry.MaxWait, textgen.ErrUnavailable)
		}
		// In strict mode a generation whose pool lost every verifier ends
		// within VerifierTimeout instead of resending into the void; an outage
		// shorter than that is ridden over by the retries.
		if !retry.Fallback {
			if err := g.d.verifierAlive(); err != nil {
				return nil, err
			}
		}
		dists, err := g.pick.dists(len(g.st.committed), g.st.pending)
		if err != nil {
			return nil, err
		}
		failed := false
		sent := time.Now()
		if err := g.send(ctx, dists); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			g.d.cfg.Logger.Warn("publish draft", "session", g.session, "round", g.round, "err", err)
			failed = true
			// No stream takes the drafts (SLED_DRAFTS deleted, JetStream down, or
			// a cluster electing the stream's leader): a device may not recreate
			// it, a batcher does. In strict mode a generation waits for that
			// NoStreamTimeout at most.
			if errors.Is(err, infra.ErrNoStream) && !retry.Fallback {
				if noStream.IsZero() {
					noStream = sent
				} else if d := time.Since(noStream); d >= g.d.cfg.NoStreamTimeout {
					return nil, fmt.Errorf("%w: drafts not stored for %s: %w (%w)", ErrNoDraftStream, d.Round(time.Millisecond), err, textgen.ErrUnavailable)
				}
			}
		} else {
			noStream = time.Time{}
		}
		timer := time.NewTimer(retry.Timeout)
		_, wsp := g.d.obs.tracer.Start(g.rt.ctx, "drafter.wait")
		res, err := g.wait(ctx, timer, failed, &ahead, &aheadProbs)
		timer.Stop()
		if wsp.IsRecording() {
			wsp.SetAttributes(attribute.Int("sled.drafted_ahead", len(ahead)))
		}
		wsp.End()
		if err != nil {
			return nil, err
		}
		m := g.d.obs.m
		outcome := OutcomeTimeout
		switch {
		case res != nil:
			switch res.Status {
			case events.StatusOK:
				g.lastOK = time.Now()
				g.ahead, g.aheadProbs = ahead, aheadProbs
				return res, nil // apply ends the round
			case events.StatusUnknownSession, events.StatusPrefixMismatch:
				g.endRound(OutcomeResync, res)
				m.Resyncs.Add(ctx, 1, g.d.obs.dev)
				g.stats.Resyncs++
				g.st.resync(ahead, aheadProbs)
				ahead, aheadProbs = nil, nil
				continue
			case events.StatusInvalid:
				g.endRound(OutcomeInvalid, res)
				return nil, fmt.Errorf("%w: %s: %s", ErrRejected, res.Reason, res.Error)
			}
			// expired, overloaded: a failed round, like a timeout.
			outcome = string(res.Status)
		case failed:
			outcome = OutcomePublishError
		default:
			m.Timeouts.Add(ctx, 1, g.d.obs.dev)
		}
		g.endRound(outcome, res)
		m.Retries.Add(ctx, 1, g.d.obs.dev)
		g.stats.Retries++
		st := g.st
		if retry.Release(st.failed()) {
			m.Fallbacks.Add(ctx, 1, g.d.obs.dev)
			if st.releaseNeedsToken(ahead) {
				// Nothing drafted (the room left allows only the verdict's own
				// token): the device supplies that token itself.
				if err := g.draftOne(ctx); err != nil {
					return nil, err
				}
			}
			// The drafted-ahead tokens continue the released ones.
			if done, err := g.release(ahead, aheadProbs); err != nil {
				return nil, err
			} else if done {
				return nil, errDone
			}
			st.fit()
		} else {
			st.resend(ahead, aheadProbs)
		}
		ahead, aheadProbs = nil, nil
		if st.room() <= 0 {
			g.finish = textgen.FinishLength
			return nil, errDone
		}
		if failed {
			// Publishing failed (NATS unreachable): do not spin.
			select {
			case <-time.After(retry.Timeout / 4):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
}

// errDone ends a generation that ran out of room while releasing drafts.
var errDone = errors.New("done")

// wait returns the result of the current round, nil on timeout. While waiting it
// drafts ahead (asynchronous drafting) on the assumption that every pending token
// will be accepted.
func (g *generation) wait(ctx context.Context, timer *time.Timer, failed bool, ahead *[]engine.Token, aheadProbs *[]float32) (*events.VerifyResult, error) {
	if failed {
		return nil, nil
	}
	ds := g.d.ds
	async := !g.d.cfg.NoAsync
	for {
		canAhead := async && len(*ahead) < g.maxLen()+1 && len(g.st.pending)+len(*ahead)+1 < g.st.room() &&
			!g.st.endsInEOG(*ahead)
		if canAhead {
			select {
			case r := <-g.results:
				if r.Round == g.round {
					return r, nil
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			default:
			}
			t, p, ok := g.pick.next(ds)
			if !ok || len(*ahead) > 0 && !g.d.cfg.Draft.Continue(len(*ahead)-1, p) {
				canAhead = false
			} else {
				if err := ds.push(ctx, t); err != nil {
					return nil, err
				}
				*ahead, *aheadProbs = append(*ahead, t), append(*aheadProbs, p)
				continue
			}
		}
		select {
		case r := <-g.results:
			if r.Round == g.round {
				return r, nil
			}
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// apply folds an ok verdict into the generation and emits the new tokens. It
// reports whether the generation is done.
func (g *generation) apply(ctx context.Context, res *events.VerifyResult) (bool, error) {
	drafted := len(g.st.pending)
	out, err := g.st.verdict(res.Accepted, res.Token, g.ahead, g.aheadProbs)
	g.ahead, g.aheadProbs = nil, nil
	if err != nil {
		return true, err
	}
	g.eos = res.EOS
	g.budget = -1
	if res.DraftBudget != nil {
		g.budget = *res.DraftBudget
	}
	g.serverNext = res.ServerNext && res.Round < g.serverUntil
	g.observeVerdict(ctx, drafted, res.Accepted)
	defer g.endRound(OutcomeOK, res)
	g.stats.Rounds++
	g.stats.Drafted += drafted
	g.stats.Accepted += res.Accepted
	var lps []textgen.Logprob
	if g.req.Logprobs {
		if len(res.Logprobs) != len(out) {
			return true, fmt.Errorf("%w: the verdict carries %d logprobs for %d tokens", ErrRejected, len(res.Logprobs), len(out))
		}
		lps = make([]textgen.Logprob, len(out))
		for i, lp := range res.Logprobs {
			lps[i] = textgen.Logprob{Token: out[i], Logprob: lp.Logprob}
			for _, a := range lp.Top {
				lps[i].Top = append(lps[i].Top, engine.TopLogprob{Token: a.Token, Logprob: a.Logprob})
			}
		}
	}
	return g.commit(out, lps, false, res.EOS)
}

// release commits the pending drafts unverified (fallback mode); the tokens
// drafted ahead become the next draft.
func (g *generation) release(ahead []engine.Token, aheadProbs []float32) (bool, error) {
	probs := g.st.probs // the released drafts' confidences (release replaces, not rewrites, them)
	out := g.st.release(ahead, aheadProbs)
	g.d.cfg.Logger.Warn("releasing unverified drafts", "session", g.session, "tokens", len(out))
	var lps []textgen.Logprob
	if g.req.Logprobs {
		// No target figures exist for these tokens: the draft model's own
		// confidence stands in, marked as the draft's.
		lps = make([]textgen.Logprob, len(out))
		for i, t := range out {
			p := float32(math.SmallestNonzeroFloat32) // finite: JSON has no -Inf
			if i < len(probs) {
				p = max(probs[i], p)
			}
			lps[i] = textgen.Logprob{Token: t, Logprob: float32(math.Log(float64(p))), Draft: true}
		}
	}
	return g.commit(out, lps, true, false)
}

// commit commits out (see roundState.commit), emits what was kept, and reports
// whether the generation is done.
func (g *generation) commit(out []engine.Token, lps []textgen.Logprob, unverified, eos bool) (bool, error) {
	out, finish := g.st.commit(out, unverified, eos)
	g.observeTokens(len(out), unverified)
	if unverified {
		g.stats.Unverified += len(out)
	}
	if len(out) > 0 {
		c := textgen.Chunk{Tokens: append([]engine.Token(nil), out...), Unverified: unverified}
		if lps != nil {
			c.Logprobs = lps[:len(out)] // commit keeps a prefix of out
		}
		if err := g.emit(c); err != nil {
			return true, err
		}
	}
	if finish != "" {
		g.finish = finish
		return true, nil
	}
	return false, nil
}

// draftOne drafts a single token after the committed sequence, whatever the
// policy says: fallback's stand-in for the target's next token.
func (g *generation) draftOne(ctx context.Context) error {
	ds := g.d.ds
	if err := ds.sync(ctx, g.st.committed); err != nil {
		return err
	}
	t, p, ok := g.pick.next(ds)
	if !ok {
		return fmt.Errorf("drafter: the draft model has no token to release: %w", textgen.ErrUnavailable)
	}
	if err := ds.push(ctx, t); err != nil {
		return err
	}
	g.st.addPending(t, p)
	return nil
}
