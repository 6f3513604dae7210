// Package gumbel is SLED's shared-randomness (coupled) sampler: the token at
// each position of a sequence is the Gumbel-max of the distribution there,
//
//	argmax_t  w[t]/T + G(seed, pos, t),
//
// with w the logits (or log-probabilities), T the temperature and G standard
// Gumbel noise that is a pure function of the seed, the token's absolute
// position in the sequence (prompt included) and the token id. The Gumbel-max
// of a distribution is an exact sample of it, and noise at different positions
// is independent, so a sequence generated this way is an exact sample of the
// model's autoregressive distribution, and a pure function of the seed and the
// prompt.
//
// Speculative decoding gains twice. A device that drafts with the same noise
// over its own logits drafts exactly the target's sample wherever the two
// models agree closely enough, so the verifier accepts a draft token while its
// own Gumbel-max equals it (no draft probabilities travel); and the output is
// identical for a given seed whatever device, draft model, batch or
// speculation length served it, and identical to the centralized server's.
//
// The noise is counter-based (a SplitMix64 stream keyed by seed and position),
// so any party computes any position's noise without shared state. Max skips
// the exact noise of almost every token by an upper bound read from a table,
// exactly: the result is the one a full evaluation gives.
//
// The package is pure and safe for concurrent use.
package gumbel

import "math"

const golden = 0x9E3779B97F4A7C15

// mix is SplitMix64's output function.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// key is the stream key of (seed, pos).
func key(seed uint64, pos int) uint64 {
	return mix(seed ^ mix(uint64(pos)*golden+0x5EED))
}

// bits is the raw 64-bit draw of token tok in the stream key: element tok of
// the SplitMix64 sequence seeded with key.
func bits(key uint64, tok int) uint64 { return mix(key + uint64(tok+1)*golden) }

// uniform maps a draw to (0, 1): its top 53 bits, centred in their interval,
// so neither 0 nor 1 occurs.
func uniform(b uint64) float64 { return (float64(b>>11) + 0.5) * (1.0 / (1 << 53)) }

// gumbelOf is the standard Gumbel variable of a uniform u in (0, 1).
func gumbelOf(u float64) float64 { return -math.Log(-math.Log(u)) }

// Noise is the standard Gumbel noise of token tok at absolute position pos
// under seed.
func Noise(seed uint64, pos int, tok int32) float64 {
	return gumbelOf(uniform(bits(key(seed, pos), int(tok))))
}

// Uniform is the uniform (0, 1) variable behind Noise(seed, pos, tok).
func Uniform(seed uint64, pos int, tok int32) float64 {
	return uniform(bits(key(seed, pos), int(tok)))
}

// bucketBits of a draw select its bucket; upper[b] bounds the Gumbel noise of
// every draw in bucket b (the noise is increasing in the draw).
const bucketBits = 16

var upper = func() *[1 << bucketBits]float64 {
	var u [1 << bucketBits]float64
	for b := range u {
		if b == len(u)-1 {
			u[b] = math.Inf(1) // draws up to 1: unbounded
			continue
		}
		// Every draw of bucket b is below (b+1)/2^16; the margin covers rounding
		// in gumbelOf.
		g := gumbelOf(float64(b+1) / (1 << bucketBits))
		u[b] = g + 1e-9*(1+math.Abs(g))
	}
	return &u
}()

// Choice is the outcome of Max.
type Choice struct {
	// Token is the winning token.
	Token int32
	// Margin is the winner's perturbed score less the runner-up's (+Inf with
	// one candidate): how far the choice is from a tie, in units of w/T. Two
	// computations of the same logits that differ by less than about Margin
	// agree on the token; a difference in output with a small margin is a
	// near-tie, not a bug.
	Margin float64
}

// Max returns the Gumbel-max of scale*w[t] over the tokens t with a finite
// w[t] (-Inf excludes a token: a truncated distribution), with the noise of
// (seed, pos): the sample at temperature 1/scale. Ties go to the lower id.
// w must hold at least one finite value; scale must be > 0.
func Max(w []float32, scale float64, seed uint64, pos int) Choice {
	k := key(seed, pos)
	best, second := math.Inf(-1), math.Inf(-1)
	tok := int32(-1)
	// Evaluating the most likely token first makes the bounds bite at once.
	top := -1
	for t, v := range w {
		if top < 0 || v > w[top] {
			top = t
		}
	}
	if top < 0 || math.IsInf(float64(w[top]), -1) {
		return Choice{Token: -1, Margin: math.NaN()}
	}
	consider := func(t int, s float64, b uint64) {
		v := s + gumbelOf(uniform(b))
		switch {
		case v > best || (v == best && int32(t) < tok):
			second, best, tok = best, v, int32(t)
		case v > second:
			second = v
		}
	}
	consider(top, scale*float64(w[top]), bits(k, top))
	for t, v := range w {
		if t == top || math.IsInf(float64(v), -1) {
			continue
		}
		s := scale * float64(v)
		b := bits(k, t)
		// The token's noise is below upper[bucket]; if even that cannot beat
		// the runner-up it changes neither the winner nor the margin.
		if s+upper[b>>(64-bucketBits)] < second {
			continue
		}
		consider(t, s, b)
	}
	return Choice{Token: tok, Margin: best - second}
}
