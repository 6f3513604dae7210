package goodput

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/sled-project/sled/schemas"
)

func linear(fixed, perToken float64) CostFunc {
	return func(t int) (float64, bool) { return fixed + perToken*float64(t), true }
}

func flat(rate float64, n int) []float64 {
	a := make([]float64, n)
	for i := range a {
		a[i] = rate
	}
	return a
}

func fleet(n int, rate float64) []Device {
	d := make([]Device, n)
	for i := range d {
		d[i] = Device{Accept: flat(rate, DefaultMaxBudget)}
	}
	return d
}

// A compute-bound server (cost in proportion to tokens) with drafts that are
// rarely accepted: every draft token costs what a committed one does and
// returns less, so speculation stops.
func TestBudgetZeroWhenLinearAndLowAcceptance(t *testing.T) {
	plan := Policy{}.Choose(fleet(8, 0.35), linear(0, 20), 0)
	for i, b := range plan.Budgets {
		if b != 0 {
			t.Errorf("device %d budget %d, want 0 (plan %+v)", i, b, plan)
		}
	}
	if plan.Tokens != 8 || plan.Reason != ReasonGoodput {
		t.Errorf("plan %+v", plan)
	}
}

// A memory-bound server (a pass over 72 tokens costs little more than over 8)
// with good drafts: every device drafts as far as it may.
func TestBudgetMaxWhenPassesAreCheap(t *testing.T) {
	plan := Policy{}.Choose(fleet(8, 0.8), linear(30, 0.05), 0)
	for i, b := range plan.Budgets {
		if b != DefaultMaxBudget {
			t.Errorf("device %d budget %d, want %d", i, b, DefaultMaxBudget)
		}
	}
}

// Between the two, the budget follows each device's acceptance.
func TestBudgetFollowsAcceptance(t *testing.T) {
	devs := []Device{{Accept: flat(0.9, 8)}, {Accept: flat(0.3, 8)}}
	plan := Policy{}.Choose(devs, linear(40, 5), 0)
	if plan.Budgets[0] <= plan.Budgets[1] {
		t.Errorf("budgets %v: the device whose drafts are accepted more should draft more", plan.Budgets)
	}
	if plan.Budgets[0] == 0 {
		t.Errorf("budgets %v: a 0.9-acceptance device on a pass with a large fixed cost should speculate", plan.Budgets)
	}
}

// Choose's frontier search finds the goodput optimum that brute force over
// every combination of budgets finds, on a concave-then-linear curve like the
// real 1.5B target's on this CPU.
func TestChooseIsOptimal(t *testing.T) {
	cpu := func(t int) (float64, bool) { // ms per pass: 1 token 74, 16 tokens 350, then 21 ms per token
		if t <= 16 {
			return 74 + (350-74)*float64(t-1)/15, true
		}
		return 350 + 21*float64(t-16), true
	}
	accepts := [][]float64{{0.95, 0.9, 0.9, 0.85}, {0.6, 0.5, 0.4, 0.3}, {0.8, 0.8, 0.2, 0.1}}
	p := Policy{MaxBudget: 4}
	plan := p.Choose([]Device{{Accept: accepts[0]}, {Accept: accepts[1]}, {Accept: accepts[2]}}, cpu, 3)
	best := 0.0
	var bestK [3]int
	for a := 0; a <= 4; a++ {
		for b := 0; b <= 4; b++ {
			for c := 0; c <= 4; c++ {
				k := [3]int{a, b, c}
				tok, exp := 3, 3.0
				for i := range k {
					tok += k[i]
					exp += Expected(accepts[i], k[i])
				}
				ms, _ := cpu(tok)
				if g := exp / (ms + 3) * 1000; g > best {
					best, bestK = g, k
				}
			}
		}
	}
	if math.Abs(plan.Goodput-best) > 1e-9 {
		t.Errorf("Choose goodput %.4f (budgets %v), brute force %.4f (budgets %v)", plan.Goodput, plan.Budgets, best, bestK)
	}
}

// A device with a tight objective among devices whose drafts are long and
// good: goodput alone gives everyone long drafts and a long pass, which makes
// it miss its objective round after round; with its objective known, the
// policy shortens the pass until it is served within it. The loop runs rounds
// through a Tracker as a verifier does: each round's pass lasts what the plan
// says, and the device's time per output token is measured from the rounds.
func TestMissingDeviceGetsServed(t *testing.T) {
	cost := linear(20, 4)
	const tight = 60.0 // ms per output token: met only by passes under about 60 ms
	run := func(withObjective bool) (tpot float64) {
		tr := NewTracker(NewEstimator(EstimatorConfig{}), TrackerConfig{Policy: Policy{ProbeEvery: -1}})
		now := time.Unix(0, 0)
		budgets := make([]int, 8)
		for i := range budgets {
			budgets[i] = DefaultMaxBudget
		}
		var spent time.Duration
		var tokens int
		for round := range 200 {
			rounds := make([]Round, 8)
			passTokens := 0
			for i := range rounds {
				acc := 0.9
				if i == 0 {
					acc = 0.5
				}
				accepted := 0
				for accepted < budgets[i] && float64((round*7+i*3+accepted*5)%10)/10 < acc {
					accepted++
				}
				rounds[i] = Round{Device: string(rune('a' + i)), Drafted: budgets[i], Accepted: accepted, Arrived: now}
				if i == 0 && withObjective {
					rounds[i].TPOTMs = tight
				}
				passTokens += budgets[i] + 1
			}
			ms, _ := cost(passTokens)
			d := time.Duration(ms * float64(time.Millisecond))
			tr.Estimator().Observe(passTokens, d)
			now = now.Add(d)
			if round >= 100 { // after the estimates settled
				spent += d
				tokens += rounds[0].Accepted + 1
			}
			plan := tr.Plan(rounds, now)
			copy(budgets, plan.Budgets)
		}
		return float64(spent) / float64(time.Millisecond) / float64(tokens)
	}
	without, with := run(false), run(true)
	t.Logf("tight device: %.1f ms per token by goodput alone, %.1f with its objective of %.0f", without, with, tight)
	if without <= tight {
		t.Fatalf("the scenario does not make the device miss (%.1f ms per token <= %.0f)", without, tight)
	}
	if with > tight {
		t.Errorf("with its objective the device gets %.1f ms per token, objective %.0f", with, tight)
	}
}

// A device that no pass can serve in time gives way: its budget is cut before
// those of the devices that can still meet theirs.
func TestHopelessDeviceCutFirst(t *testing.T) {
	devs := []Device{
		{Accept: flat(0.9, 8), TPOTMs: 1, ExternalMs: 500}, // can never be met
		{Accept: flat(0.9, 8), TPOTMs: 20},
		{Accept: flat(0.9, 8)},
	}
	plan := Policy{}.Choose(devs, linear(30, 3), 0)
	if plan.Budgets[0] > plan.Budgets[1] || plan.Budgets[0] > plan.Budgets[2] {
		t.Errorf("budgets %v: the hopeless device should be cut first", plan.Budgets)
	}
	if plan.Missed != 1 {
		t.Errorf("missed %d, want 1 (the hopeless device): %+v", plan.Missed, plan)
	}
}

func TestNoEstimateAndStatic(t *testing.T) {
	none := func(int) (float64, bool) { return 0, false }
	for _, c := range []struct {
		p      Policy
		cost   CostFunc
		reason string
	}{{Policy{}, none, ReasonNoEstimate}, {Policy{Static: true, MaxBudget: 5}, linear(0, 20), ReasonStatic}} {
		plan := c.p.Choose(fleet(3, 0.1), c.cost, 0)
		want := c.p.WithDefaults().MaxBudget
		for _, b := range plan.Budgets {
			if b != want {
				t.Errorf("%s: budgets %v, want all %d", c.reason, plan.Budgets, want)
			}
		}
		if plan.Reason != c.reason {
			t.Errorf("reason %q, want %q", plan.Reason, c.reason)
		}
	}
}

func TestMaxDraftTokensIsTheSchemas(t *testing.T) {
	if MaxDraftTokens != schemas.MaxDraftTokens {
		t.Fatalf("goodput.MaxDraftTokens %d, schemas.MaxDraftTokens %d", MaxDraftTokens, schemas.MaxDraftTokens)
	}
}

func TestPolicyDefaultsIdempotent(t *testing.T) {
	for _, p := range []Policy{{}, {MaxBudget: 100, ProbeLen: 90}, {ProbeEvery: -1}} {
		once := p.WithDefaults()
		if twice := once.WithDefaults(); twice != once {
			t.Errorf("%+v: %+v then %+v", p, once, twice)
		}
		if once.MaxBudget > MaxDraftTokens || once.ProbeLen > once.MaxBudget {
			t.Errorf("%+v: out of range %+v", p, once)
		}
	}
}

func TestExpected(t *testing.T) {
	a := []float64{0.5, 0.5, 1.5}
	cases := map[int]float64{0: 0, 1: 0.5, 2: 0.75, 3: 1.0, 9: 1.0}
	for k, want := range cases {
		if got := Expected(a, k); math.Abs(got-want) > 1e-12 {
			t.Errorf("Expected(%v, %d) = %v, want %v", a, k, got, want)
		}
	}
}

// On an idle server the devices' own time decides: a device that drafts
// slowly (and cannot draft while it waits) gets a shorter budget than a fast
// one with the same acceptance.
func TestSlowDrafterGetsShorterBudget(t *testing.T) {
	devs := []Device{
		{Accept: flat(0.8, 8), ExternalMs: 5, DraftMs: 1},   // drafts 1000 tokens/s
		{Accept: flat(0.8, 8), ExternalMs: 5, DraftMs: 150}, // drafts under 7 tokens/s
	}
	plan := Policy{}.Choose(devs, linear(30, 0.5), 0)
	if plan.Budgets[0] <= plan.Budgets[1] {
		t.Errorf("budgets %v: the fast drafter should get the longer budget", plan.Budgets)
	}
	if plan.Budgets[0] != DefaultMaxBudget {
		t.Errorf("budgets %v: a fast drafter on a nearly free pass should draft as far as it may", plan.Budgets)
	}
}

func TestLineFit(t *testing.T) {
	var f lineFit
	for i := range 100 {
		x := float64(i % 5)
		f.add(x, 20+50*x)
	}
	if a, b := f.line(); math.Abs(a-20) > 1e-6 || math.Abs(b-50) > 1e-6 {
		t.Errorf("line %v + %v x, want 20 + 50 x", a, b)
	}
	var one lineFit
	for range 10 {
		one.add(3, 70)
	}
	if a, b := one.line(); a != 70 || b != 0 {
		t.Errorf("rounds of one length: line %v + %v x, want 70 + 0 x", a, b)
	}
}

// A device whose budget-0 rounds the server runs itself (ServerRounds) pays
// no trip at budget 0, and a round of its own comes back to a server busy
// with the others' rounds: on a compute-bound server with a slow drafter and
// fair drafts it is held at 0, where the same device making every trip
// itself drafts (its trip is paid anyway, so drafts ride on it).
func TestServerRoundsTakeThePassAlone(t *testing.T) {
	mk := func(server bool) []Device {
		devs := fleet(16, 0.7)
		for i := range devs {
			devs[i].ExternalMs, devs[i].DraftMs, devs[i].ServerRounds = 30, 30, server
		}
		return devs
	}
	cost := linear(100, 4) // 16 one-token rounds: 164 ms, each draft token 4 more
	own := Policy{}.Choose(mk(false), cost, 0)
	served := Policy{}.Choose(mk(true), cost, 0)
	drafted := 0
	for i := range own.Budgets {
		drafted += own.Budgets[i]
		if served.Budgets[i] != 0 {
			t.Errorf("device %d with server rounds: budget %d, want 0 (plan %+v)", i, served.Budgets[i], served)
		}
	}
	if drafted == 0 {
		t.Errorf("devices making their own trips: budgets %v, want drafts riding on the trips", own.Budgets)
	}
	if served.Goodput <= own.Goodput {
		t.Errorf("server rounds plan %.1f tokens/s, own trips %.1f: budget 0 without the trip should be worth more", served.Goodput, own.Goodput)
	}
}

// mixedFleet is n devices of varied acceptance, trips and drafting speed,
// half of them letting the server run their budget-0 rounds.
func mixedFleet(n int) []Device {
	devs := make([]Device, n)
	x := uint64(88172645463325252)
	rnd := func() float64 { // xorshift: reproducible without math/rand
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		return float64(x%10000) / 10000
	}
	for i := range devs {
		acc := make([]float64, DefaultMaxBudget)
		for j := range acc {
			acc[j] = 0.3 + 0.65*rnd()
		}
		devs[i] = Device{Accept: acc, ExternalMs: 2 + 10*rnd(), DraftMs: 1 + 20*rnd(), ServerRounds: i%2 == 0}
	}
	return devs
}

// Beyond ExactDevices the search samples pass sizes and moves only the
// devices next to its cut; its plan must stay within 1% of the exhaustive
// search's goodput, on a cheap (GPU-like) and a compute-bound curve.
func TestChooseLargeFleetNearExhaustive(t *testing.T) {
	for _, c := range []struct {
		name string
		cost CostFunc
	}{{"sublinear", linear(20, 0.05)}, {"linear", linear(5, 1.5)}, {"knee", func(t int) (float64, bool) { return 10 + 0.02*float64(t) + 0.002*float64(t*t)/10, true }}} {
		for _, n := range []int{ExactDevices + 1, 300} {
			devs := mixedFleet(n)
			fast := Policy{}.Choose(devs, c.cost, 2)
			slow := Policy{}.choose(devs, c.cost, 2, n)
			t.Logf("%s, %d devices: sampled %.1f tokens/s (%d tokens), exhaustive %.1f (%d)", c.name, n, fast.Goodput, fast.Tokens, slow.Goodput, slow.Tokens)
			if fast.Goodput < 0.99*slow.Goodput {
				t.Errorf("%s, %d devices: sampled search %.2f tokens/s, exhaustive %.2f", c.name, n, fast.Goodput, slow.Goodput)
			}
		}
	}
}

// BenchmarkChoose is one plan for a fleet at each size: what the verifier
// pays per pass on its hot path.
//
//	go test -run '^$' -bench Choose ./goodput/
func BenchmarkChoose(b *testing.B) {
	for _, n := range []int{16, 64, 512, 4096} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			devs := mixedFleet(n)
			for range b.N {
				Policy{}.Choose(devs, linear(5, 1.5), 2)
			}
		})
	}
}

// WorthProbing: a device held at 0 whose drafts could not pay even were
// every token accepted is not worth a probe; on a cheap pass it is; without a
// cost curve the answer is yes (nothing is known yet); an index out of range
// or a device not at 0 is not probed.
func TestWorthProbing(t *testing.T) {
	devs := []Device{
		{Accept: flat(0.1, 8), ServerRounds: true, DraftMs: 30},
		{Accept: flat(0.1, 8), ServerRounds: true, DraftMs: 30},
	}
	zero := []int{0, 0}
	if got := (Policy{}).WorthProbing(devs, zero, []int{0, 1}, linear(10, 20), 0); got[0] || got[1] {
		t.Errorf("compute-bound pass and a slow drafter: %v, want no probe", got)
	}
	if got := (Policy{}).WorthProbing(devs, zero, []int{1}, linear(40, 0.05), 0); !got[0] {
		t.Error("a pass that costs little more with drafts: a probe may find acceptance that pays")
	}
	none := func(int) (float64, bool) { return 0, false }
	if got := (Policy{}).WorthProbing(devs, zero, []int{1}, none, 0); !got[0] {
		t.Error("no cost curve yet: probing is worth it")
	}
	if got := (Policy{}).WorthProbing(devs, []int{0, 3}, []int{2, 1}, linear(40, 0.05), 0); got[0] || got[1] {
		t.Errorf("out of range or not at 0: %v, want no probe", got)
	}
}
