package goodput

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestCurveMs(t *testing.T) {
	c := Curve{{Tokens: 4, Ms: 40}, {Tokens: 16, Ms: 100}, {Tokens: 64, Ms: 400}}
	cases := map[int]float64{
		0: 0, 2: 20, 4: 40, // below the first point: in proportion
		10: 70,           // interpolated
		64: 400, 80: 500, // beyond: the last slope (300/48 per token)
	}
	for tok, want := range cases {
		if got, ok := c.Ms(tok); !ok || math.Abs(got-want) > 1e-9 {
			t.Errorf("Ms(%d) = %v %v, want %v", tok, got, ok, want)
		}
	}
	if _, ok := (Curve{}).Ms(3); ok {
		t.Error("an empty curve estimated a cost")
	}
	if got, _ := (Curve{{Tokens: 8, Ms: 80}}).Ms(16); got != 160 {
		t.Errorf("one point: Ms(16) = %v, want 160 (in proportion)", got)
	}
}

func TestEstimatorLearnsCurve(t *testing.T) {
	e := NewEstimator(EstimatorConfig{})
	truth := func(n int) time.Duration { // concave then linear
		ms := 10 + 5*math.Min(float64(n), 16) + 2*math.Max(float64(n-16), 0)
		return time.Duration(ms * float64(time.Millisecond))
	}
	for range 50 {
		for _, n := range []int{1, 3, 8, 16, 40, 100} {
			e.Observe(n, truth(n))
		}
	}
	c := e.Curve()
	for i := 1; i < len(c); i++ {
		if c[i].Tokens <= c[i-1].Tokens || c[i].Ms < c[i-1].Ms {
			t.Fatalf("curve not ascending: %v", c)
		}
	}
	for _, n := range []int{1, 8, 16, 100} {
		got, _ := c.Ms(n)
		want := float64(truth(n)) / float64(time.Millisecond)
		if math.Abs(got-want) > 0.02*want {
			t.Errorf("Ms(%d) = %.2f, truth %.2f", n, got, want)
		}
	}
	e.Observe(0, time.Second) // ignored
	e.Observe(5, 0)           // ignored
	if e.Passes() != 300 {
		t.Errorf("passes %d, want 300", e.Passes())
	}
	// A slower server is followed within tens of passes.
	for range 30 {
		e.Observe(16, 2*truth(16))
	}
	if got, _ := e.Curve().Ms(16); got < 1.9*float64(truth(16))/float64(time.Millisecond) {
		t.Errorf("after the server slowed down Ms(16) = %.1f", got)
	}
	e.ObserveOverhead(3 * time.Millisecond)
	if e.OverheadMs() != 3 {
		t.Errorf("overhead %v", e.OverheadMs())
	}
}

func TestAcceptance(t *testing.T) {
	var a Acceptance
	if r := a.Rates(3); r[0] != DefaultPrior || r[2] != DefaultPrior {
		t.Errorf("prior rates %v", r)
	}
	// Rounds of 4 drafts: position 0 always accepted, position 1 half the time,
	// nothing after.
	for i := range 200 {
		acc := 1
		if i%2 == 0 {
			acc = 2
		}
		a.Observe(4, acc)
	}
	r := a.Rates(5)
	if r[0] < 0.95 || math.Abs(r[1]-0.5) > 0.1 || r[2] > 0.1 {
		t.Errorf("rates %v, want about [1 0.5 0 ...]", r)
	}
	// Position 4 was never reached: it takes position 3's estimate.
	if r[4] != r[3] {
		t.Errorf("unreached position %v, want %v", r[4], r[3])
	}
	if m := a.Mean(4); math.Abs(m-1.5) > 0.1 {
		t.Errorf("mean %v, want about 1.5", m)
	}
}

func TestTrackerProbes(t *testing.T) {
	e := NewEstimator(EstimatorConfig{})
	for range 5 {
		e.Observe(4, 80*time.Millisecond) // compute-bound: 20 ms a token
		e.Observe(40, 800*time.Millisecond)
	}
	tr := NewTracker(e, TrackerConfig{Policy: Policy{ProbeEvery: 4, ProbeMax: 16}})
	now := time.Unix(0, 0)
	var probes []int
	for i := range 70 {
		now = now.Add(100 * time.Millisecond)
		plan := tr.Plan([]Round{{Device: "a", Drafted: 2, Accepted: 0, Arrived: now}, {Device: "b", Arrived: now}}, now)
		switch plan.Budgets[0] {
		case DefaultProbeLen:
			probes = append(probes, i+1)
		case 0:
		default:
			t.Fatalf("round %d: budget %d", i+1, plan.Budgets[0])
		}
	}
	// Every 4th round a probe; each probe that leaves the budget at 0
	// doubles the interval (every 8th, 16th), which ProbeMax then holds.
	if want := []int{4, 12, 28, 44, 60}; !slices.Equal(probes, want) {
		t.Fatalf("probes at rounds %v, want %v", probes, want)
	}
	if m, ok := tr.Acceptance("a", 2); !ok || m > 0.2 {
		t.Errorf("acceptance of a %v %v", m, ok)
	}
	// Once drafts pay (cheap passes, every token accepted), the policy gives
	// budgets itself, and when it returns to 0 the probes come at ProbeEvery
	// again.
	cheap := NewEstimator(EstimatorConfig{})
	for range 5 {
		cheap.Observe(1, 20*time.Millisecond)
		cheap.Observe(64, 21*time.Millisecond)
	}
	tr2 := NewTracker(cheap, TrackerConfig{Policy: Policy{ProbeEvery: 4, ProbeMax: 16}})
	for range 40 { // long at 0: the interval grows to 16
		now = now.Add(100 * time.Millisecond)
		tr2.Plan([]Round{{Device: "a", Drafted: 8, Accepted: 0, Arrived: now}}, now)
	}
	for range 20 { // drafts accepted: budgets above 0
		now = now.Add(100 * time.Millisecond)
		if p := tr2.Plan([]Round{{Device: "a", Drafted: 8, Accepted: 8, Arrived: now}}, now); p.Budgets[0] == 0 {
			t.Fatal("budget 0 for a device whose drafts are all accepted on a flat cost curve")
		}
	}
	for range 50 { // passes turn compute-bound
		cheap.Observe(1, 20*time.Millisecond)
		cheap.Observe(64, 1280*time.Millisecond)
	}
	// Nothing accepted again: once the policy is back at 0, the first probe
	// comes after ProbeEvery-1 rounds at 0, not the grown interval.
	zeros, back := 0, false
	for range 200 {
		now = now.Add(100 * time.Millisecond)
		p := tr2.Plan([]Round{{Device: "a", Drafted: 8, Accepted: 0, Arrived: now}}, now)
		if p.Budgets[0] == 0 {
			back = true
			zeros++
		} else if back {
			break
		}
	}
	if zeros != 3 {
		t.Errorf("back at budget 0, a probe after %d rounds at 0, want ProbeEvery-1 (3)", zeros)
	}
	if !back {
		t.Fatal("the budget never fell back to 0")
	}
}

func TestTrackerForgetsOldest(t *testing.T) {
	tr := NewTracker(NewEstimator(EstimatorConfig{}), TrackerConfig{MaxDevices: 2})
	for i, id := range []string{"a", "b", "c"} {
		at := time.Unix(int64(i), 0)
		tr.Plan([]Round{{Device: id, Arrived: at}}, at)
	}
	if _, ok := tr.Acceptance("a", 1); ok {
		t.Error("the oldest device was kept beyond MaxDevices")
	}
	if _, ok := tr.Acceptance("c", 1); !ok {
		t.Error("the newest device was forgotten")
	}
}

// A probe is sent only when what it may measure could change the budget:
// on a compute-bound pass where a device whose rounds the server runs would
// lose by drafting even were every token accepted, none is sent; on a flat
// curve the same fleet is probed at ProbeEvery.
func TestTrackerProbesOnlyWhenWorthIt(t *testing.T) {
	run := func(fixedMs, perTokenMs float64) (probes int) {
		e := NewEstimator(EstimatorConfig{})
		for range 5 {
			for _, n := range []int{1, 2, 4, 8, 16, 32} {
				e.Observe(n, time.Duration((fixedMs+perTokenMs*float64(n))*float64(time.Millisecond)))
			}
		}
		tr := NewTracker(e, TrackerConfig{Policy: Policy{ProbeEvery: 4}})
		now := time.Unix(0, 0)
		for range 100 {
			now = now.Add(100 * time.Millisecond)
			plan := tr.Plan([]Round{
				{Device: "a", Arrived: now, ByServer: true, ServerRounds: true},
				{Device: "b", Arrived: now, ByServer: true, ServerRounds: true},
			}, now)
			for _, b := range plan.Budgets {
				if b > 0 {
					probes++
				}
			}
		}
		return probes
	}
	if n := run(10, 20); n != 0 {
		t.Errorf("compute-bound pass: %d probe rounds, want none", n)
	}
	if n := run(20, 0.01); n == 0 {
		t.Error("flat pass: no probes, want one every few rounds")
	}
}

// A pass with prefill (a prompt) teaches the curve only while it has nothing
// else; the first pass without drops what prefill taught, and later prefill
// passes leave the curve alone.
func TestEstimatorLeavesOutPrefill(t *testing.T) {
	e := NewEstimator(EstimatorConfig{})
	e.ObservePass(64, 48, 200*time.Millisecond) // a prompt and 16 rounds
	if ms, ok := e.Curve().Ms(64); !ok || ms != 200 {
		t.Fatalf("a prefill pass on an empty curve: %.1f %v, want 200 ms", ms, ok)
	}
	e.Observe(16, 190*time.Millisecond)
	if c := e.Curve(); len(c) != 1 || c[0].Tokens != 16 {
		t.Fatalf("after a pass without prefill the curve is %v, want that pass alone", c)
	}
	e.ObservePass(64, 48, 200*time.Millisecond)
	if c := e.Curve(); len(c) != 1 {
		t.Errorf("a prefill pass changed a curve learned from rounds: %v", c)
	}
	e.Observe(40, 500*time.Millisecond) // rounds with drafts
	if ms, _ := e.Curve().Ms(40); ms != 500 {
		t.Errorf("ms(40) = %.1f, want the observed 500", ms)
	}
}
