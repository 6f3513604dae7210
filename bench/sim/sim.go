// Package sim is a discrete-event model of a SLED deployment and of the
// centralized baseline, for fleets and servers too large to measure here. It runs
// the real decision code: batcher.Policy.Decide closes batches, and rounds come
// from a RoundSource (bench.Sampler: drafter.DraftPolicy applied to measured
// acceptance traces). What it models is time: device drafting (Poisson, at a
// profile's rate), messaging (a fixed latency per hop, calibrated from measured
// rounds), and the server's forward pass (PassCost, fitted from engine
// measurements, or an assumed GPU model).
package sim

import (
	"container/heap"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sled-project/sled/batcher"
)

// PassCost is the time of one forward pass over seqs sequences holding tokens
// tokens in all: FixedMs + PerTokenMs*tokens + PerSeqMs*seqs.
type PassCost struct {
	FixedMs    float64 `json:"fixed_ms"`
	PerTokenMs float64 `json:"per_token_ms"`
	PerSeqMs   float64 `json:"per_seq_ms"`
	// Source says where the coefficients come from (a fit, with its error, or an
	// assumption).
	Source string `json:"source"`
}

// Ms is the pass time in milliseconds.
func (c PassCost) Ms(tokens, seqs int) float64 {
	return c.FixedMs + c.PerTokenMs*float64(tokens) + c.PerSeqMs*float64(seqs)
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
	// Cost is the server's forward-pass cost.
	Cost PassCost
	// UpMs is the latency from a device's publish to the batcher having the
	// draft; DownMs from the end of verification to the device having the result
	// (it includes publishing the batch to the verifier). Measured on this
	// machine: see Calibration.
	UpMs, DownMs float64
	// Warmup and Duration of the simulated window, seconds. Defaults 2 and 20.
	Warmup, Duration float64
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
	MeanBatch     float64   `json:"mean_batch"`
	RoundMs       float64   `json:"round_ms"`
	Passes        int       `json:"passes"`
}

func (c Config) withDefaults() Config {
	c.Batch = c.Batch.WithDefaults()
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
	evPassDone        // the verifier finished a pass
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
	cur    Round
	sent   float64
	tokens int
}

// SLED simulates a SLED fleet: each device drafts a round's tokens (an Erlang
// draw at DraftRate), publishes, waits for its result, and drafts the next round;
// the batcher closes batches by cfg.Batch.Decide (every device counts as active);
// one verifier runs batches in order, each pass costing Cost.Ms(draft tokens +
// one committed token per draft, drafts).
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
	start := func(i int) {
		d := &devs[i]
		d.cur = d.rounds.Next()
		d.cur.Len = max(d.cur.Len, 1)
		l.At(l.Now+draftTime(d.cur.Len), evDrafted, i)
	}
	for i := range devs {
		devs[i].rounds = cfg.Rounds(i)
		start(i)
	}
	from, to := cfg.Warmup, cfg.Warmup+cfg.Duration
	var pending []int // drafts at the batcher
	var oldest float64
	var batches [][]int
	busy := false
	var inPass []int
	tryAt := -1.0
	var res Result
	var batchSum, rounds int
	var roundSum float64
	startPass := func() {
		if busy || len(batches) == 0 {
			return
		}
		inPass, batches = batches[0], batches[1:]
		tokens := 0
		for _, i := range inPass {
			tokens += devs[i].cur.Len + 1
		}
		busy = true
		res.Passes++
		batchSum += len(inPass)
		l.At(l.Now+cfg.Cost.Ms(tokens, len(inPass))/1000, evPassDone, -1)
	}
	decide := func() {
		for {
			age := time.Duration((l.Now - oldest) * float64(time.Second))
			ok, _, wait := cfg.Batch.Decide(len(pending), cfg.Devices, age)
			if !ok {
				if len(pending) > 0 {
					at := l.Now + wait.Seconds()
					if tryAt < l.Now || at < tryAt {
						tryAt = at
						l.At(at, evBatchTry, -1)
					}
				}
				return
			}
			n := min(len(pending), cfg.Batch.Size)
			batches = append(batches, slices.Clone(pending[:n]))
			pending = pending[n:]
			oldest = l.Now
			startPass()
		}
	}
	for {
		kind, i, ok := l.Next()
		if !ok || l.Now >= to {
			break
		}
		switch kind {
		case evDrafted:
			devs[i].sent = l.Now
			l.At(l.Now+cfg.UpMs/1000, evArrive, i)
		case evArrive:
			if len(pending) == 0 {
				oldest = l.Now
			}
			pending = append(pending, i)
			decide()
		case evBatchTry:
			decide()
		case evPassDone:
			for _, j := range inPass {
				l.At(l.Now+cfg.DownMs/1000, evResult, j)
			}
			busy = false
			startPass()
		case evResult:
			d := &devs[i]
			if l.Now >= from {
				d.tokens += d.cur.Accepted + 1
				roundSum += l.Now - d.sent
				rounds++
			}
			start(i)
		}
	}
	res.fill(devs, cfg.Duration)
	if res.Passes > 0 {
		res.MeanBatch = float64(batchSum) / float64(res.Passes)
	}
	if rounds > 0 {
		res.RoundMs = roundSum / float64(rounds) * 1000
	}
	return res
}

// Centralized simulates the centralized baseline: cfg.Devices clients each with
// one request always in progress, continuous batching (every pass advances every
// sequence by one token), each pass costing Cost.Ms(devices, devices). Prompt
// prefill is left out.
func Centralized(cfg Config) Result {
	cfg = cfg.withDefaults()
	devs := make([]device, cfg.Devices)
	step := cfg.Cost.Ms(cfg.Devices, cfg.Devices) / 1000
	steps := int(cfg.Duration / step)
	for i := range devs {
		devs[i].tokens = steps
	}
	res := Result{Passes: steps, MeanBatch: float64(cfg.Devices), RoundMs: step * 1000}
	res.fill(devs, cfg.Duration)
	return res
}

func (r *Result) fill(devs []device, seconds float64) {
	r.Devices = len(devs)
	r.PerDevice = make([]float64, len(devs))
	total := 0
	for i, d := range devs {
		total += d.tokens
		r.PerDevice[i] = float64(d.tokens) / seconds
	}
	r.TokensPerSec = float64(total) / seconds
	s := slices.Clone(r.PerDevice)
	slices.Sort(s)
	if len(s) > 0 {
		r.MinPerDevice, r.P5PerDevice = s[0], s[int(0.05*float64(len(s)))]
		r.MeanPerDevice = r.TokensPerSec / float64(len(s))
	}
}
