package goodput

import (
	"testing"
	"time"
)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func wave(now time.Time, after time.Duration, n, tokens int) []Arrival {
	a := make([]Arrival, n)
	for i := range a {
		a[i] = Arrival{At: now.Add(after), Tokens: tokens}
	}
	return a
}

// A pass with a large fixed part (a CPU reading every weight once): a wave of
// 20 rounds due in 10 ms saves a whole 30 ms pass, so the server waits for it.
func TestGatherWaitsForAWaveThatSavesAPass(t *testing.T) {
	now := time.Unix(100, 0)
	got := Gather(now, 20, wave(now, ms(10), 20, 1), linear(30, 1), 0, ms(50))
	if got != ms(10) {
		t.Errorf("wait %v, want 10ms (until the wave is due)", got)
	}
}

// Waiting longer than the pass it saves costs the server more than it gains:
// run now.
func TestGatherRunsNowWhenTheWaveIsFartherThanAPass(t *testing.T) {
	now := time.Unix(100, 0)
	if got := Gather(now, 20, wave(now, ms(35), 20, 1), linear(30, 1), 0, ms(50)); got != 0 {
		t.Errorf("wait %v for a wave 35 ms away that saves 30 ms, want 0", got)
	}
	// Compute-bound (no fixed part): merging saves nothing.
	if got := Gather(now, 20, wave(now, ms(1), 20, 1), linear(0, 2), 0, ms(50)); got != 0 {
		t.Errorf("wait %v with a linear pass cost, want 0", got)
	}
}

// The per-pass overhead (publishing results) is saved too.
func TestGatherCountsTheOverhead(t *testing.T) {
	now := time.Unix(100, 0)
	if got := Gather(now, 20, wave(now, ms(5), 20, 1), linear(0, 2), 8, ms(50)); got != ms(5) {
		t.Errorf("wait %v, want 5ms: the 8 ms overhead of a second pass exceeds the wait", got)
	}
}

// The limit (a queued draft's slack, or WorkerConfig.GatherMax) is never
// exceeded, and without it, rounds, queued drafts or a cost curve there is no
// wait.
func TestGatherLimits(t *testing.T) {
	now := time.Unix(100, 0)
	w := wave(now, ms(10), 20, 1)
	if got := Gather(now, 20, w, linear(30, 1), 0, ms(9)); got != 0 {
		t.Errorf("wait %v past a 9 ms limit", got)
	}
	none := func(int) (float64, bool) { return 0, false }
	for name, got := range map[string]time.Duration{
		"no limit":    Gather(now, 20, w, linear(30, 1), 0, 0),
		"no arrivals": Gather(now, 20, nil, linear(30, 1), 0, ms(50)),
		"no queue":    Gather(now, 0, w, linear(30, 1), 0, ms(50)),
		"no curve":    Gather(now, 20, w, none, 0, ms(50)),
	} {
		if got != 0 {
			t.Errorf("%s: wait %v, want 0", name, got)
		}
	}
}

// Of two waves, the one that saves the most net of its wait is chosen: with
// a linear cost every wave saves one fixed part, so the nearest; a wave that
// the queue alone is not worth waiting for may still be, with a nearer one.
func TestGatherPicksTheBestWave(t *testing.T) {
	now := time.Unix(100, 0)
	near := wave(now, ms(4), 10, 1)
	far := wave(now, ms(40), 10, 1)
	if got := Gather(now, 10, append(near, far...), linear(30, 1), 0, ms(100)); got != ms(4) {
		t.Errorf("wait %v, want 4ms: the far wave saves no more than the near one but costs 36 ms more", got)
	}
	// A concave cost (20 ms for 16 tokens, 30 for 64): a lone round due in
	// 2 ms saves less than its wait, the 60 rounds due in 12 ms most of a
	// pass.
	curve := Curve{{Tokens: 16, Ms: 20}, {Tokens: 64, Ms: 30}}
	few := wave(now, ms(2), 1, 1)
	many := wave(now, ms(12), 59, 1)
	if got := Gather(now, 16, append(few, many...), curve.Ms, 0, ms(100)); got != ms(12) {
		t.Errorf("wait %v, want 12ms (the wave that fills the pass)", got)
	}
}

// Rounds already due count as arriving now: a late one never makes the
// server wait.
func TestGatherNeverWaitsForLateRounds(t *testing.T) {
	now := time.Unix(100, 0)
	late := wave(now, -ms(5), 20, 1)
	if got := Gather(now, 20, late, linear(30, 1), 0, ms(50)); got != 0 {
		t.Errorf("wait %v for rounds 5 ms overdue, want 0", got)
	}
}

// The tracker expects every device it answered back after its time outside
// the server, until its round arrives; rounds long overdue are dropped.
func TestTrackerPending(t *testing.T) {
	tr := NewTracker(NewEstimator(EstimatorConfig{}), TrackerConfig{Policy: Policy{Static: true}})
	t0 := time.Unix(100, 0)
	// Two rounds each: the second teaches the outside time (20 ms).
	tr.Plan([]Round{{Device: "a", Arrived: t0}, {Device: "b", Arrived: t0}}, t0.Add(ms(10)))
	tr.Plan([]Round{{Device: "a", Arrived: t0.Add(ms(30))}, {Device: "b", Arrived: t0.Add(ms(30))}}, t0.Add(ms(40)))
	p := tr.Pending(t0.Add(ms(41)))
	if len(p) != 2 {
		t.Fatalf("pending %v, want a and b", p)
	}
	for _, a := range p {
		if want := t0.Add(ms(60)); !a.At.Equal(want) || a.Tokens != DefaultMaxBudget+1 {
			t.Errorf("arrival %+v, want at %v with %d tokens", a, want, DefaultMaxBudget+1)
		}
	}
	tr.Arrived("a")
	if p := tr.Pending(t0.Add(ms(50))); len(p) != 1 {
		t.Errorf("pending after a arrived: %v, want b alone", p)
	}
	if p := tr.Pending(t0.Add(ms(60) + 2*time.Second)); len(p) != 0 {
		t.Errorf("pending 2 s after due: %v, want none", p)
	}
}

// Tracker.Gather waits for the devices it answered, but no longer than
// maxWait since the server freed nor past a queued draft's due time less the
// queued pass.
func TestTrackerGatherLimits(t *testing.T) {
	est := NewEstimator(EstimatorConfig{})
	for range 5 {
		est.Observe(20, ms(50)) // 50 ms for 20 tokens
		est.Observe(40, ms(60)) // 60 ms for 40: a large fixed part
	}
	tr := NewTracker(est, TrackerConfig{Policy: Policy{Static: true}})
	t0 := time.Unix(100, 0)
	var rounds []Round
	for i := range 20 {
		rounds = append(rounds, Round{Device: string(rune('a' + i)), Arrived: t0})
	}
	tr.Plan(rounds, t0.Add(ms(10)))
	for i := range rounds {
		rounds[i].Arrived = t0.Add(ms(20)) // 10 ms outside the server
	}
	tr.Plan(rounds, t0.Add(ms(30)))
	// They carry MaxBudget+1 = 9 tokens each: 180 tokens due at 40 ms.
	now := t0.Add(ms(30))
	if got := tr.Gather(now, now, 20, time.Time{}, ms(50)); got != ms(10) {
		t.Errorf("wait %v, want 10ms (until the answered devices are due)", got)
	}
	if got := tr.Gather(now, now.Add(-ms(45)), 20, time.Time{}, ms(50)); got != 0 {
		t.Errorf("wait %v with 5 ms left of maxWait, want 0", got)
	}
	// A queued draft due in 55 ms, its pass estimated at 50: 5 ms of slack.
	if got := tr.Gather(now, now, 20, now.Add(ms(55)), ms(50)); got != 0 {
		t.Errorf("wait %v past a queued draft's slack, want 0", got)
	}
}
