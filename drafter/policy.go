package drafter

import (
	"fmt"
	"time"
)

// DraftPolicy is dynamic drafting (SLED §III): keep drafting while the draft
// model's confidence in its own token stays at or above Threshold, between MinLen
// and MaxLen tokens. Fixed drafts exactly MaxLen tokens (a fixed speculative
// length, the paper's static baseline).
type DraftPolicy struct {
	// Threshold θ on the draft token's probability. Default DefaultThreshold,
	// unless Fixed. A negative Threshold means Fixed (kept for callers that wrote
	// -1 before Fixed existed).
	Threshold float32
	// Fixed drafts MaxLen tokens whatever the confidence (Threshold is then 0).
	Fixed bool
	// MinLen tokens are drafted whatever the confidence. Default 1.
	MinLen int
	// MaxLen bounds a draft. Default 8; at most 64 (the event schema's limit).
	MaxLen int
}

// Defaults of DraftPolicy. DefaultThreshold comes from measurement, not a guess:
// docs/benchmarks.md ("Draft confidence threshold") sweeps θ for the shared
// stories260K pairs; 0.4 keeps most accepted tokens while cutting most rejected
// ones, and raised acceptance per drafted token in the end-to-end test.
const (
	DefaultThreshold = 0.4
	DefaultMinLen    = 1
	DefaultMaxLen    = 8
	MaxDraftLen      = 64
)

// WithDefaults fills zero fields. It is idempotent: a policy it returned comes
// back unchanged.
func (p DraftPolicy) WithDefaults() DraftPolicy {
	if p.Threshold < 0 {
		p.Fixed = true
	}
	switch {
	case p.Fixed:
		p.Threshold = 0
	case p.Threshold == 0:
		p.Threshold = DefaultThreshold
	}
	if p.MaxLen <= 0 {
		p.MaxLen = DefaultMaxLen
	}
	p.MaxLen = min(p.MaxLen, MaxDraftLen)
	if p.MinLen <= 0 {
		p.MinLen = DefaultMinLen
	}
	p.MinLen = min(p.MinLen, p.MaxLen)
	return p
}

// Validate reports a policy that cannot be used.
func (p DraftPolicy) Validate() error {
	if p.Threshold > 1 {
		return fmt.Errorf("drafter: threshold %v above 1", p.Threshold)
	}
	return nil
}

// Continue reports whether to draft another token, given n tokens drafted so far
// and conf, the draft model's probability of the token it would draft next.
func (p DraftPolicy) Continue(n int, conf float32) bool {
	if n >= p.MaxLen {
		return false
	}
	return n < p.MinLen || conf >= p.Threshold
}

// RetryPolicy is what a device does when a verification result is late.
type RetryPolicy struct {
	// Timeout is how long a device waits for a round's result before it resends
	// (a new round carrying every unverified token). Default 2s.
	Timeout time.Duration
	// MaxFailures is the number of consecutive failed rounds (timeouts, expired or
	// overloaded results) after which fallback mode releases drafts unverified.
	// Default 3.
	MaxFailures int
	// Fallback releases the device's own drafts to the user, marked unverified,
	// after MaxFailures consecutive failures (the paper's lossy fallback). Off by
	// default: strict lossless mode keeps retrying.
	Fallback bool
	// MaxWait bounds a whole generation's time without progress in strict mode
	// (0: wait as long as the caller's context allows).
	MaxWait time.Duration
}

// Defaults of RetryPolicy.
const (
	DefaultTimeout     = 2 * time.Second
	DefaultMaxFailures = 3
)

// WithDefaults fills zero fields.
func (p RetryPolicy) WithDefaults() RetryPolicy {
	if p.Timeout <= 0 {
		p.Timeout = DefaultTimeout
	}
	if p.MaxFailures <= 0 {
		p.MaxFailures = DefaultMaxFailures
	}
	return p
}

// Release reports whether, after failures consecutive failed rounds, the device
// releases its drafts unverified.
func (p RetryPolicy) Release(failures int) bool {
	return p.Fallback && failures >= p.MaxFailures
}
