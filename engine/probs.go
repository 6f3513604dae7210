package engine

import (
	"math"
	"math/rand/v2"
	"slices"
)

// The functions below turn a logits row into probabilities. They are pure and
// allocation-free unless they return a slice.

// Argmax returns the token with the largest logit; ties go to the lowest id, as in
// llama.cpp's greedy sampler.
func Argmax(logits []float32) Token {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	return Token(best)
}

// Top1 returns the most likely token and its softmax probability: a draft model's
// confidence in its own choice.
func Top1(logits []float32) (Token, float32) {
	t := Argmax(logits)
	return t, Prob(logits, t)
}

// Prob is the softmax probability of token t under logits.
func Prob(logits []float32, t Token) float32 {
	max := logits[Argmax(logits)]
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v - max))
	}
	return float32(math.Exp(float64(logits[t]-max)) / sum)
}

// Softmax writes the probabilities of logits at temperature temp into dst (grown as
// needed) and returns it. temp <= 0 is treated as 1.
func Softmax(dst, logits []float32, temp float32) []float32 {
	if temp <= 0 {
		temp = 1
	}
	dst = slices.Grow(dst[:0], len(logits))[:len(logits)]
	max := logits[Argmax(logits)]
	var sum float64
	for i, v := range logits {
		e := math.Exp(float64((v - max) / temp))
		dst[i] = float32(e)
		sum += e
	}
	inv := 1 / sum
	for i := range dst {
		dst[i] = float32(float64(dst[i]) * inv)
	}
	return dst
}

// TokenProb is a token with its probability.
type TokenProb struct {
	Token Token   `json:"token"`
	Prob  float32 `json:"prob"`
}

// TopK returns the k most likely tokens at temperature temp, most likely first,
// with their probabilities renormalised to sum to 1 over the k.
func TopK(logits []float32, k int, temp float32) []TokenProb {
	k = max(1, min(k, len(logits)))
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	// Partial selection would be O(n); the sort is simple and fast enough for the
	// drafter's k and vocabularies up to a few hundred thousand.
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case logits[a] > logits[b]:
			return -1
		case logits[a] < logits[b]:
			return 1
		}
		return 0
	})
	if temp <= 0 {
		temp = 1
	}
	top := logits[idx[0]]
	out := make([]TokenProb, k)
	var sum float64
	for i := range k {
		e := math.Exp(float64((logits[idx[i]] - top) / temp))
		out[i] = TokenProb{Token: Token(idx[i]), Prob: float32(e)}
		sum += e
	}
	for i := range out {
		out[i].Prob = float32(float64(out[i].Prob) / sum)
	}
	return out
}

// Sample draws a token from the distribution p (probabilities summing to 1, as
// Softmax returns) with r. Rounding slack at the end of the scan goes to the last
// token.
func Sample(r *rand.Rand, p []float32) Token {
	u := r.Float32()
	for t, pt := range p {
		if u -= pt; u <= 0 {
			return Token(t)
		}
	}
	return Token(len(p) - 1)
}
