package engine

import (
	"math"
	"testing"
)

func TestNucleus(t *testing.T) {
	p := []float32{0.1, 0.5, 0.3, 0.1}
	got := Nucleus(append([]float32(nil), p...), 0.7)
	// 0.5 + 0.3 = 0.8 >= 0.7: tokens 1 and 2 survive, renormalised.
	want := []float32{0, 0.625, 0.375, 0}
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-6 {
			t.Fatalf("Nucleus(0.7) = %v, want %v", got, want)
		}
	}
	// The top token alone when it already covers top_p.
	if got := Nucleus(append([]float32(nil), p...), 0.4); got[1] != 1 || got[0]+got[2]+got[3] != 0 {
		t.Fatalf("Nucleus(0.4) = %v", got)
	}
	// Ties at the boundary: the lower id is kept.
	if got := Nucleus([]float32{0.25, 0.25, 0.25, 0.25}, 0.5); got[0] != 0.5 || got[1] != 0.5 || got[2] != 0 || got[3] != 0 {
		t.Fatalf("Nucleus ties = %v", got)
	}
	for _, topP := range []float32{0, 1, 1.5, -1} {
		if got := Nucleus(append([]float32(nil), p...), topP); got[0] != p[0] || got[3] != p[3] {
			t.Fatalf("Nucleus(%v) changed p: %v", topP, got)
		}
	}
}

func TestDistributionIsSoftmaxThenNucleus(t *testing.T) {
	logits := []float32{2, 1, 0, -1}
	d := Distribution(nil, logits, 0.5, 0.9)
	s := Nucleus(Softmax(nil, logits, 0.5), 0.9)
	var sum float32
	for i := range d {
		if d[i] != s[i] {
			t.Fatalf("Distribution %v != Nucleus(Softmax) %v", d, s)
		}
		sum += d[i]
	}
	if math.Abs(float64(sum-1)) > 1e-6 || d[3] != 0 {
		t.Fatalf("Distribution = %v", d)
	}
}

func TestLogprobs(t *testing.T) {
	logits := []float32{1, 3, 2, 3, -5}
	p := Softmax(nil, logits, 1)
	lp, top := Logprobs(logits, 2, 3)
	if math.Abs(float64(lp)-math.Log(float64(p[2]))) > 1e-5 {
		t.Fatalf("logprob of 2 = %v, want %v", lp, math.Log(float64(p[2])))
	}
	wantTok := []Token{1, 3, 2}
	if len(top) != 3 {
		t.Fatalf("top = %v", top)
	}
	for i, w := range wantTok {
		if top[i].Token != w || math.Abs(float64(top[i].Logprob)-math.Log(float64(p[w]))) > 1e-5 {
			t.Fatalf("top[%d] = %+v, want token %d logprob %v", i, top[i], w, math.Log(float64(p[w])))
		}
	}
	if _, top := Logprobs(logits, 0, 0); top != nil {
		t.Fatalf("n=0 gave alternatives %v", top)
	}
	if _, top := Logprobs(logits, 0, 10); len(top) != len(logits) {
		t.Fatalf("n > vocab gave %d alternatives", len(top))
	}
	// Large logits do not overflow.
	if lp, _ := Logprobs([]float32{1000, 0}, 0, 1); math.IsNaN(float64(lp)) || lp > 0 || lp < -1e-3 {
		t.Fatalf("logprob overflowed: %v", lp)
	}
}
