package goodput

import (
	"math/bits"
	"sort"
	"sync"
	"time"
)

// Point is one point of a pass-cost curve: a forward pass over Tokens tokens
// takes Ms milliseconds.
type Point struct {
	Tokens float64 `json:"tokens"`
	Ms     float64 `json:"ms"`
}

// Curve is a pass-cost curve: points ascending in Tokens, Ms non-decreasing.
// The zero Curve knows nothing.
type Curve []Point

// Ms is the estimated time of a pass over tokens tokens, and whether the curve
// has any point to estimate it from. Between points it interpolates linearly.
// Below the first point the cost falls in proportion to the tokens (an
// estimate that makes a policy try smaller passes, so that their real cost is
// measured); beyond the last the last segment's slope continues (with a single
// point: the cost grows in proportion, so that a policy does not assume a
// large pass is free before it has seen one).
func (c Curve) Ms(tokens int) (float64, bool) {
	if len(c) == 0 {
		return 0, false
	}
	t := float64(max(tokens, 0))
	first, last := c[0], c[len(c)-1]
	switch {
	case t <= first.Tokens:
		return first.Ms * t / first.Tokens, true
	case t >= last.Tokens:
		if len(c) == 1 {
			return last.Ms * t / last.Tokens, true
		}
		prev := c[len(c)-2]
		slope := (last.Ms - prev.Ms) / (last.Tokens - prev.Tokens)
		return last.Ms + max(slope, 0)*(t-last.Tokens), true
	}
	i := sort.Search(len(c), func(i int) bool { return c[i].Tokens >= t })
	a, b := c[i-1], c[i]
	return a.Ms + (b.Ms-a.Ms)*(t-a.Tokens)/(b.Tokens-a.Tokens), true
}

// EstimatorConfig configures a CostEstimator. Zero fields take the documented
// defaults.
type EstimatorConfig struct {
	// Alpha is the weight of a new pass in its bucket's running means (an
	// exponentially weighted moving average). Default 0.2: a bucket follows a
	// change of the server's load within about ten passes.
	Alpha float64
}

// DefaultAlpha is EstimatorConfig.Alpha's default.
const DefaultAlpha = 0.2

func (c EstimatorConfig) withDefaults() EstimatorConfig {
	if c.Alpha <= 0 || c.Alpha > 1 {
		c.Alpha = DefaultAlpha
	}
	return c
}

// nBuckets covers passes of up to 2^nBuckets - 1 tokens; larger ones share
// the last bucket.
const nBuckets = 14

type bucket struct {
	n          int
	tokens, ms float64 // running means
	prefill    bool    // learned from passes with prefill only (see ObservePass)
}

// CostEstimator learns a server's pass-cost curve from the passes it runs:
// each pass goes to the bucket of its token count (powers of two: 1, 2-3,
// 4-7, ...), which keeps running means of tokens and time; the curve is those
// means, made non-decreasing. Observing passes of all sizes is not needed:
// Curve.Ms extrapolates, and a policy acting on the estimate produces passes
// of the sizes it considers. A CostEstimator is safe for concurrent use.
type CostEstimator struct {
	cfg EstimatorConfig

	mu       sync.Mutex
	b        [nBuckets]bucket
	overhead bucket // running mean of the server's time per pass outside it
	passes   uint64
}

// NewEstimator returns an estimator that knows nothing yet.
func NewEstimator(cfg EstimatorConfig) *CostEstimator {
	return &CostEstimator{cfg: cfg.withDefaults()}
}

// Observe records a pass over tokens tokens, none of them prefill, that
// took d: ObservePass(tokens, 0, d).
func (e *CostEstimator) Observe(tokens int, d time.Duration) { e.ObservePass(tokens, 0, d) }

// ObservePass records a pass over tokens tokens that took d, prefill of them
// committed tokens evaluated before a round's own (a session's prompt, a
// resync). Passes of no tokens or no time are ignored. A pass with prefill
// teaches the curve only while nothing else has: a prompt is one sequence's
// run of tokens, evaluated at a fraction of what as many draft tokens cost
// spread over sessions (with a KV stream per slot, a pass of unequal rounds
// runs as extra micro-batches), so a curve learned from prompts prices a
// draft token far below its cost (on the real pair at 16 devices: 5.5 ms a
// token, where a pass carrying one probe's 2 draft tokens took 59 ms more
// than one without). Buckets learned from prefill passes alone are dropped
// at the first pass without prefill.
func (e *CostEstimator) ObservePass(tokens, prefill int, d time.Duration) {
	if tokens <= 0 || d <= 0 {
		return
	}
	i := min(bits.Len(uint(tokens))-1, nBuckets-1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if prefill > 0 {
		for _, b := range e.b {
			if b.n > 0 && !b.prefill {
				return // the curve has passes without prefill: learn from those
			}
		}
		e.passes++
		e.b[i].add(float64(tokens), float64(d)/float64(time.Millisecond), e.cfg.Alpha)
		e.b[i].prefill = true
		return
	}
	for k := range e.b {
		if e.b[k].prefill {
			e.b[k] = bucket{}
		}
	}
	e.passes++
	e.b[i].add(float64(tokens), float64(d)/float64(time.Millisecond), e.cfg.Alpha)
}

// ObserveOverhead records the server's time around one pass that is not the
// pass itself (decoding the batch, publishing and storing its results).
func (e *CostEstimator) ObserveOverhead(d time.Duration) {
	if d < 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.overhead.add(1, float64(d)/float64(time.Millisecond), e.cfg.Alpha)
}

func (b *bucket) add(tokens, ms, alpha float64) {
	if b.n == 0 {
		b.tokens, b.ms = tokens, ms
	} else {
		b.tokens += alpha * (tokens - b.tokens)
		b.ms += alpha * (ms - b.ms)
	}
	b.n++
}

// Curve is the current estimate.
func (e *CostEstimator) Curve() Curve {
	e.mu.Lock()
	defer e.mu.Unlock()
	var c Curve
	for _, b := range e.b {
		if b.n == 0 {
			continue
		}
		p := Point{Tokens: b.tokens, Ms: b.ms}
		if n := len(c); n > 0 {
			if p.Tokens <= c[n-1].Tokens { // cannot happen with disjoint buckets; be safe
				continue
			}
			p.Ms = max(p.Ms, c[n-1].Ms) // a larger pass never costs less
		}
		c = append(c, p)
	}
	return c
}

// OverheadMs is the running mean of ObserveOverhead, 0 before any.
func (e *CostEstimator) OverheadMs() float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.overhead.ms
}

// Passes is the number of passes observed.
func (e *CostEstimator) Passes() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.passes
}
