package sim

import (
	"sync"
	"time"
)

// Window counts tokens per device within [from, to), the measuring window of
// a trial, measured (package bench) or simulated (SLED, Centralized) alike.
// It opens once the run is past its warm-up and settled: every device has had
// its first token (its prompt prefilled and answered), so that a short window
// measures the steady state rather than the cold start in which every
// device's prompt arrives at once. A device still without a token settle
// after the warm-up no longer holds the window back. Safe for concurrent use.
type Window struct {
	mu       sync.Mutex
	from, to time.Time // zero until the window opens
	warm     time.Time // the warm-up's end: the earliest from
	latest   time.Time // the window opens by then whoever is still waiting
	d        time.Duration
	started  []bool
	waiting  int // devices without a first token
	tokens   []int
}

// NewWindow is the window of a run of devices devices started at start: it
// opens at start+warmup at the earliest, start+warmup+settle at the latest,
// and lasts d.
func NewWindow(devices int, start time.Time, warmup, settle, d time.Duration) *Window {
	w := &Window{warm: start.Add(warmup), latest: start.Add(warmup + settle), d: d, started: make([]bool, devices), waiting: devices, tokens: make([]int, devices)}
	if devices == 0 {
		w.open(w.warm)
	}
	return w
}

func (w *Window) open(t time.Time) {
	w.from = t
	if t.Before(w.warm) {
		w.from = w.warm
	}
	w.to = w.from.Add(w.d)
}

// Add records n tokens of device i arriving at t (n 0: a round that brought
// none, which does not count as a first token); it reports whether t is
// before the window's end.
func (w *Window) Add(i, n int, t time.Time) bool {
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

// In reports whether t is within the window (false before it opens).
func (w *Window) In(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.from.IsZero() && !t.Before(w.from) && t.Before(w.to)
}

// Over reports whether the window has opened and t is at or past its end.
func (w *Window) Over(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.from.IsZero() && !t.Before(w.to)
}

// Span is the window, both zero if it never opened.
func (w *Window) Span() (from, to time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.from, w.to
}

// Tokens is each device's count within the window.
func (w *Window) Tokens() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.tokens...)
}
