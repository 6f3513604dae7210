package gumbel

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sled-project/sled/internal/chisq"
)

// bruteMax evaluates every token's perturbed score.
func bruteMax(w []float32, scale float64, seed uint64, pos int) Choice {
	best, second, tok := math.Inf(-1), math.Inf(-1), int32(-1)
	for t, v := range w {
		if math.IsInf(float64(v), -1) {
			continue
		}
		s := scale*float64(v) + Noise(seed, pos, int32(t))
		if s > best {
			second, best, tok = best, s, int32(t)
		} else if s > second {
			second = s
		}
	}
	return Choice{Token: tok, Margin: best - second}
}

func randomLogits(r *rand.Rand, n int, spread float64) []float32 {
	w := make([]float32, n)
	for i := range w {
		w[i] = float32(r.NormFloat64() * spread)
	}
	return w
}

// The bounds skip tokens without changing the winner or the margin.
func TestMaxEqualsFullEvaluation(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 400 {
		n := 1 + r.IntN(3000)
		w := randomLogits(r, n, []float64{0.1, 1, 3, 10}[trial%4])
		if trial%3 == 0 { // a truncated distribution
			for i := range w {
				if r.IntN(4) == 0 {
					w[i] = float32(math.Inf(-1))
				}
			}
			w[r.IntN(n)] = 0
		}
		scale := []float64{1, 1 / 0.7, 1 / 1.3}[trial%3]
		seed, pos := r.Uint64(), r.IntN(5000)
		got, want := Max(w, scale, seed, pos), bruteMax(w, scale, seed, pos)
		if got.Token != want.Token || math.Abs(got.Margin-want.Margin) > 1e-12 && !(math.IsInf(got.Margin, 1) && math.IsInf(want.Margin, 1)) {
			t.Fatalf("trial %d (n=%d): Max = %+v, full evaluation = %+v", trial, n, got, want)
		}
	}
}

func TestMaxPure(t *testing.T) {
	w := randomLogits(rand.New(rand.NewPCG(3, 4)), 1000, 2)
	a, b := Max(w, 1, 42, 17), Max(w, 1, 42, 17)
	if a != b {
		t.Fatalf("same inputs, different choices: %+v %+v", a, b)
	}
	// Another seed or position draws other noise: over a few, the choice moves.
	moved := false
	for s := range uint64(20) {
		if Max(w, 1, 43+s, 17).Token != a.Token || Max(w, 1, 42, 18+int(s)).Token != a.Token {
			moved = true
		}
	}
	if !moved {
		t.Fatal("the choice ignores seed and position")
	}
	if c := Max([]float32{float32(math.Inf(-1))}, 1, 1, 1); c.Token != -1 {
		t.Fatalf("no candidate: got %+v", c)
	}
}

// softmax at temperature 1/scale.
func softmax(w []float32, scale float64) []float64 {
	m := math.Inf(-1)
	for _, v := range w {
		m = max(m, scale*float64(v))
	}
	p := make([]float64, len(w))
	var sum float64
	for i, v := range w {
		p[i] = math.Exp(scale*float64(v) - m)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

// freq samples the Gumbel-max at pos over seeds 0..n-1.
func freq(w []float32, scale float64, pos, n int, seed0 uint64) []int {
	c := make([]int, len(w))
	for s := range n {
		c[Max(w, scale, seed0+uint64(s), pos).Token]++
	}
	return c
}

// Over seeds, the Gumbel-max is a sample of softmax(w*scale): Pearson's
// chi-square at level 0.001 accepts it at the first and a later position, and
// (the test's power) rejects the same samples against the distribution at a
// temperature 15% off, and against the distribution that greedy drafting with
// a point mass would declare.
func TestMaxSamplesTheDistribution(t *testing.T) {
	const n = 20000
	w := randomLogits(rand.New(rand.NewPCG(5, 6)), 400, 2.5)
	for _, scale := range []float64{1 / 0.8, 1} {
		for _, pos := range []int{0, 731} {
			c := freq(w, scale, pos, n, 1000)
			if res := chisq.Test(c, softmax(w, scale), 0, chisq.Z001); res.Rejects() {
				t.Errorf("T=%.2f pos %d: frequencies differ from the distribution: %v", 1/scale, pos, res)
			} else {
				t.Logf("T=%.2f pos %d: %v (%d bins)", 1/scale, pos, res, res.Bins)
			}
			if res := chisq.Test(c, softmax(w, scale*1.15), 0, chisq.Z001); !res.Rejects() {
				t.Errorf("T=%.2f pos %d: the test cannot tell a temperature 15%% off: %v", 1/scale, pos, res)
			}
		}
	}
}

// Noise at two positions is independent: the joint frequencies of the
// Gumbel-max at positions 0 and 1 under one seed match the product of the
// marginals.
func TestPositionsIndependent(t *testing.T) {
	const n = 20000
	w := []float32{1, 0.5, 0, -0.5, -1, -2}
	p := softmax(w, 1)
	joint := make([]int, len(w)*len(w))
	probs := make([]float64, len(joint))
	for a := range w {
		for b := range w {
			probs[a*len(w)+b] = p[a] * p[b]
		}
	}
	for s := range uint64(n) {
		a, b := Max(w, 1, s, 0).Token, Max(w, 1, s, 1).Token
		joint[int(a)*len(w)+int(b)]++
	}
	if res := chisq.Test(joint, probs, 0, chisq.Z001); res.Rejects() {
		t.Fatalf("positions 0 and 1 are not independent: %v", res)
	}
}

// Coupling: drafting with the same noise over a close distribution gives the
// target's own sample far more often than an independent draw does (the
// acceptance coupled sampling buys).
func TestCouplingAgreement(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	target := randomLogits(r, 2000, 3)
	draft := make([]float32, len(target))
	for i, v := range target {
		draft[i] = v + float32(r.NormFloat64()*0.3)
	}
	p, q := softmax(target, 1), softmax(draft, 1)
	var same int
	const n = 4000
	for s := range uint64(n) {
		if Max(target, 1, s, 9).Token == Max(draft, 1, s, 9).Token {
			same++
		}
	}
	var indep float64 // P(two independent draws agree)
	for i := range p {
		indep += p[i] * q[i]
	}
	if got := float64(same) / n; got < indep+0.2 {
		t.Fatalf("coupled agreement %.3f, independent %.3f: the noise does not couple", got, indep)
	} else {
		t.Logf("coupled agreement %.3f, independent draws %.3f", got, indep)
	}
}

// BenchmarkMax is one sample over a Qwen2.5-sized vocabulary.
func BenchmarkMax(b *testing.B) {
	w := randomLogits(rand.New(rand.NewPCG(9, 10)), 151936, 2.5)
	b.Run("pruned", func(b *testing.B) {
		for i := range b.N {
			Max(w, 1/0.8, 1, i)
		}
	})
	b.Run("full", func(b *testing.B) {
		for i := range b.N {
			bruteMax(w, 1/0.8, 1, i)
		}
	})
}
