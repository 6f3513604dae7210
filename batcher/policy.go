// Package batcher turns a pool's stream of drafts into verification batches: it
// decides when a batch closes (Policy), which verifier worker gets each session
// (Router), and runs both over NATS JetStream (Batcher).
package batcher

import (
	"math"
	"time"
)

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
	// SLO makes batching aware of the devices' latency objectives: a queue
	// whose drafts carry due times (events.DraftReady.Due) closes when waiting
	// longer would make one of them miss it (its slack, the earliest due less
	// the pass's estimated cost, is gone), and otherwise waits to fill, up to
	// SLOMaxWait instead of MaxWait. A queue without due times closes as
	// without SLO.
	SLO bool
	// SLOMaxWait bounds an SLO-aware batch's wait. Default 50ms.
	SLOMaxWait time.Duration
}

// Defaults of Policy.
const (
	DefaultSize       = 8
	DefaultMaxWait    = time.Millisecond
	DefaultSLOMaxWait = 50 * time.Millisecond
)

// NoSlack is the slack of a queue none of whose drafts has a due time.
const NoSlack = time.Duration(math.MaxInt64)

// Batch close reasons, carried in verify.batch's policy field.
const (
	ReasonSize     = "size"     // the batch reached Size
	ReasonAll      = "all"      // every active device has a draft in the batch
	ReasonDeadline = "deadline" // the oldest draft waited MaxWait (or SLOMaxWait)
	ReasonSLO      = "slo"      // waiting longer would make a draft miss its due time
)

// WithDefaults fills zero fields.
func (p Policy) WithDefaults() Policy {
	if p.Size <= 0 {
		p.Size = DefaultSize
	}
	if p.MaxWait <= 0 {
		p.MaxWait = DefaultMaxWait
	}
	if p.SLOMaxWait <= 0 {
		p.SLOMaxWait = DefaultSLOMaxWait
	}
	return p
}

// Slack is how long a queue may still wait before one of its drafts would
// miss its due time: the earliest due, less now, less the estimated time of
// the pass that verifies the batch and of the result's way back (passMs). A
// queue with no due time has NoSlack.
func Slack(now time.Time, dues []time.Time, passMs float64) time.Duration {
	earliest := time.Time{}
	for _, d := range dues {
		if !d.IsZero() && (earliest.IsZero() || d.Before(earliest)) {
			earliest = d
		}
	}
	if earliest.IsZero() {
		return NoSlack
	}
	return earliest.Sub(now) - time.Duration(passMs*float64(time.Millisecond))
}

// Queue is what Decide knows of a queue of drafts waiting for a batch.
type Queue struct {
	// Drafts waiting.
	Drafts int
	// Active is the number of devices that sent a draft recently (0 if
	// unknown).
	Active int
	// Age is how long the oldest draft has waited.
	Age time.Duration
	// Slack is the queue's Slack (NoSlack without due times; used with SLO
	// only).
	Slack time.Duration
	// Pass is the estimated time of the pass over the queue's drafts (0 if
	// unknown; used with SLO only).
	Pass time.Duration
}

// Decide says whether q closes now, with the reason; otherwise it says how
// long until it must be looked at again.
//
// With SLO a queue waits for the rest of the active fleet up to SLOMaxWait,
// and no longer than its estimated pass (a draft that misses this batch
// waits a whole pass for the next, and costs one of its own) or its slack.
func (p Policy) Decide(q Queue) (close bool, reason string, wait time.Duration) {
	maxWait := p.MaxWait
	if p.SLO {
		maxWait = p.SLOMaxWait
		if q.Pass > 0 {
			maxWait = min(maxWait, max(q.Pass, p.MaxWait))
		}
	}
	slo := p.SLO && q.Slack != NoSlack
	switch {
	case q.Drafts == 0:
		return false, "", p.MaxWait
	case q.Drafts >= p.Size:
		return true, ReasonSize, 0
	case !p.NoEarlyClose && q.Active > 0 && q.Drafts >= q.Active:
		return true, ReasonAll, 0
	case slo && q.Slack <= 0:
		return true, ReasonSLO, 0
	case q.Age >= maxWait:
		return true, ReasonDeadline, 0
	}
	wait = maxWait - q.Age
	if slo {
		wait = min(wait, q.Slack)
	}
	return false, "", wait
}

// Drain splits q into the batches that close now, largest first, by Decide:
// the first with q as it is, each later one only when full (its drafts have
// just been looked at, so only Size can close it). It returns the batch
// sizes, the reason the first batch closed (every later one closes by
// ReasonSize), and, when drafts stay queued, how long until the queue must be
// looked at again (from Decide). Both batcher.Batcher and the simulator
// (bench/sim) close batches with it.
func (p Policy) Drain(q Queue) (sizes []int, reason string, wait time.Duration) {
	ok, reason, wait := p.Decide(q)
	first := reason
	n := q.Drafts
	for ok {
		k := min(n, p.Size)
		sizes = append(sizes, k)
		n -= k
		ok, _, wait = p.Decide(Queue{Drafts: n, Slack: NoSlack})
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
