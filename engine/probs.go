package engine

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/sled-project/sled/gumbel"
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

// TopK returns the k most likely tokens at temperature temp, most likely first
// (ties to the lower id), with their probabilities renormalised to sum to 1
// over the k.
func TopK(logits []float32, k int, temp float32) []TokenProb {
	k = max(1, min(k, len(logits)))
	// Keep the k best by insertion into a short sorted list: one comparison for
	// almost every token of a large vocabulary.
	idx := make([]int, 0, k+1)
	for i, v := range logits {
		if len(idx) == k && v <= logits[idx[k-1]] {
			continue
		}
		j := len(idx)
		for j > 0 && v > logits[idx[j-1]] {
			j--
		}
		idx = slices.Insert(idx, j, i)
		if len(idx) > k {
			idx = idx[:k]
		}
	}
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

// Nucleus keeps the smallest set of most likely tokens of the distribution p whose
// probabilities sum to at least topP (top-p, "nucleus" sampling), zeroes the rest
// and renormalises p in place; it returns p. topP <= 0 or >= 1 leaves p as it is.
// At least the most likely token is always kept. Ties at the boundary are kept in
// token id order, so the result is a pure function of p and topP.
func Nucleus(p []float32, topP float32) []float32 {
	if topP <= 0 || topP >= 1 || len(p) == 0 {
		return p
	}
	idx := make([]int32, len(p))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortStableFunc(idx, func(a, b int32) int {
		switch {
		case p[a] > p[b]:
			return -1
		case p[a] < p[b]:
			return 1
		}
		return 0
	})
	var mass float64
	keep := len(idx)
	for i, t := range idx {
		mass += float64(p[t])
		if mass >= float64(topP) {
			keep = i + 1
			break
		}
	}
	for _, t := range idx[keep:] {
		p[t] = 0
	}
	inv := 1 / mass
	for _, t := range idx[:keep] {
		p[t] = float32(float64(p[t]) * inv)
	}
	return p
}

// Distribution writes the sampling distribution of logits at temperature temp
// with top-p truncation (see Softmax and Nucleus) into dst and returns it. Every
// sampler in SLED (the verifier's rejection rule, the centralized server, an
// edge-only device) draws from this one definition, so that a seed means the
// same distribution everywhere.
func Distribution(dst, logits []float32, temp, topP float32) []float32 {
	return Nucleus(Softmax(dst, logits, temp), topP)
}

// TopLogprob is a token and its log-probability.
type TopLogprob struct {
	Token   Token
	Logprob float32
}

// Logprobs returns the natural-log probability of token t under logits (the raw
// distribution: temperature 1, no truncation) and the n most likely tokens with
// theirs, most likely first (ties to the lower id). n <= 0 returns no
// alternatives.
func Logprobs(logits []float32, t Token, n int) (float32, []TopLogprob) {
	max := logits[Argmax(logits)]
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v - max))
	}
	lse := float64(max) + math.Log(sum)
	lp := float32(float64(logits[t]) - lse)
	if n <= 0 {
		return lp, nil
	}
	n = min(n, len(logits))
	// Keep the n best by insertion into a short sorted list: O(V*n) with n <= 20.
	top := make([]TopLogprob, 0, n+1)
	for i, v := range logits {
		if len(top) == n && v <= logits[top[n-1].Token] {
			continue
		}
		j := len(top)
		for j > 0 && v > logits[top[j-1].Token] {
			j--
		}
		top = slices.Insert(top, j, TopLogprob{Token: Token(i)})
		if len(top) > n {
			top = top[:n]
		}
	}
	for i := range top {
		top[i].Logprob = float32(float64(logits[top[i].Token]) - lse)
	}
	return lp, top
}

// Coupled is the shared-randomness sample of logits at temperature temp (> 0)
// truncated to topP (as Distribution truncates it) at absolute position pos of
// a sequence under seed: the Gumbel-max of package gumbel. Every party that
// samples a seeded sequence (the verifier, a device drafting, the centralized
// server, an edge-only device) draws through this one definition, so a seed
// gives the same text whoever computed it, up to near-ties (Choice.Margin).
func Coupled(logits []float32, temp, topP float32, seed uint64, pos int) gumbel.Choice {
	if temp <= 0 {
		temp = 1
	}
	scale := 1 / float64(temp)
	if topP <= 0 || topP >= 1 {
		return gumbel.Max(logits, scale, seed, pos)
	}
	// Truncate by the nucleus, but keep the logits themselves as the scores:
	// a token inside the nucleus scores exactly as it does untruncated.
	p := Distribution(nil, logits, temp, topP)
	w := make([]float32, len(logits))
	inf := float32(math.Inf(-1))
	for t, pt := range p {
		if pt > 0 {
			w[t] = logits[t]
		} else {
			w[t] = inf
		}
	}
	return gumbel.Max(w, scale, seed, pos)
}
