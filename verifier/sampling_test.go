package verifier

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/internal/chisq"
)

// toyModel is a deterministic "language model" over a small vocabulary: the
// logits after a sequence are a pure function of it. Its draft is the same
// model with noise added to each logit (a close but different distribution).
type toyModel struct {
	vocab int
	noise float64 // 0: the target
	seed  uint64
}

func (m toyModel) logits(seq []engine.Token) []float32 {
	h := uint64(1469598103934665603)
	for _, t := range seq {
		h = (h ^ uint64(t)) * 1099511628211
	}
	r := rand.New(rand.NewPCG(h, 77))
	nr := rand.New(rand.NewPCG(h, m.seed))
	w := make([]float32, m.vocab)
	for i := range w {
		w[i] = float32(r.NormFloat64()*1.5 + m.noise*nr.NormFloat64())
	}
	return w
}

// speculate generates n tokens after prompt the way SLED does: a device
// drafts k tokens by mode, the verifier runs Accept over the target's rows,
// until n tokens are out.
func speculate(target, draft toyModel, prompt []engine.Token, n, k int, mode string, temp float32, seed uint64) []engine.Token {
	seq := append([]engine.Token(nil), prompt...)
	rng := rand.New(rand.NewPCG(seed, 1))    // the device's
	verRng := rand.New(rand.NewPCG(seed, 2)) // the verifier's (rejection rule)
	for len(seq)-len(prompt) < n {
		var d []engine.Token
		var dists [][]engine.TokenProb
		ctx := append([]engine.Token(nil), seq...)
		for range k {
			w := draft.logits(ctx)
			var t engine.Token
			switch mode {
			case "coupled":
				t = engine.Coupled(w, temp, 0, seed, len(ctx)).Token
			case "topk":
				dist := engine.TopK(w, 4, temp)
				u, pick := rng.Float32(), dist[len(dist)-1].Token
				for _, tp := range dist {
					if u -= tp.Prob; u <= 0 {
						pick = tp.Token
						break
					}
				}
				t = pick
				dists = append(dists, dist)
			case "point":
				t = engine.Argmax(w)
				dists = append(dists, []engine.TokenProb{{Token: t, Prob: 1}})
			}
			d = append(d, t)
			ctx = append(ctx, t)
		}
		rows := make([][]float32, len(d)+1)
		for i := range rows {
			rows[i] = target.logits(append(append([]engine.Token(nil), seq...), d[:i]...))
		}
		in := AcceptInput{Draft: d, DraftDists: dists, Target: rows, Temperature: temp, Rand: verRng}
		if mode == "coupled" {
			in.Coupled, in.Seed, in.Pos = true, seed, len(seq)
		}
		v := Accept(in)
		seq = append(append(seq, d[:v.Accepted]...), v.Next)
	}
	return seq[len(prompt) : len(prompt)+n]
}

// toyReference is the target alone sampling by shared randomness, one token at
// a time: what the centralized server computes.
func toyReference(target toyModel, prompt []engine.Token, n int, temp float32, seed uint64) []engine.Token {
	seq := append([]engine.Token(nil), prompt...)
	for range n {
		seq = append(seq, engine.Coupled(target.logits(seq), temp, 0, seed, len(seq)).Token)
	}
	return seq[len(prompt):]
}

func probs(w []float32, temp float32) []float64 {
	p := engine.Softmax(nil, w, temp)
	out := make([]float64, len(p))
	for i, v := range p {
		out[i] = float64(v)
	}
	return out
}

// Every mode of speculative sampling emits the target's distribution: over
// many seeds, the first token's frequencies and the second token's given the
// likeliest first match the target's probabilities (Pearson's chi-square at
// level 0.001: a true sampler fails it one time in a thousand). The test has
// power: the same samples are rejected against the draft model's distribution,
// which is what a sampler that trusted the draft would emit.
func TestSpeculativeSamplingDistribution(t *testing.T) {
	const seeds = 12000
	target := toyModel{vocab: 12}
	draft := toyModel{vocab: 12, noise: 0.8, seed: 5}
	prompt := []engine.Token{1, 2, 3}
	for _, mode := range []string{"coupled", "topk", "point"} {
		for _, temp := range []float32{0.7, 1} {
			first := make([]int, target.vocab)
			outs := make([][]engine.Token, seeds)
			for s := range seeds {
				outs[s] = speculate(target, draft, prompt, 2, 3, mode, temp, uint64(s)+100)
				first[outs[s][0]]++
			}
			p1 := probs(target.logits(prompt), temp)
			res := chisq.Test(first, p1, 0, chisq.Z001)
			if res.Rejects() {
				t.Errorf("%s T=%.1f first token: %v", mode, temp, res)
			}
			q1 := probs(draft.logits(prompt), temp)
			if power := chisq.Test(first, q1, 0, chisq.Z001); !power.Rejects() {
				t.Errorf("%s T=%.1f: the test cannot tell the draft's distribution from the target's: %v", mode, temp, power)
			}
			// The second token, given the likeliest first token.
			top := engine.Token(0)
			for i, c := range first {
				if c > first[top] {
					top = engine.Token(i)
				}
			}
			second := make([]int, target.vocab)
			for _, o := range outs {
				if o[0] == top {
					second[o[1]]++
				}
			}
			p2 := probs(target.logits(append(append([]engine.Token(nil), prompt...), top)), temp)
			res2 := chisq.Test(second, p2, 0, chisq.Z001)
			if res2.Rejects() {
				t.Errorf("%s T=%.1f second token: %v", mode, temp, res2)
			}
			t.Logf("%s T=%.1f: first %v; second (given %d, %d samples) %v", mode, temp, res, top, first[top], res2)
		}
	}
}

// Coupled sampling gives the target's own seeded sample whatever drafts it:
// for every seed the output equals the target alone's (reference), with no
// draft, drafts of 1 and 4 tokens, and two different draft models.
func TestCoupledSamplingReproducible(t *testing.T) {
	target := toyModel{vocab: 50}
	drafts := []toyModel{{vocab: 50, noise: 0.3, seed: 1}, {vocab: 50, noise: 2, seed: 2}}
	prompt := []engine.Token{7}
	var accepted, drafted int
	for s := range uint64(200) {
		want := toyReference(target, prompt, 12, 0.8, s)
		for _, d := range drafts {
			for _, k := range []int{0, 1, 4} {
				got := speculate(target, d, prompt, 12, k, "coupled", 0.8, s)
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("seed %d, draft noise %.1f, k=%d: token %d is %d, the target's sample %d", s, d.noise, k, i, got[i], want[i])
					}
				}
			}
		}
		// Acceptance with the close draft: drafting by the same noise pays.
		seq := append([]engine.Token(nil), prompt...)
		for i := range 12 {
			w := drafts[0].logits(seq)
			if engine.Coupled(w, 0.8, 0, s, len(seq)).Token == want[i] {
				accepted++
			}
			drafted++
			seq = append(seq, want[i])
		}
	}
	if rate := float64(accepted) / float64(drafted); rate < 0.7 {
		t.Errorf("a close draft agrees with the target's coupled sample at %.2f of positions", rate)
	}
}

// A draft token outside the target's nucleus is never emitted under coupled
// sampling either (the verifier's sample is drawn from the truncated
// distribution only).
func TestCoupledSamplingTopP(t *testing.T) {
	logits := []float32{0.5, 2, 1, -1}
	p := engine.Distribution(nil, logits, 0.8, 0.8)
	for s := range uint64(2000) {
		v := Accept(AcceptInput{Draft: []engine.Token{3}, Target: [][]float32{logits, logits}, Temperature: 0.8, TopP: 0.8,
			Coupled: true, Seed: s, Pos: 10})
		if v.Accepted != 0 || p[v.Next] == 0 {
			t.Fatalf("seed %d: %+v; nucleus %v", s, v, p)
		}
	}
	if math.IsNaN(float64(p[1])) {
		t.Fatal("bad premise")
	}
}
