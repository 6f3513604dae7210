// Package batcher turns a pool's stream of drafts into verification batches: it
// decides when a batch closes (Policy), which verifier worker gets each session
// (Router), and runs both over NATS JetStream (Batcher).
package batcher

import "time"

// Policy is static batching as in the SLED paper (a fixed batch size) closed early
// by a deadline, so a lone device is never stranded, and by the fleet's size: once
// every recently active device has a draft waiting, waiting longer cannot grow the
// batch (a device has one round in flight at a time), so it closes at once.
type Policy struct {
	// Size closes a batch when it holds this many drafts. Default 8.
	Size int
	// MaxWait closes a batch when its oldest draft has waited this long.
	// Default 1ms.
	MaxWait time.Duration
	// NoEarlyClose turns off closing when every active device is in the batch
	// (the paper's plain static batching).
	NoEarlyClose bool
}

// Defaults of Policy.
const (
	DefaultSize    = 8
	DefaultMaxWait = time.Millisecond
)

// Batch close reasons, carried in verify.batch's policy field.
const (
	ReasonSize     = "size"     // the batch reached Size
	ReasonAll      = "all"      // every active device has a draft in the batch
	ReasonDeadline = "deadline" // the oldest draft waited MaxWait
)

// WithDefaults fills zero fields.
func (p Policy) WithDefaults() Policy {
	if p.Size <= 0 {
		p.Size = DefaultSize
	}
	if p.MaxWait <= 0 {
		p.MaxWait = DefaultMaxWait
	}
	return p
}

// Decide says whether a queue of n drafts, the oldest waiting for age, closes now,
// with the reason; otherwise it says how long until it must be looked at again.
// active is the number of devices that sent a draft recently (0 if unknown).
func (p Policy) Decide(n, active int, age time.Duration) (close bool, reason string, wait time.Duration) {
	switch {
	case n == 0:
		return false, "", p.MaxWait
	case n >= p.Size:
		return true, ReasonSize, 0
	case !p.NoEarlyClose && active > 0 && n >= active:
		return true, ReasonAll, 0
	case age >= p.MaxWait:
		return true, ReasonDeadline, 0
	}
	return false, "", p.MaxWait - age
}

// Drain splits a queue of n drafts into the batches that close now, largest
// first, by Decide: the first with the fleet's active count and the oldest
// draft's age, each later one only when full (its drafts have just been
// looked at, so only Size can close it). It returns the batch sizes, the reason
// the first batch closed (every later one closes by ReasonSize), and, when
// drafts stay queued, how long until the queue must be looked at again (from
// Decide). Both batcher.Batcher and the
// simulator (bench/sim) close batches with it.
func (p Policy) Drain(n, active int, age time.Duration) (sizes []int, reason string, wait time.Duration) {
	ok, reason, wait := p.Decide(n, active, age)
	first := reason
	for ok {
		k := min(n, p.Size)
		sizes = append(sizes, k)
		n -= k
		ok, _, wait = p.Decide(n, 0, 0)
	}
	return sizes, first, wait
}

// Activity counts the devices that sent a draft within Window: the fleet size
// Policy's early close compares a queue with. A device with a round in flight
// is active; one whose session ended drops out after Window. The zero value is
// ready to use with a zero Window (nothing counts). Not safe for concurrent
// use. batcher.Batcher and the simulator (bench/sim) both count with it.
type Activity struct {
	Window time.Duration
	last   map[string]time.Time
}

// Seen records a draft from device at t.
func (a *Activity) Seen(device string, t time.Time) {
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	a.last[device] = t
}

// Count is the number of devices seen within Window before now; it forgets
// the others.
func (a *Activity) Count(now time.Time) int {
	n := 0
	for d, t := range a.last {
		if now.Sub(t) <= a.Window {
			n++
		} else {
			delete(a.last, d)
		}
	}
	return n
}
