package goodput

import (
	"slices"
	"time"
)

// Arrival is a round a server expects: a device it has answered whose next
// round has not reached it yet (see Tracker.Pending).
type Arrival struct {
	// At is when the round is expected to reach the server.
	At time.Time
	// Tokens is what the round will carry: its budget and its committed token.
	Tokens int
}

// Gather decides how long a free server holding queued tokens of drafts waits
// before it runs them, for rounds it expects (expected) to join the same
// pass. It returns 0 to run now.
//
// A pass costs a fixed part (on a CPU, reading every weight once; on a GPU,
// launching the kernels) beside what its tokens cost. Where a fleet's rounds
// come back in two waves, one answered while the other's pass ran, running
// each wave as soon as the server frees splits the fleet into two passes
// that pay the fixed part twice, for good: each wave comes back while the
// other's pass runs. Waiting w for a wave to join saves a whole pass,
// cost(queued) + cost(wave) + overheadMs - cost(queued + wave), and costs w
// of idle server. Gather waits for the wave (every expected round that
// arrives by some time) whose saving exceeds its wait by the most, no longer
// than limit (the queued drafts' slack, or a bound); none: it runs now.
// Expected rounds already due count as arriving now: a late round is never
// waited for beyond its expected time.
//
// The saving and the wait are both server time, so with the server the
// bottleneck Gather never lowers throughput by its own estimates; the queued
// drafts wait w longer and the wave's are served a pass earlier.
func Gather(now time.Time, queued int, expected []Arrival, cost CostFunc, overheadMs float64, limit time.Duration) time.Duration {
	if queued <= 0 || len(expected) == 0 || limit <= 0 {
		return 0
	}
	cq, ok := cost(queued)
	if !ok {
		return 0
	}
	arr := slices.Clone(expected)
	slices.SortFunc(arr, func(a, b Arrival) int { return a.At.Compare(b.At) })
	best, bestGain := time.Duration(0), 0.0
	wave := 0
	for i, a := range arr {
		wave += max(a.Tokens, 1)
		if i+1 < len(arr) && !arr[i+1].At.After(a.At) {
			continue // the wave ends with its last round due at the same time
		}
		wait := max(a.At.Sub(now), 0)
		if wait > limit {
			break
		}
		cw, _ := cost(wave)
		cm, _ := cost(queued + wave)
		gain := cq + cw + overheadMs - cm - float64(wait)/float64(time.Millisecond)
		if gain > bestGain {
			best, bestGain = wait, gain
		}
	}
	return best
}
