package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/bench/sim"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/verifier"
)

// Trial configures one measured run of a fleet. Zero fields take the documented
// defaults.
type Trial struct {
	// Devices is the number of simulated devices (> 0).
	Devices int
	// Profile sets each device's drafting rate (SLED). Required for SLED.
	Profile Profile
	// Policy is the devices' drafting policy, as given to drafter (its zero fields
	// take drafter's defaults when the rounds are drawn).
	Policy drafter.DraftPolicy
	// Batch is the batcher's policy (defaults as batcher's).
	Batch batcher.Policy
	// Budget is the verifier's goodput policy; Budget.Static runs the paper's
	// fixed speculation length (every round as drawn).
	Budget goodput.Policy
	// GatherMax bounds the worker's wait for the rounds it expects back
	// (verifier.WorkerConfig.GatherMax: 0 its default, negative never).
	GatherMax time.Duration
	// UnifiedKV gives the verifier one KV cache for all slots instead of a
	// stream per slot (verifier.Config.UnifiedKV).
	UnifiedKV bool
	// PassTokens is the verifier's micro-batch price with a stream per slot
	// (verifier.Config.PassTokens; 0 its default).
	PassTokens float64
	// TPOTMs is every device's latency objective, ms per output token (0:
	// none).
	TPOTMs float64
	// Warmup is excluded from the measurement. Default 1s. The window opens
	// after it once every device has had its first token (the fleet's prompts,
	// which all arrive at the start, are prefilled), or at the latest Timeout
	// after it: a trial measures the steady state, not the cold start.
	Warmup time.Duration
	// Duration is the measuring window. Default 4s.
	Duration time.Duration
	// Timeout is a device's wait for one result before it gives up the session.
	// Default 10s.
	Timeout time.Duration
	// Seed makes the devices' draws reproducible.
	Seed uint64
	// Workers is the number of verifier workers (SLED; default 1). The
	// server's threads are shared out among them, so W workers on this
	// machine use the cores one worker would.
	Workers int
	// ServerRounds is each device's drafter.Config.ServerRounds: the most
	// rounds in a row the verifier runs on its behalf at budget 0 (0: its
	// default, negative: none).
	ServerRounds int
}

func (t Trial) withDefaults() Trial {
	if t.Warmup <= 0 {
		t.Warmup = time.Second
	}
	if t.Duration <= 0 {
		t.Duration = 4 * time.Second
	}
	if t.Timeout <= 0 {
		t.Timeout = 10 * time.Second
	}
	if t.Workers <= 0 {
		t.Workers = 1
	}
	t.Batch = t.Batch.WithDefaults()
	return t
}

// devConns is how many NATS connections the simulated devices share.
const devConns = 4

// RunSLED runs t.Devices simulated devices against the real batcher and verifier
// over a fresh embedded NATS server and measures them. Each device is a Poisson
// source of draft tokens at t.Profile.TokensPerSec: it draws a round (draft length
// and accepted tokens) from the environment's measured acceptance under t.Policy,
// waits for that many draft tokens, publishes the round as events.DraftReady with
// infra.Publisher, waits for its verify.result, checks the verdict against the
// plan, commits the accepted tokens and the target's token, and drafts the next
// round (no drafting ahead).
func (e *Env) RunSLED(ctx context.Context, t Trial) (*Measurement, error) {
	t = t.withDefaults()
	if t.Devices <= 0 || t.Profile.TokensPerSec <= 0 {
		return nil, errors.New("bench: a SLED trial needs devices and a profile rate")
	}
	log := e.Cfg.Logger
	srv, err := services.StartServer(ctx, services.ServerConfig{
		Target: e.Target, WorkerName: "bench-1", Workers: t.Workers, Batch: t.Batch, Budget: t.Budget, GatherMax: t.GatherMax, Logger: log,
		Verifier: verifier.Config{Slots: t.Devices + 4, SlotContext: e.SlotContext(), Threads: max(1, e.Cfg.Threads/t.Workers), UnifiedKV: t.UnifiedKV, PassTokens: t.PassTokens},
	})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer srv.Close()
	url := srv.URL()
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	fleet := &fleet{env: e, t: t}
	for i := range devConns {
		nc, djs, err := infra.Connect(ctx, url, fmt.Sprintf("bench-devices-%d", i))
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		defer nc.Close()
		fleet.conns = append(fleet.conns, nc)
		fleet.pubs = append(fleet.pubs, infra.NewPublisher(djs, infra.PublisherConfig{}))
	}
	// Wait for the worker's first heartbeat to reach the batcher, so the first
	// batches are routed to it rather than to the shared subject.
	for deadline := time.Now().Add(5 * time.Second); len(srv.Batcher().Workers()) < t.Workers && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	fleet.win = sim.NewWindow(t.Devices, start, t.Warmup, t.Timeout, t.Duration)
	devs := make([]*simDevice, t.Devices)
	for i := range devs {
		d, err := fleet.newDevice(i)
		if err != nil {
			return nil, err
		}
		defer d.sub.Unsubscribe()
		devs[i] = d
	}
	var dwg sync.WaitGroup
	for _, d := range devs {
		dwg.Add(1)
		go func() { defer dwg.Done(); d.run(runCtx) }()
	}
	dwg.Wait()
	m := &Measurement{System: "sled"}
	fillWindow(fleet.win, m)
	var rounds []float64
	var drafted, accepted, batch int
	var queue, bms, verify, server, draft float64
	for _, d := range devs {
		rounds = append(rounds, d.roundMs...)
		m.Mismatches += d.mismatches
		m.Failures += d.failures
		drafted += d.drafted
		accepted += d.accepted
		batch += d.batch
		queue += d.queueMs
		bms += d.batchMs
		verify += d.verifyMs
		server += d.serverMs
		draft += d.draftMs
	}
	m.Rounds = len(rounds)
	if n := float64(len(rounds)); n > 0 {
		m.MeanDraftLen, m.MeanAccepted, m.MeanBatch = float64(drafted)/n, float64(accepted)/n, float64(batch)/n
		m.QueueMs, m.BatchMs, m.VerifyMs, m.ServerMs, m.DraftMs = queue/n, bms/n, verify/n, server/n, draft/n
	}
	m.RoundMs = quantiles(rounds)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

type fleet struct {
	env   *Env
	t     Trial
	conns []*nats.Conn
	pubs  []*infra.Publisher
	win   *sim.Window
}

type simDevice struct {
	f       *fleet
	i       int
	id      string
	pub     *infra.Publisher
	sub     *nats.Subscription
	results chan *events.VerifyResult
	pois    *Poisson
	rounds  *Sampler

	// counters of rounds that ended within the window
	roundMs                                       []float64
	drafted, accepted, batch                      int
	queueMs, batchMs, verifyMs, serverMs, draftMs float64
	mismatches, failures                          int
	allDrafted, allAccepted                       int // every round's, for the due times
	budget                                        int // the last result's draft budget, -1 none
}

func (f *fleet) newDevice(i int) (*simDevice, error) {
	seed := f.t.Seed*1_000_003 + uint64(i)
	d := &simDevice{
		f: f, i: i, id: fmt.Sprintf("bench-dev-%d", i), pub: f.pubs[i%len(f.pubs)],
		results: make(chan *events.VerifyResult, 8),
		budget:  -1,
		pois:    NewPoisson(f.t.Profile.TokensPerSec, seed),
		rounds:  NewSampler(f.env.Acceptance, f.t.Policy, seed),
	}
	dec := &events.Decoder{VocabSize: f.env.Target.VocabSize()}
	var err error
	d.sub, err = f.conns[i%len(f.conns)].Subscribe(events.ResultSubject(d.id), func(m *nats.Msg) {
		ev, err := dec.DecodeMsg(m)
		if err != nil {
			return
		}
		if r, ok := ev.Data.(*events.VerifyResult); ok {
			select {
			case d.results <- r:
			default:
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("bench: subscribe: %w", err)
	}
	return d, d.f.conns[i%len(f.conns)].Flush()
}

// run generates sessions until the window ends or ctx does.
func (d *simDevice) run(ctx context.Context) {
	e := d.f.env
	for k := 0; ; k++ {
		p := sessionPrompt(d.i, k, len(e.Prompts))
		if !d.session(ctx, fmt.Sprintf("%s-s%d", d.id, k), e.Prompts[p], e.Conts[p]) {
			return
		}
	}
}

// session runs one generation along cont; it reports whether to go on.
func (d *simDevice) session(ctx context.Context, id string, prompt, cont []engine.Token) bool {
	e := d.f.env
	fp := e.Target.Fingerprint()
	vocab := int32(e.Target.VocabSize())
	committed := append([]engine.Token(nil), prompt...)
	sent := 0                     // committed[sent:] is not yet in the verifier's cache
	var round, serverUntil uint64 // as drafter's generation numbers them
	serverNext := false           // the verifier runs the next round itself
	budget := d.budget            // the last result's draft budget; -1: none (as drafter.Device, kept across sessions)
	defer func() {
		d.budget = budget
		if round > 0 {
			// As drafter.Device: the session's end releases it at the
			// verifier, and stops the rounds it runs on the device's behalf
			// (a session left on a mismatch would have them run out).
			end := drafter.SessionEnd(d.id, id, events.DefaultPool, round, serverUntil, committed, fp, d.f.t.Timeout, time.Now())
			_, _ = d.pub.PublishAsync(events.New(events.DeviceSource(d.id), end))
		}
	}()
	for pos := 0; pos < len(cont)-1; {
		var n, m int
		var draft []int32 // the round's draft: none in a round the verifier runs
		var gap time.Duration
		t0 := time.Now()
		if serverNext {
			// The round the verifier runs on the device's behalf: nothing to
			// draft or send, its verdict is awaited like any other.
			round++
		} else {
			r := d.rounds.Sample()
			least := 1 // without a budget a round drafts at least one token, as the device's policy does
			if budget >= 0 {
				r.Len, least = min(r.Len, budget), 0
			}
			n = max(least, min(r.Len, len(cont)-1-pos))
			m = min(r.Accepted, n)
			began := time.Now()
			draft = make([]int32, n)
			probs := make([]float32, n)
			for j := range draft {
				draft[j], probs[j] = cont[pos+j], 0.9
			}
			if m < n {
				draft[m] = (cont[pos+m] + 1) % vocab // the first wrong token
			}
			gap = d.pois.Gaps(n)
			select {
			case <-ctx.Done():
				return false
			case <-time.After(gap):
			}
			round = drafter.OwnRound(round, serverUntil)
			rounds := drafter.ServerAllowance(d.f.t.ServerRounds, len(cont)-1-pos, n)
			serverUntil = round + uint64(rounds)
			ev := drafter.DraftRound{
				DeviceID: d.id, SessionID: id, Pool: events.DefaultPool, Round: round,
				Committed: committed, Sent: sent, Draft: draft, Probs: probs, WithPrefix: round == 1,
				VocabFingerprint: fp, Timeout: d.f.t.Timeout,
				TPOT: time.Duration(d.f.t.TPOTMs * float64(time.Millisecond)), ServerRounds: rounds,
			}
			ev.Due = drafter.RoundDue(began, ev.TPOT, n, d.allDrafted, d.allAccepted)
			dr := ev.Event(time.Now())
			t0 = time.Now()
			if _, err := d.pub.Publish(ctx, events.New(events.DeviceSource(d.id), dr)); err != nil {
				return ctx.Err() == nil && d.fail(t0)
			}
		}
		serverNext = false
		var res *events.VerifyResult
	wait:
		for {
			select {
			case <-ctx.Done():
				return false
			case <-time.After(time.Until(t0.Add(d.f.t.Timeout))):
				return d.fail(t0)
			case res = <-d.results:
				if res.SessionID == id && res.Round == round {
					break wait
				}
			}
		}
		now := time.Now()
		if res.Status != events.StatusOK {
			return d.fail(t0)
		}
		// The verdict's budget holds for the device's next round, in this
		// session or the next (as drafter.Device keeps it): taken before the
		// divergence check, or a device whose sessions all end on their first
		// round would never learn one and draft at full length for good.
		budget = -1
		if res.DraftBudget != nil {
			budget = *res.DraftBudget
		}
		// The round's tokens: the accepted drafts and the verifier's own. One
		// that departs from the reference (a near-tie the batched pass decided
		// otherwise, or a planned wrong draft accepted) ends the session, the
		// tokens before it counted: the rule a centralized client follows.
		if ok, diverged := follows(append(draft[:min(res.Accepted, n):min(res.Accepted, n)], res.Token), cont, pos); diverged || ok != m+1 {
			if d.f.win.In(now) {
				d.mismatches++
			}
			return d.f.win.Add(d.i, min(ok, m), now)
		}
		serverNext = res.ServerNext && round < serverUntil
		d.allDrafted += n
		d.allAccepted += m
		committed = append(committed, cont[pos:pos+m+1]...)
		sent = len(committed) - 1
		pos += m + 1
		if d.f.win.In(now) {
			st := res.ServerTiming
			d.roundMs = append(d.roundMs, float64(now.Sub(t0).Microseconds())/1000)
			d.drafted += n
			d.accepted += m
			d.batch += res.BatchSize
			d.queueMs += st.QueueMs
			d.batchMs += st.BatchMs
			d.verifyMs += st.VerifyMs
			d.serverMs += st.TotalMs
			d.draftMs += float64(gap.Microseconds()) / 1000
		}
		if !d.f.win.Add(d.i, m+1, now) {
			return false
		}
	}
	return true
}

// fail counts a failed round and reports whether the window is still open.
func (d *simDevice) fail(t0 time.Time) bool {
	now := time.Now()
	if d.f.win.In(now) {
		d.failures++
	}
	return d.f.win.Add(d.i, 0, now)
}
