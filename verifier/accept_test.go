package verifier

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sled-project/sled/engine"
)

// row returns logits over a vocabulary of n with the given token on top.
func row(n int, top engine.Token) []float32 {
	r := make([]float32, n)
	for i := range r {
		r[i] = float32(i%7) * 0.1
	}
	r[top] = 10
	return r
}

func TestAcceptGreedy(t *testing.T) {
	const V = 16
	target := []engine.Token{3, 5, 7, 9}
	rows := [][]float32{row(V, 3), row(V, 5), row(V, 7), row(V, 9)}
	cases := []struct {
		draft []engine.Token
		want  Verdict
	}{
		{[]engine.Token{3, 5, 7}, Verdict{Accepted: 3, Next: 9}}, // all accepted: bonus
		{[]engine.Token{3, 6, 7}, Verdict{Accepted: 1, Next: 5}}, // correction at 1
		{[]engine.Token{4, 5, 7}, Verdict{Accepted: 0, Next: 3}}, // first rejected
		{[]engine.Token{}, Verdict{Accepted: 0, Next: 3}},        // no draft: one target token
		{[]engine.Token{3, 5, 8}, Verdict{Accepted: 2, Next: 7}},
	}
	for _, tc := range cases {
		got := Accept(AcceptInput{Draft: tc.draft, Target: rows[:len(tc.draft)+1]})
		if got != tc.want {
			t.Errorf("draft %v: got %+v, want %+v (target %v)", tc.draft, got, tc.want, target)
		}
	}
}

// TestAcceptSamplingPreservesTarget checks the defining property of speculative
// sampling: whatever the draft distribution, the first emitted token is distributed
// as the target's p.
func TestAcceptSamplingPreservesTarget(t *testing.T) {
	logits := []float32{2, 1, 0.5, 0, -1}
	p := engine.Softmax(nil, logits, 1)
	// A draft distribution that disagrees with p.
	q := []engine.TokenProb{{Token: 3, Prob: 0.6}, {Token: 0, Prob: 0.3}, {Token: 4, Prob: 0.1}}
	r := rand.New(rand.NewPCG(1, 2))
	const N = 200000
	counts := make([]int, len(p))
	for range N {
		// The drafter samples its token from q.
		u, d := r.Float32(), q[len(q)-1].Token
		for _, tp := range q {
			if u -= tp.Prob; u <= 0 {
				d = tp.Token
				break
			}
		}
		v := Accept(AcceptInput{
			Draft: []engine.Token{d}, DraftDists: [][]engine.TokenProb{q},
			Target: [][]float32{logits, logits}, Temperature: 1, Rand: r,
		})
		first := v.Next
		if v.Accepted == 1 {
			first = d
		}
		counts[first]++
	}
	for i, pi := range p {
		got := float64(counts[i]) / N
		if math.Abs(got-float64(pi)) > 0.006 {
			t.Errorf("token %d: emitted with frequency %.4f, target probability %.4f", i, got, pi)
		}
	}
}

// TestAcceptSamplingGreedyDrafter covers SLED devices under sampling: they draft
// the draft model's argmax and declare a point-mass draft distribution. The first
// emitted token must still follow the target's p.
func TestAcceptSamplingGreedyDrafter(t *testing.T) {
	logits := []float32{0.5, 2, 1, -1}
	p := engine.Softmax(nil, logits, 0.8)
	r := rand.New(rand.NewPCG(3, 4))
	const N = 200000
	counts := make([]int, len(p))
	point := [][]engine.TokenProb{{{Token: 2, Prob: 1}}} // the drafter always proposes token 2
	for range N {
		v := Accept(AcceptInput{Draft: []engine.Token{2}, DraftDists: point, Target: [][]float32{logits, logits}, Temperature: 0.8, Rand: r})
		first := v.Next
		if v.Accepted == 1 {
			first = 2
		}
		counts[first]++
	}
	for i, pi := range p {
		if got := float64(counts[i]) / N; math.Abs(got-float64(pi)) > 0.006 {
			t.Errorf("token %d: frequency %.4f, target probability %.4f", i, got, pi)
		}
	}
}

// With top_p the emitted tokens follow the truncated target distribution: a token
// outside the nucleus is never emitted, even when the drafter proposes it.
func TestAcceptSamplingTopP(t *testing.T) {
	logits := []float32{0.5, 2, 1, -1}
	const temp, topP = 0.8, 0.8
	p := engine.Distribution(nil, logits, temp, topP)
	if p[3] != 0 || p[0] != 0 {
		t.Fatalf("test premise: nucleus %v should drop tokens 0 and 3", p)
	}
	r := rand.New(rand.NewPCG(5, 6))
	const N = 200000
	counts := make([]int, len(p))
	point := [][]engine.TokenProb{{{Token: 3, Prob: 1}}} // proposes a token outside the nucleus
	for range N {
		v := Accept(AcceptInput{Draft: []engine.Token{3}, DraftDists: point, Target: [][]float32{logits, logits},
			Temperature: temp, TopP: topP, Rand: r})
		first := v.Next
		if v.Accepted == 1 {
			first = 3
		}
		counts[first]++
	}
	for i, pi := range p {
		if got := float64(counts[i]) / N; math.Abs(got-float64(pi)) > 0.006 {
			t.Errorf("token %d: frequency %.4f, truncated target probability %.4f", i, got, pi)
		}
	}
}

func TestOutcomeLogprobs(t *testing.T) {
	const V = 8
	rows := [][]float32{row(V, 3), row(V, 5)}
	lps := OutcomeLogprobs(rows, []engine.Token{3, 2}, 2)
	if len(lps) != 2 {
		t.Fatalf("%d entries, want 2", len(lps))
	}
	for i, tok := range []engine.Token{3, 2} {
		want := math.Log(float64(engine.Prob(rows[i], tok)))
		if math.Abs(float64(lps[i].Logprob)-want) > 1e-4 {
			t.Errorf("entry %d: logprob %v, want %v", i, lps[i].Logprob, want)
		}
		if len(lps[i].Top) != 2 || lps[i].Top[0].Token != engine.Argmax(rows[i]) {
			t.Errorf("entry %d: top %+v, want the argmax first", i, lps[i].Top)
		}
	}
	if lps := OutcomeLogprobs(rows[:1], []engine.Token{3}, 0); len(lps) != 1 || lps[0].Top != nil {
		t.Errorf("top 0: %+v", lps)
	}
}

// BenchmarkOutcomeLogprobs is the verifier's cost of logprobs for one round of
// 5 output tokens at the Qwen2.5 vocabulary (151936), with 5 alternatives: what a
// draft that asks for logprobs adds to its verification.
func BenchmarkOutcomeLogprobs(b *testing.B) {
	const V, n = 151936, 5
	r := rand.New(rand.NewPCG(1, 1))
	rows := make([][]float32, n)
	out := make([]engine.Token, n)
	for i := range rows {
		rows[i] = make([]float32, V)
		for j := range rows[i] {
			rows[i][j] = float32(r.NormFloat64() * 3)
		}
		out[i] = engine.Argmax(rows[i])
	}
	b.ResetTimer()
	for range b.N {
		OutcomeLogprobs(rows, out, 5)
	}
}
