// Package sim is a discrete-event model of a SLED deployment and of the
// centralized baseline, for fleets and servers too large to measure here. It runs
// the real decision code: batcher.Policy.Decide closes batches (with the
// batcher's own count of recently active devices), and rounds come from a
// RoundSource (bench.Sampler: drafter.DraftPolicy applied to measured acceptance
// traces). What it models is time: device drafting (Poisson, at a profile's
// rate), messaging (fixed latencies per hop, calibrated from measured rounds),
// the verifier worker (work-conserving: when it frees up it verifies every queued
// batch in one pass, up to its slots, as verifier.Worker does), and the server's
// forward pass (PassCost, fitted from engine measurements, or an assumed GPU
// model).
package sim

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/verifier"
)

// PassCost is the time of one forward pass over seqs sequences holding tokens
// tokens in all, with cells positions in use in the (unified) KV cache:
// base(tokens) + PerSeqMs*seqs + (CellMs + AttnMs*tokens)*cells/1000, where base is
// FixedMs + PerTokenMs*tokens, or, when Knots are given, their piecewise-linear
// interpolation (a pass over a few tokens costs less than the line through large
// passes says: small products run less efficiently per token, not more). The
// attention term is there because with llama.cpp's unified cache every token of
// a pass attends over every used cell (masked), so a pass costs more the more
// history all sequences together hold, not only its own.
type PassCost struct {
	FixedMs    float64 `json:"fixed_ms"`
	PerTokenMs float64 `json:"per_token_ms"`
	PerSeqMs   float64 `json:"per_seq_ms"`
	// AttnMs is the cost per token per 1000 KV cells in use, CellMs the cost
	// per pass per 1000 KV cells in use (the mask and cache views).
	AttnMs float64 `json:"attn_ms_per_token_kcell"`
	CellMs float64 `json:"cell_ms_per_kcell"`
	// Knots, ascending in Tokens, replace the line within their range; beyond
	// the last the line's slope continues from it, below the first it holds.
	Knots []Knot `json:"knots,omitempty"`
	// Source says where the coefficients come from (a fit, with its error, or an
	// assumption).
	Source string `json:"source"`
}

// Knot is a point of PassCost's base curve: a pass over Tokens tokens (with no
// KV cells in use and no per-sequence cost) takes Ms.
type Knot struct {
	Tokens int     `json:"tokens"`
	Ms     float64 `json:"ms"`
}

// Ms is the pass time in milliseconds.
func (c PassCost) Ms(tokens, seqs, cells int) float64 {
	t := float64(tokens)
	return c.base(tokens) + c.PerSeqMs*float64(seqs) + (c.CellMs+c.AttnMs*t)*float64(cells)/1000
}

func (c PassCost) base(tokens int) float64 {
	k := c.Knots
	switch {
	case len(k) == 0:
		return c.FixedMs + c.PerTokenMs*float64(tokens)
	case tokens <= k[0].Tokens:
		return k[0].Ms
	case tokens >= k[len(k)-1].Tokens:
		last := k[len(k)-1]
		return last.Ms + c.PerTokenMs*float64(tokens-last.Tokens)
	}
	i, _ := slices.BinarySearchFunc(k, tokens, func(k Knot, t int) int { return k.Tokens - t })
	a, b := k[i-1], k[i]
	return a.Ms + (b.Ms-a.Ms)*float64(tokens-a.Tokens)/float64(b.Tokens-a.Tokens)
}

// Round is one verification round: Len draft tokens, the first Accepted accepted.
type Round struct{ Len, Accepted int }

// RoundSource draws rounds. Each simulated device gets its own.
type RoundSource interface{ Next() Round }

// Config describes a simulated fleet. Zero fields take the documented defaults.
type Config struct {
	// Devices in the fleet (> 0).
	Devices int
	// DraftRate is each device's draft tokens per second (SLED).
	DraftRate float64
	// Rounds returns device i's round source (SLED).
	Rounds func(i int) RoundSource
	// Batch is the batcher's policy (defaults as batcher's).
	Batch batcher.Policy
	// Budget is the verifier's goodput policy (package goodput), run as the
	// verifier runs it: each worker learns its pass-cost curve from its own
	// simulated passes and each device's acceptance from its rounds, and every
	// result carries the device's budget for its next round, which truncates
	// the round its source draws. Budget.Static: no budgets (every round as
	// drawn).
	Budget goodput.Policy
	// TPOTMs is every device's latency objective, milliseconds per output
	// token (0: none): the budgets try to meet it and, with Batch.SLO, so
	// does the batcher.
	TPOTMs float64
	// ServerRounds is each device's drafter.Config.ServerRounds: with a
	// budget policy, a device held at budget 0 lets the worker run up to
	// that many rounds in a row itself (one committed token each, no trip:
	// the worker puts them in its next pass, as verifier.Worker does). 0:
	// drafter.DefaultServerRounds; negative: every round is the device's own.
	ServerRounds int
	// GatherMax bounds a free worker's wait for the rounds it answered to
	// join its next pass (goodput.Gather), as verifier.WorkerConfig.GatherMax.
	// Default verifier.DefaultGatherMax; negative: never wait. Budget.Static
	// never waits.
	GatherMax time.Duration
	// ActiveWindow: a device counts as active for Batch's early close when it
	// sent a draft within it, as in batcher.Config. Default 1s.
	ActiveWindow time.Duration
	// Slots bounds the drafts the worker verifies in one pass (its verifier's
	// slots; it takes queued batches while they fit, and always at least one).
	// Default Devices+4, as the benchmark's verifier.
	Slots int
	// Workers is the number of verifier workers (each a server with its own
	// forward passes at Cost, Slots drafts per pass). Device i's sessions stick
	// to worker i mod Workers, as the batcher's router keeps a session on one
	// worker; one batcher serves them all, closing each worker's batches by
	// Batch with the fleet's active-device count. Default 1.
	Workers int
	// Cost is the server's forward-pass cost.
	Cost PassCost
	// UpMs is the latency from a device's publish to the batcher having the
	// draft; HopMs from a batch closing to the worker having it; DownMs from the
	// end of a pass to the device having its result. Measured on this machine:
	// see Calibration in package bench.
	UpMs, HopMs, DownMs float64
	// WorkerMs and ResultMs are the worker's own time per pass and per result
	// (decoding, publishing results and waiting for them to be stored). With
	// Publishers 0 the worker cannot start the next pass during either: the
	// model of a CPU server whose passes use every core, where work beside the
	// pass takes its time from the pass.
	WorkerMs, ResultMs float64
	// Publishers > 0 models a server whose passes leave host cores free (a
	// GPU's), as verifier.Worker runs there: DecodeMs of a result's ResultMs
	// is its draft's decoding at the worker's consumer (one goroutine, beside
	// the passes: a batch reaches the worker once the batches before it are
	// decoded), and the rest is encoding and publishing it, shared by
	// Publishers goroutines (verifier.WorkerConfig.Publishers, as many as
	// verifier.Publishing gives) while the next pass runs, after the
	// previous pass's results; the pass after next starts only once they are
	// out (the worker settles a pass after the next one). Default 0.
	Publishers int
	DecodeMs   float64
	// BatchTokens bounds the tokens of one centralized step: prompts are
	// prefilled in chunks that fit after the decoding requests' tokens, as in
	// centralized.Config. Default 512.
	BatchTokens int
	// StepMs is the centralized server's time per step besides the forward pass
	// (sampling, handing tokens to clients).
	StepMs float64
	// PassScale and StepScale multiply the modelled passes of the SLED verifier
	// and of the centralized server: how much slower a pass runs in the loaded
	// system than alone (threads competing for the cores, acceptance). Default 1.
	PassScale, StepScale float64
	// PromptLen is the prompt of every session (the prefix a SLED session's first
	// round carries, the prefill of a centralized request), ContLen the tokens a
	// session or request generates before the next one starts. Both shape the
	// passes: the first round carries the prompt, and every used KV cell costs
	// attention (PassCost.AttnMs). ContLen 0: sessions never end.
	PromptLen, ContLen int
	// Warmup and Duration of the simulated window, seconds. Defaults 2 and 20.
	// The window opens as a measured trial's does (Window): after the warm-up
	// once every device has had its first token, at the latest Settle seconds
	// after the warm-up (default 10, the benchmark's Trial.Timeout).
	Warmup, Duration, Settle float64
	// Seed seeds the devices' drafting times.
	Seed uint64
}

// Result is what a simulation measured, with the same meaning as the
// corresponding bench.Measurement fields.
type Result struct {
	Devices       int       `json:"devices"`
	TokensPerSec  float64   `json:"tokens_per_sec"`
	PerDevice     []float64 `json:"per_device"`
	MinPerDevice  float64   `json:"min_per_device"`
	P5PerDevice   float64   `json:"p5_per_device"`
	MeanPerDevice float64   `json:"mean_per_device"`
	// MeanBatch is drafts per pass (SLED; sequences per pass, centralized).
	MeanBatch float64 `json:"mean_batch"`
	// MeanClosed is drafts per batch the batcher closed (SLED).
	MeanClosed float64 `json:"mean_closed,omitempty"`
	RoundMs    float64 `json:"round_ms"`
	Passes     int     `json:"passes"`
	// PassMs is the mean modelled forward pass, scaled (without WorkerMs,
	// ResultMs or StepMs).
	PassMs float64 `json:"pass_ms"`
}

func (c Config) withDefaults() Config {
	c.Batch = c.Batch.WithDefaults()
	if c.ActiveWindow <= 0 {
		c.ActiveWindow = time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if c.GatherMax == 0 {
		c.GatherMax = verifier.DefaultGatherMax
	}
	if c.ServerRounds == 0 {
		c.ServerRounds = drafter.DefaultServerRounds
	}
	if c.Slots <= 0 {
		c.Slots = c.Devices + 4
	}
	if c.BatchTokens <= 0 {
		c.BatchTokens = 512
	}
	if c.PassScale <= 0 {
		c.PassScale = 1
	}
	if c.StepScale <= 0 {
		c.StepScale = 1
	}
	if c.Settle <= 0 {
		c.Settle = 10
	}
	if c.Warmup <= 0 {
		c.Warmup = 2
	}
	if c.Duration <= 0 {
		c.Duration = 20
	}
	return c
}

// event kinds
const (
	evDrafted  = iota // a device finished drafting: the draft is published
	evArrive          // a draft reaches the batcher
	evBatchTry        // the batcher looks at its queue again (deadline)
	evDeliver         // a closed batch reaches the worker
	evPassDone        // the worker finished a pass and its results
	evSettled         // the results of the worker's pass before the last are out: it may start another
	evGather          // a free worker's wait for expected rounds ends
	evResult          // a result reaches its device
)

type event struct {
	at   float64 // seconds
	seq  uint64  // insertion order: ties go first-in first-out
	kind int
	dev  int
}

type queue []event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *queue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// Loop is a discrete-event loop: events run in time order, and events at the
// same time in the order they were scheduled.
type Loop struct {
	q   queue
	seq uint64
	Now float64
}

// At schedules an event of kind for dev at time at (seconds).
func (l *Loop) At(at float64, kind, dev int) {
	l.seq++
	heap.Push(&l.q, event{at: at, seq: l.seq, kind: kind, dev: dev})
}

// Next removes the earliest event and advances Now to it; ok is false when no
// event is left.
func (l *Loop) Next() (kind, dev int, ok bool) {
	if len(l.q) == 0 {
		return 0, 0, false
	}
	e := heap.Pop(&l.q).(event)
	l.Now = e.at
	return e.kind, e.dev, true
}

type device struct {
	rounds RoundSource
	cur    Round   // the round in progress (drafting, queued or in a pass)
	res    []Round // the rounds whose results are on their way down, in order
	sent   float64
	// served: the worker runs the device's next round itself; chain is how
	// many more it may run before the device's own next round.
	served bool
	chain  int
	budget int     // the last result's draft budget, -1 when none
	due    float64 // when this round's result is due (TPOTMs), seconds; 0 none
	closed float64 // when the batch holding its draft closed
	// drafted and accepted count every round's tokens (the device's own
	// acceptance, for its due times)
	drafted, accepted int
	// session state: pos tokens generated in the current session; fresh when
	// the next round opens a session (it carries the prompt).
	pos   int
	fresh bool
}

// SLED simulates a SLED fleet. Each device drafts a round's tokens (an Erlang
// draw at DraftRate), publishes, waits for its result, and drafts the next round;
// a session generates ContLen tokens, then the device opens the next one, whose
// first round carries the prompt. The batcher closes batches by cfg.Batch.Decide
// with the devices active within ActiveWindow, as batcher.Batcher does. The
// worker verifies every queued batch in one pass when it frees up (up to Slots
// drafts), each pass costing Cost.Ms(tokens, drafts, cells) + WorkerMs +
// ResultMs*drafts (the pass scaled by PassScale), where a draft's tokens are its draft plus one committed token
// (plus the prompt in a session's first round) and cells are the KV positions all
// devices' sessions hold.
func SLED(cfg Config) Result {
	cfg = cfg.withDefaults()
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x51))
	l := &Loop{}
	devs := make([]device, cfg.Devices)
	draftTime := func(n int) float64 {
		s := 0.0
		for range n {
			s += rng.ExpFloat64()
		}
		return s / cfg.DraftRate
	}
	workerOf := func(dev int) int { return dev % cfg.Workers }
	trackers := make([]*goodput.Tracker, cfg.Workers)
	for w := range trackers {
		trackers[w] = goodput.NewTracker(goodput.NewEstimator(goodput.EstimatorConfig{}), goodput.TrackerConfig{Policy: cfg.Budget})
	}
	ids := make([]string, len(devs))
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	epoch := at(0)
	tpot := time.Duration(cfg.TPOTMs * float64(time.Millisecond))
	start := func(i int) {
		d := &devs[i]
		d.cur = d.rounds.Next()
		least := 1 // a round without a budget drafts at least one token, as the device's policy does
		if d.budget >= 0 {
			d.cur.Len, least = min(d.cur.Len, d.budget), 0
		}
		d.cur.Len = max(d.cur.Len, least)
		if cfg.ContLen > 0 {
			// the session's last round drafts at most what is left of it
			d.cur.Len = max(least, min(d.cur.Len, cfg.ContLen-1-d.pos))
		}
		d.cur.Accepted = min(d.cur.Accepted, d.cur.Len)
		d.chain = 0
		if !cfg.Budget.Static {
			room := math.MaxInt32 // sessions that never end
			if cfg.ContLen > 0 {
				room = cfg.ContLen - 1 - d.pos
			}
			d.chain = drafter.ServerAllowance(cfg.ServerRounds, room, d.cur.Len)
		}
		d.due = 0
		if due := drafter.RoundDue(at(l.Now), tpot, d.cur.Len, d.drafted, d.accepted); !due.IsZero() {
			d.due = due.Sub(epoch).Seconds()
		}
		l.At(l.Now+draftTime(d.cur.Len), evDrafted, i)
	}
	for i := range devs {
		devs[i].rounds = cfg.Rounds(i)
		devs[i].fresh = true
		devs[i].budget = -1
		start(i)
	}
	// The batcher's count of active devices, on the simulated clock.
	activity := batcher.Activity{Window: cfg.ActiveWindow}
	active := func() int { return activity.Count(at(l.Now)) }
	win := newWindow(cfg)
	type simWorker struct {
		served    []int // devices whose next round the worker runs itself
		pending   []int // drafts at the batcher for this worker
		oldest    float64
		delivered [][]int // batches at the worker, waiting
		inFlight  [][]int // batches between batcher and worker
		busy      bool
		inPass    []int
		passMs    float64 // its modelled forward pass
		passTok   int
		prefill   int // of passTok, prompt tokens
		tryAt     float64
		freed     float64 // when it last went idle
		decoded   float64 // when its consumer has decoded the batches sent so far (Publishers > 0)
		published float64 // when the last pass's results are out (Publishers > 0)
		settle    float64 // the pass after the next may start then: the results of the one before are out
	}
	ws := make([]simWorker, cfg.Workers)
	for w := range ws {
		ws[w].tryAt = -1
	}
	var res Result
	var batchSum, closedSum, closed, rounds int
	var roundSum, passSum float64
	startPass := func(w int) {
		wk := &ws[w]
		if wk.busy || len(wk.delivered) == 0 && len(wk.served) == 0 {
			return
		}
		// As verifier.Worker: the rounds it runs itself, at most Slots (a
		// verifier holds a session per slot), then queued batches while they
		// fit, and always at least one.
		own := min(len(wk.served), cfg.Slots)
		n := verifier.TakeQueued(len(wk.delivered), func(i int) int { return len(wk.delivered[i]) }, max(cfg.Slots-own, 1))
		if !cfg.Budget.Static && cfg.GatherMax > 0 {
			// As verifier.Worker: wait for the rounds it expects back when
			// that saves more server time than the wait costs.
			tokens := own
			var due time.Time
			for _, b := range wk.delivered[:n] {
				for _, i := range b {
					tokens += devs[i].cur.Len + 1
					if devs[i].fresh {
						tokens += cfg.PromptLen
					}
					if d := devs[i].due; d > 0 && (due.IsZero() || at(d).Before(due)) {
						due = at(d)
					}
				}
			}
			if wait := trackers[w].Gather(at(l.Now), at(wk.freed), tokens, due, cfg.GatherMax); wait > 0 {
				l.At(l.Now+wait.Seconds(), evGather, w)
				return
			}
		}
		wk.inPass = append(wk.inPass[:0], wk.served[:own]...)
		wk.served = append(wk.served[:0], wk.served[own:]...)
		for _, b := range wk.delivered[:n] {
			wk.inPass = append(wk.inPass, b...)
		}
		wk.delivered = slices.Delete(wk.delivered, 0, n)
		tokens, cells, prefill := 0, 0, 0
		for _, i := range wk.inPass {
			tokens += devs[i].cur.Len + 1
			if devs[i].fresh {
				tokens += cfg.PromptLen
				prefill += cfg.PromptLen
			}
		}
		for i := range devs {
			if workerOf(i) != w {
				continue
			}
			cells += devs[i].pos
			if !devs[i].fresh || cfg.ContLen == 0 {
				cells += cfg.PromptLen
			}
		}
		wk.busy = true
		res.Passes++
		batchSum += len(wk.inPass)
		pass := cfg.PassScale * cfg.Cost.Ms(tokens, len(wk.inPass), cells+tokens)
		passSum += pass
		wk.passMs, wk.passTok, wk.prefill = pass, tokens, prefill
		ms := pass + cfg.WorkerMs + cfg.ResultMs*float64(len(wk.inPass))
		if cfg.Publishers > 0 {
			ms = pass + cfg.WorkerMs
		}
		l.At(l.Now+ms/1000, evPassDone, w)
	}
	decide := func(w int) {
		wk := &ws[w]
		age := seconds(l.Now - wk.oldest)
		q := batcher.Queue{Drafts: len(wk.pending), Active: active(), Age: age, Slack: batcher.NoSlack}
		if cfg.Batch.SLO {
			// As batcher.Batcher: the worker's estimated pass, and the drafts' due times.
			dues := make([]time.Time, len(wk.pending))
			tokens := 0
			for k, j := range wk.pending {
				if devs[j].due > 0 {
					dues[k] = at(devs[j].due)
				}
				tokens += devs[j].cur.Len + 1
			}
			ms, _ := trackers[w].Estimator().Curve().Ms(tokens)
			q.Slack, q.Pass = batcher.Slack(at(l.Now), dues, ms), time.Duration(ms*float64(time.Millisecond))
		}
		sizes, _, wait := cfg.Batch.Drain(q)
		for _, n := range sizes {
			for _, j := range wk.pending[:n] {
				devs[j].closed = l.Now
			}
			wk.inFlight = append(wk.inFlight, slices.Clone(wk.pending[:n]))
			arrive := l.Now + cfg.HopMs/1000
			if cfg.Publishers > 0 {
				wk.decoded = max(arrive, wk.decoded) + cfg.DecodeMs*float64(n)/1000
				arrive = wk.decoded
			}
			l.At(arrive, evDeliver, w)
			wk.pending = wk.pending[n:]
			wk.oldest = l.Now
			closed++
			closedSum += n
		}
		if len(wk.pending) > 0 {
			when := l.Now + wait.Seconds()
			if wk.tryAt < l.Now || when < wk.tryAt {
				wk.tryAt = when
				l.At(when, evBatchTry, w)
			}
		}
	}
	for {
		kind, i, ok := l.Next()
		if !ok || win.Over(at(l.Now)) {
			break
		}
		switch kind {
		case evDrafted:
			devs[i].sent = l.Now
			l.At(l.Now+cfg.UpMs/1000, evArrive, i)
		case evArrive:
			wk := &ws[workerOf(i)]
			if len(wk.pending) == 0 {
				wk.oldest = l.Now
			}
			activity.Seen(ids[i], at(l.Now))
			wk.pending = append(wk.pending, i)
			decide(workerOf(i))
		case evBatchTry:
			decide(i)
		case evDeliver:
			wk := &ws[i]
			for _, j := range wk.inFlight[0] {
				trackers[i].Arrived(ids[j])
			}
			wk.delivered = append(wk.delivered, wk.inFlight[0])
			wk.inFlight = wk.inFlight[1:]
			startPass(i)
		case evGather:
			startPass(i)
		case evPassDone:
			wk := &ws[i]
			out := l.Now // when the pass's results are published
			if cfg.Publishers > 0 {
				n := len(wk.inPass)
				share := max(0, cfg.ResultMs-cfg.DecodeMs) * float64(n) / float64(verifier.Publishing(n, cfg.Publishers))
				out = max(l.Now, wk.published) + share/1000
				wk.settle, wk.published = wk.published, out
			}
			for _, j := range wk.inPass {
				devs[j].res = append(devs[j].res, devs[j].cur)
				// The server holds the session's prompt from this pass on: a
				// round it runs itself next must not carry it again.
				devs[j].fresh = false
				l.At(out+cfg.DownMs/1000, evResult, j)
			}
			if !cfg.Budget.Static {
				// The worker's goodput policy, fed as verifier.Worker feeds it.
				tr := trackers[i]
				tr.Estimator().ObservePass(wk.passTok, wk.prefill, time.Duration(wk.passMs*float64(time.Millisecond)))
				over := cfg.WorkerMs + cfg.ResultMs*float64(len(wk.inPass))
				if cfg.Publishers > 0 {
					over = cfg.WorkerMs
				}
				tr.Estimator().ObserveOverhead(time.Duration(over * float64(time.Millisecond)))
				rounds := make([]goodput.Round, len(wk.inPass))
				for k, j := range wk.inPass {
					d := &devs[j]
					rounds[k] = goodput.Round{Device: ids[j], Drafted: d.cur.Len, Accepted: d.cur.Accepted, TPOTMs: cfg.TPOTMs, Arrived: at(d.closed),
						ByServer: d.served, ServerRounds: d.chain > 0 || d.served}
				}
				plan := tr.Plan(rounds, at(l.Now))
				for k, j := range wk.inPass {
					d := &devs[j]
					d.budget = plan.Budgets[k]
					// As verifier.Worker: at budget 0 the worker goes on with
					// the session itself in its next pass.
					d.served = d.budget == 0 && d.chain > 0
					if d.served {
						d.chain--
						d.cur, d.closed = Round{}, l.Now
						wk.served = append(wk.served, j)
					}
				}
			}
			if cfg.Publishers > 0 && wk.settle > l.Now {
				l.At(wk.settle, evSettled, i) // waiting on the previous pass's results
				continue
			}
			wk.busy, wk.freed = false, l.Now
			startPass(i)
		case evSettled:
			wk := &ws[i]
			wk.busy, wk.freed = false, l.Now
			startPass(i)
		case evResult:
			d := &devs[i]
			r := d.res[0]
			d.res = d.res[1:]
			got := r.Accepted + 1
			if win.In(at(l.Now)) {
				roundSum += l.Now - d.sent
				rounds++
			}
			win.Add(i, got, at(l.Now))
			d.fresh = false
			d.pos += got
			d.drafted += r.Len
			d.accepted += r.Accepted
			if cfg.ContLen > 0 && d.pos >= cfg.ContLen-1 {
				d.pos, d.fresh = 0, true
			}
			if d.served || len(d.res) > 0 {
				d.sent = l.Now // the worker already has its next round
				continue
			}
			start(i)
		}
	}
	res.fill(win)
	if res.Passes > 0 {
		res.MeanBatch = float64(batchSum) / float64(res.Passes)
		res.PassMs = passSum / float64(res.Passes)
	}
	if closed > 0 {
		res.MeanClosed = float64(closedSum) / float64(closed)
	}
	if rounds > 0 {
		res.RoundMs = roundSum / float64(rounds) * 1000
	}
	return res
}

// Centralized simulates the centralized baseline as centralized.Server runs it:
// cfg.Devices clients, each with one request in progress (PromptLen prompt
// tokens, ContLen output tokens, then the next request), continuous batching:
// every step is one pass holding one token of every decoding request, then
// prompt chunks of the requests still prefilling, up to BatchTokens in all; a
// request whose prompt is complete gets its first token from that pass. A
// finished request's client is admitted again at the step after next (its next
// request reaches the server while a step runs). Each step costs
// StepScale*Cost.Ms(tokens, requests, cells) + StepMs, cells being the
// KV positions all requests hold.
func Centralized(cfg Config) Result {
	cfg = cfg.withDefaults()
	type client struct {
		gen   int // tokens generated in the current request; -1 waiting to be admitted
		fed   int // prompt tokens prefilled
		admit int // steps to wait before admission
		got   bool
	}
	cs := make([]client, cfg.Devices)
	win := newWindow(cfg)
	now := 0.0
	var res Result
	seqSum, passSum := 0, 0.0
	for cfg.Devices > 0 && !win.Over(at(now)) {
		tokens, seqs, cells := 0, 0, 0
		budget := cfg.BatchTokens
		for i := range cs {
			c := &cs[i]
			c.got = false
			switch {
			case c.gen < 0 && c.admit > 0:
				c.admit--
				continue
			case c.gen < 0:
				c.gen, c.fed = 0, 0
			}
			cells += c.fed + c.gen
			if c.gen > 0 || c.fed == cfg.PromptLen && cfg.PromptLen == 0 {
				tokens++
				budget--
				seqs++
				c.got = true
			}
		}
		for i := range cs {
			c := &cs[i]
			if c.gen != 0 || c.got || budget <= 0 {
				continue
			}
			n := min(budget, cfg.PromptLen-c.fed)
			c.fed += n
			budget -= n
			tokens += n
			seqs++
			c.got = c.fed == cfg.PromptLen
		}
		if seqs == 0 {
			continue // the server blocks until a request arrives: no time passes
		}
		pass := cfg.StepScale * cfg.Cost.Ms(max(tokens, 1), seqs, cells+tokens)
		now += (pass + cfg.StepMs) / 1000
		if win.Over(at(now)) {
			break
		}
		passSum += pass
		res.Passes++
		seqSum += seqs
		for i := range cs {
			c := &cs[i]
			if !c.got {
				continue
			}
			c.gen++
			win.Add(i, 1, at(now))
			if cfg.ContLen > 0 && c.gen >= cfg.ContLen {
				c.gen, c.admit = -1, 1
			}
		}
	}
	res.fill(win)
	if res.Passes > 0 {
		res.MeanBatch = float64(seqSum) / float64(res.Passes)
		res.RoundMs = now / float64(res.Passes) * 1000 // mean step
		res.PassMs = passSum / float64(res.Passes)
	}
	return res
}

// at is simulated second sec as a time, for the decision code and the
// window, which take times.
func at(sec float64) time.Time { return time.Unix(0, 0).Add(seconds(sec)) }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// newWindow is cfg's measuring window on the simulated clock (from 0).
func newWindow(cfg Config) *Window {
	return NewWindow(cfg.Devices, at(0), seconds(cfg.Warmup), seconds(cfg.Settle), seconds(cfg.Duration))
}

func (r *Result) fill(win *Window) {
	tokens := win.Tokens()
	r.Devices = len(tokens)
	r.PerDevice = make([]float64, len(tokens))
	from, to := win.Span()
	seconds := to.Sub(from).Seconds()
	if from.IsZero() || seconds <= 0 {
		return // the window never opened: nothing measured
	}
	total := 0
	for i, n := range tokens {
		total += n
		r.PerDevice[i] = float64(n) / seconds
	}
	r.TokensPerSec = float64(total) / seconds
	s := slices.Clone(r.PerDevice)
	slices.Sort(s)
	if len(s) > 0 {
		r.MinPerDevice, r.P5PerDevice = s[0], s[int(0.05*float64(len(s)))]
		r.MeanPerDevice = r.TokensPerSec / float64(len(s))
	}
}
