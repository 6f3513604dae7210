package bench

import (
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
)

func TestPoissonStatistics(t *testing.T) {
	const rate, n = 20.0, 200000
	p := NewPoisson(rate, 7)
	var sum, sq float64
	for range n {
		g := p.Gap().Seconds()
		sum += g
		sq += g * g
	}
	mean := sum / n
	variance := sq/n - mean*mean
	// Exponential of rate λ: mean 1/λ, variance 1/λ². Standard error of the mean
	// is (1/λ)/sqrt(n) ≈ 0.0001 s; allow 5 of them.
	if math.Abs(mean-1/rate) > 5*(1/rate)/math.Sqrt(n) {
		t.Errorf("mean gap %.5f s, want %.5f", mean, 1/rate)
	}
	if math.Abs(variance-1/(rate*rate))/(1/(rate*rate)) > 0.03 {
		t.Errorf("variance %.6f, want %.6f", variance, 1/(rate*rate))
	}
	// Counts in unit windows of a Poisson process have mean = variance = rate.
	q := NewPoisson(rate, 8)
	var at time.Duration
	counts := make([]float64, 2000)
	for {
		at += q.Gap()
		w := int(at / time.Second)
		if w >= len(counts) {
			break
		}
		counts[w]++
	}
	var cs, cq float64
	for _, c := range counts {
		cs += c
		cq += c * c
	}
	cm := cs / float64(len(counts))
	cv := cq/float64(len(counts)) - cm*cm
	if math.Abs(cm-rate) > 0.5 || math.Abs(cv-rate) > 2.5 {
		t.Errorf("window counts mean %.2f variance %.2f, want both %.0f", cm, cv, rate)
	}
	// Gaps(k) is Erlang-k: mean k/λ.
	r := NewPoisson(rate, 9)
	sum = 0
	for range 20000 {
		sum += r.Gaps(4).Seconds()
	}
	if m := sum / 20000; math.Abs(m-4/rate) > 0.005 {
		t.Errorf("Gaps(4) mean %.4f, want %.4f", m, 4/rate)
	}
}

func TestRoundAt(t *testing.T) {
	tr := Trace{
		Agree: []bool{true, true, false, true, true, true},
		Conf:  []float32{0.9, 0.8, 0.3, 0.9, 0.9, 0.1},
	}
	for _, c := range []struct {
		p    int
		pol  drafter.DraftPolicy
		want Round
	}{
		{0, drafter.DraftPolicy{Threshold: 0.5, MaxLen: 8}, Round{2, 2}},  // stops at conf 0.3
		{0, drafter.DraftPolicy{Fixed: true, MaxLen: 4}, Round{4, 2}},     // fixed 4; rejected at 2
		{2, drafter.DraftPolicy{Threshold: 0.5, MaxLen: 8}, Round{3, 0}},  // MinLen 1 drafts despite 0.3, then 0.9, 0.9
		{3, drafter.DraftPolicy{Threshold: 0.5, MaxLen: 8}, Round{2, 2}},  // stops at 0.1
		{3, drafter.DraftPolicy{Fixed: true, MaxLen: 8}, Round{3, 3}},     // trace end
		{4, drafter.DraftPolicy{Threshold: 0.05, MaxLen: 1}, Round{1, 1}}, // max length
	} {
		if got := tr.RoundAt(c.p, c.pol.WithDefaults()); got != c.want {
			t.Errorf("RoundAt(%d, %+v) = %+v, want %+v", c.p, c.pol, got, c.want)
		}
	}
}

func TestSamplerMatchesSummary(t *testing.T) {
	a := &Acceptance{Traces: []Trace{
		{Agree: []bool{true, false, true, true}, Conf: []float32{0.9, 0.5, 0.9, 0.2}},
		{Agree: []bool{false, true}, Conf: []float32{0.6, 0.7}},
	}}
	pol := drafter.DraftPolicy{Threshold: 0.4, MaxLen: 3}
	sum := a.Summary(pol)
	s := NewSampler(a, pol, 3)
	const n = 60000
	hist := make([]float64, 4)
	var lenSum float64
	for range n {
		r := s.Sample()
		if r.Len < 1 || r.Accepted > r.Len {
			t.Fatalf("bad round %+v", r)
		}
		hist[r.Accepted]++
		lenSum += float64(r.Len)
	}
	for m := range hist {
		if got := hist[m] / n; math.Abs(got-sum.AcceptedHist[m]) > 0.01 {
			t.Errorf("P(accepted=%d) sampled %.3f, exact %.3f", m, got, sum.AcceptedHist[m])
		}
	}
	if math.Abs(lenSum/n-sum.MeanLen) > 0.02 {
		t.Errorf("mean length sampled %.3f, exact %.3f", lenSum/n, sum.MeanLen)
	}
}

func TestCostModel(t *testing.T) {
	c := CostModel{}.WithDefaults()
	p := Profile{PriceUSD: 55, PowerW: 6.4}
	// 55 / (3*8760*0.7) = 0.0029897 $/h; 6.4 W * 0.083 $/kWh = 0.0005312 $/h.
	want := 55/(3*8760*0.7) + 0.0064*0.083
	if got := c.DeviceUSDPerHour(p); math.Abs(got-want) > 1e-12 {
		t.Errorf("device $/h = %v, want %v", got, want)
	}
	// 16 devices + a $0.10/h server at 137 tokens/s.
	perHour := 16*want + 0.10
	if got, w := c.USDPer1K(p, 16, 137), perHour/(137*3600)*1000; math.Abs(got-w) > 1e-12 {
		t.Errorf("$/1K = %v, want %v", got, w)
	}
	if c.USDPer1K(p, 16, 0) != 0 {
		t.Error("zero throughput must price at 0 (undefined), not Inf")
	}
}

func TestMarkPareto(t *testing.T) {
	ps := []Point{
		{Label: "a", TokensPerSec: 100, USDPer1K: 1},
		{Label: "b", TokensPerSec: 200, USDPer1K: 2},
		{Label: "c", TokensPerSec: 150, USDPer1K: 3}, // beaten by b
		{Label: "d", TokensPerSec: 50, USDPer1K: 1},  // beaten by a
		{Label: "e", TokensPerSec: 300, USDPer1K: 5},
	}
	MarkPareto(ps)
	want := map[string]bool{"a": true, "b": true, "c": false, "d": false, "e": true}
	for _, p := range ps {
		if p.Pareto != want[p.Label] {
			t.Errorf("%s: pareto %v, want %v", p.Label, p.Pareto, want[p.Label])
		}
	}
}

func TestSearchMax(t *testing.T) {
	for _, c := range []struct{ lo, hi, truth, tol, want int }{
		{1, 256, 37, 0, 37},
		{1, 256, 1, 0, 1},
		{1, 256, 0, 0, 0},
		{1, 256, 256, 0, 256},
		{1, 100, 500, 0, 100},
		{1, 256, 100, 16, 96}, // bracket (64,128) bisected to within 16: 96 ok, 112 fails
	} {
		calls := 0
		got, err := SearchMax(c.lo, c.hi, func(int) int { return c.tol }, func(n int) (bool, error) {
			calls++
			return n <= c.truth, nil
		})
		if err != nil || got != c.want {
			t.Errorf("SearchMax(%d..%d, truth %d, tol %d) = %d, %v; want %d", c.lo, c.hi, c.truth, c.tol, got, err, c.want)
		}
		if calls > 20 {
			t.Errorf("truth %d: %d probes", c.truth, calls)
		}
	}
}

// Every built-in profile, not just the default one, is rescaled for the qwen
// pair's draft when an experiment runs them all: the capacity table once used
// the tiny models' device rates on the real pair.
func TestProfilesAllRescaledForQwen(t *testing.T) {
	o := Options{Pair: "qwen", Shape: "smollm-135m", Type: "Q4_K_M"}.withDefaults()
	if !o.allProfiles {
		t.Fatal("allProfiles not set by default outside Quick")
	}
	ps, err := o.profiles()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != len(Profiles()) {
		t.Fatalf("%d profiles, want all %d", len(ps), len(Profiles()))
	}
	for i, p := range ps {
		base := Profiles()[i]
		if base.BandwidthGBs > 0 && (p.TokensPerSec >= base.TokensPerSec || p.DraftModel == base.DraftModel) {
			t.Errorf("profile %s: %.1f tok/s (draft %q), want rescaled below %.1f for the 0.5B draft",
				p.Name, p.TokensPerSec, p.DraftModel, base.TokensPerSec)
		}
	}
	o = Options{Pair: "tiny", Shape: "smollm-135m"}.withDefaults()
	ps, err = o.profiles()
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		if p.TokensPerSec != Profiles()[i].TokensPerSec {
			t.Errorf("tiny pair: profile %s rescaled to %.1f tok/s", p.Name, p.TokensPerSec)
		}
	}
}

// windowTokens spreads each request's tokens over its duration and counts the
// part inside the window, so a request straddling either edge counts in part.
func TestWindowTokens(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	spans := []loadSpan{
		{at(0), at(4), 40},   // wholly inside [0, 10)
		{at(8), at(12), 40},  // half inside
		{at(-2), at(2), 20},  // half inside
		{at(10), at(14), 40}, // after the window
		{at(5), at(5), 3},    // instantaneous, inside
	}
	if got, want := windowTokens(spans, at(0), at(10)), 40.0+20+10+3; math.Abs(got-want) > 1e-9 {
		t.Errorf("windowTokens = %v, want %v", got, want)
	}
	if got := windowTokens(nil, at(0), at(10)); got != 0 {
		t.Errorf("no spans: %v", got)
	}
}

func TestFollows(t *testing.T) {
	cont := []engine.Token{5, 6, 7, 8}
	for _, c := range []struct {
		toks     []engine.Token
		j, ok    int
		diverged bool
	}{
		{[]engine.Token{5}, 0, 1, false},
		{[]engine.Token{6, 7}, 1, 2, false},
		{[]engine.Token{9}, 0, 0, true},
		{[]engine.Token{6, 9, 8}, 1, 1, true}, // departs at its second token: one counts
		{[]engine.Token{8, 2}, 3, 1, false},   // past the reference's end: not a divergence
		{nil, 2, 0, false},
	} {
		ok, diverged := follows(c.toks, cont, c.j)
		if ok != c.ok || diverged != c.diverged {
			t.Errorf("follows(%v, %v, %d) = %d, %v; want %d, %v", c.toks, cont, c.j, ok, diverged, c.ok, c.diverged)
		}
	}
}

func TestSessionPrompt(t *testing.T) {
	const n = 8
	for i := range 2*n + 1 { // fleets smaller and larger than the prompt set
		if got := sessionPrompt(i, 0, n); got != i%n {
			t.Errorf("client %d starts at prompt %d, want %d", i, got, i%n)
		}
		// Every client reaches every prompt within n sessions.
		seen := map[int]bool{}
		for k := range n {
			seen[sessionPrompt(i, k, n)] = true
		}
		if len(seen) != n {
			t.Errorf("client %d visits %d of %d prompts in %d sessions", i, len(seen), n, n)
		}
	}
}

func TestWSTGRRepeats(t *testing.T) {
	m := func(tps float64, cut int) *Measurement { return &Measurement{TokensPerSec: tps, Mismatches: cut} }
	pts := []WSTGRPoint{
		{Batch: 4, Repeat: 1, SLED: m(30, 1), Centralized: m(20, 2)},
		{Batch: 4, Repeat: 2, SLED: m(10, 3), Centralized: m(20, 4)},
		{Batch: 1, Repeat: 1, SLED: m(9, 0), Centralized: m(10, 1)},
	}
	got := wstgrRepeats(pts).Rows
	want := [][]string{
		// Means 20 / 20: the ratio of the means, not the mean of 1.50 and 0.50.
		{"4", "2", "20.0", "20.0", "1.00", "0.50-1.50", "4 / 6"},
		{"1", "1", "9.0", "10.0", "0.90", "0.90-0.90", "0 / 1"},
	}
	if len(got) != len(want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	for i := range want {
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				t.Errorf("row %d column %d: %q, want %q (row %v)", i, j, got[i][j], want[i][j], got[i])
			}
		}
	}
}

// Interleaved searches find what each finds alone, with the same probes, and
// take turns: between two probes of one search every other live search probes
// once, the order alternating.
func TestInterleave(t *testing.T) {
	truths := []int{37, 1, 256, 5}
	tols := []int{0, 0, 16, 1}
	var alone [][]int
	var want []int
	for i, truth := range truths {
		var probes []int
		got, _ := SearchMax(1, 256, func(int) int { return tols[i] }, func(n int) (bool, error) {
			probes = append(probes, n)
			return n <= truth, nil
		})
		alone, want = append(alone, probes), append(want, got)
	}
	var ss []*Search
	for i := range truths {
		ss = append(ss, NewSearch(1, 256, func(int) int { return tols[i] }))
	}
	probes := make([][]int, len(truths))
	var order []int
	err := Interleave(ss, func(i, n int) (bool, error) {
		probes[i] = append(probes[i], n)
		order = append(order, i)
		return n <= truths[i], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range truths {
		if ss[i].Result() != want[i] || !slices.Equal(probes[i], alone[i]) {
			t.Errorf("search %d: %d after probes %v; alone %d after %v", i, ss[i].Result(), probes[i], want[i], alone[i])
		}
	}
	// The first two turns, all four searches live: forward, then backward.
	if !slices.Equal(order[:8], []int{0, 1, 2, 3, 3, 2, 1, 0}) {
		t.Errorf("turn order %v, want 0 1 2 3 3 2 1 0 first", order[:8])
	}
	wantErr := errors.New("trial failed")
	ss = []*Search{NewSearch(1, 8, func(int) int { return 0 })}
	if err := Interleave(ss, func(int, int) (bool, error) { return false, wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("probe error: got %v", err)
	}
}

// The simulator's search bound defaults by Quick, keeps a value set, and
// filling the defaults twice changes nothing.
func TestSimMaxDevicesDefault(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want int
	}{
		{Options{Pair: "tiny"}, 4096},
		{Options{Pair: "tiny", Quick: true}, 512},
		{Options{Pair: "tiny", Quick: true, SimMaxDevices: 16384}, 16384},
	} {
		o := c.o.withDefaults()
		if o.SimMaxDevices != c.want {
			t.Errorf("%+v: SimMaxDevices %d, want %d", c.o, o.SimMaxDevices, c.want)
		}
		if again := o.withDefaults(); again.SimMaxDevices != c.want {
			t.Errorf("%+v: SimMaxDevices %d after a second withDefaults, want %d", c.o, again.SimMaxDevices, c.want)
		}
	}
}
