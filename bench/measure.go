package bench

import (
	"slices"
	"sync"
	"time"
)

// Measurement is what one trial measured.
type Measurement struct {
	// System is "sled", "centralized" or "edge".
	System  string `json:"system"`
	Devices int    `json:"devices"`
	// Seconds is the length of the measuring window (after the warm-up).
	Seconds float64 `json:"seconds"`
	// Tokens is the number of output tokens all devices got within the window.
	Tokens int `json:"tokens"`
	// TokensPerSec is the whole-system token generation rate (WSTGR): Tokens /
	// Seconds.
	TokensPerSec float64 `json:"tokens_per_sec"`
	// PerDevice is each device's output tokens per second within the window.
	PerDevice []float64 `json:"per_device"`
	// MinPerDevice, P5PerDevice and MeanPerDevice summarize PerDevice.
	MinPerDevice  float64 `json:"min_per_device"`
	P5PerDevice   float64 `json:"p5_per_device"`
	MeanPerDevice float64 `json:"mean_per_device"`

	// SLED only.
	Rounds       int     `json:"rounds,omitempty"`
	MeanDraftLen float64 `json:"mean_draft_len,omitempty"`
	MeanAccepted float64 `json:"mean_accepted,omitempty"`
	MeanBatch    float64 `json:"mean_batch,omitempty"`
	// Mismatches counts divergences from the precomputed greedy continuation
	// (a logit near-tie between it and the batched pass): for SLED, rounds whose
	// verdict differed from the plan (the session restarts after one); for
	// centralized, requests whose tokens diverged (counted once each).
	Mismatches int `json:"mismatches"`
	// Failures counts rounds without an ok result (timeouts, error statuses).
	Failures int `json:"failures,omitempty"`
	// Round timing, milliseconds (SLED): device-side latency from publish to
	// result, and the server's own account (events.ServerTiming), means.
	RoundMs  Quantiles `json:"round_ms,omitempty"`
	QueueMs  float64   `json:"queue_ms,omitempty"`
	BatchMs  float64   `json:"batch_ms,omitempty"`
	VerifyMs float64   `json:"verify_ms,omitempty"`
	ServerMs float64   `json:"server_ms,omitempty"`
	// DraftMs is the mean (modelled) drafting time per round.
	DraftMs float64 `json:"draft_ms,omitempty"`
}

// Quantiles summarizes a latency distribution.
type Quantiles struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
}

// quantiles of xs (sorted in place).
func quantiles(xs []float64) Quantiles {
	if len(xs) == 0 {
		return Quantiles{}
	}
	slices.Sort(xs)
	q := func(p float64) float64 { return xs[min(len(xs)-1, int(p*float64(len(xs))))] }
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return Quantiles{Mean: s / float64(len(xs)), P50: q(0.5), P90: q(0.9), P99: q(0.99)}
}

// window counts tokens per device within [from, to). It opens once the run
// is past its warm-up and settled: every device has had its first token (its
// prompt prefilled and answered), so that a short window measures the steady
// state rather than the cold start in which every device's prompt arrives at
// once. A device still without a token settle after the warm-up no longer
// holds the window back.
type window struct {
	mu       sync.Mutex
	from, to time.Time // zero until the window opens
	warm     time.Time // the warm-up's end: the earliest from
	latest   time.Time // the window opens by then whoever is still waiting
	d        time.Duration
	started  []bool
	waiting  int // devices without a first token
	tokens   []int
}

func newWindow(devices int, start time.Time, warmup, settle, d time.Duration) *window {
	w := &window{warm: start.Add(warmup), latest: start.Add(warmup + settle), d: d, started: make([]bool, devices), waiting: devices, tokens: make([]int, devices)}
	if devices == 0 {
		w.open(w.warm)
	}
	return w
}

func (w *window) open(t time.Time) {
	w.from = t
	if t.Before(w.warm) {
		w.from = w.warm
	}
	w.to = w.from.Add(w.d)
}

// add records n tokens of device i arriving at t; it reports whether t is
// before the window's end.
func (w *window) add(i, n int, t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n > 0 && !w.started[i] {
		w.started[i] = true
		w.waiting--
		if w.waiting == 0 && w.from.IsZero() {
			w.open(t)
		}
	}
	if w.from.IsZero() && !t.Before(w.latest) {
		w.open(w.latest)
	}
	if w.from.IsZero() || t.Before(w.from) {
		return true
	}
	if !t.Before(w.to) {
		return false
	}
	w.tokens[i] += n
	return true
}

func (w *window) in(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.from.IsZero() && !t.Before(w.from) && t.Before(w.to)
}

// fill sets the throughput fields of m from the window.
func (w *window) fill(m *Measurement) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m.Devices = len(w.tokens)
	if w.from.IsZero() {
		return // never opened: the run was cancelled
	}
	m.Seconds = w.to.Sub(w.from).Seconds()
	m.PerDevice = make([]float64, len(w.tokens))
	for i, n := range w.tokens {
		m.Tokens += n
		m.PerDevice[i] = float64(n) / m.Seconds
	}
	m.TokensPerSec = float64(m.Tokens) / m.Seconds
	summarize(m)
}

func summarize(m *Measurement) {
	if len(m.PerDevice) == 0 {
		return
	}
	s := slices.Clone(m.PerDevice)
	slices.Sort(s)
	m.MinPerDevice = s[0]
	m.P5PerDevice = s[int(0.05*float64(len(s)))]
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	m.MeanPerDevice = sum / float64(len(s))
}
