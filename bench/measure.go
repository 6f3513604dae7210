package bench

import (
	"slices"

	"github.com/sled-project/sled/bench/sim"
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

// fillWindow sets the throughput fields of m from the window.
func fillWindow(w *sim.Window, m *Measurement) {
	tokens := w.Tokens()
	m.Devices = len(tokens)
	from, to := w.Span()
	if from.IsZero() {
		return // never opened: the run was cancelled
	}
	m.Seconds = to.Sub(from).Seconds()
	m.PerDevice = make([]float64, len(tokens))
	for i, n := range tokens {
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
