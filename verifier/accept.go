package verifier

import (
	"math"
	"math/rand/v2"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
)

// AcceptInput is what the acceptance rule sees for one sequence of a batch.
type AcceptInput struct {
	// Draft holds the device's draft tokens, in order.
	Draft []engine.Token
	// DraftProbs[i] is the draft model's probability of Draft[i] (its confidence).
	// Optional under greedy decoding.
	DraftProbs []float32
	// DraftDists[i], when present, is the draft model's distribution at draft
	// position i as sparse top-k (renormalised); sampling uses it to form the
	// residual distribution on rejection. Without it the draft distribution is
	// taken to be all mass on Draft[i] with probability DraftProbs[i].
	DraftDists [][]engine.TokenProb
	// Target[i] is the target's logits row after the committed prefix and
	// Draft[:i]; len(Target) == len(Draft)+1, the last row giving the bonus token.
	Target [][]float32
	// Temperature 0 selects greedy acceptance; > 0 selects speculative sampling.
	Temperature float32
	// TopP truncates the target's distribution when sampling (engine.Nucleus);
	// 0 or 1: none. The rule stays exact for the truncated distribution: it is the
	// p of the rejection rule.
	TopP float32
	// Rand drives the rejection rule; unused when greedy or coupled.
	Rand *rand.Rand
	// Coupled selects shared-randomness sampling (events.SamplingCoupled) at
	// Temperature > 0: the token at absolute position p is
	// engine.Coupled(row, Temperature, TopP, Seed, p), Draft[0] sitting at
	// position Pos. DraftProbs, DraftDists and Rand are not used.
	Coupled bool
	Seed    uint64
	Pos     int
}

// Verdict is the outcome for one sequence: Draft[:Accepted] are accepted and Next
// follows them, as the correction of Draft[Accepted] when Accepted < len(Draft) or
// as the bonus token when every draft token was accepted.
type Verdict struct {
	Accepted int
	Next     engine.Token
}

// Accept is SLED's acceptance rule. The output it leads to is exactly the target
// model's own: with Temperature 0, token for token the target's greedy decoding
// (accept while the draft token is the target's argmax; Next is the target's
// argmax at the first disagreement); with Temperature > 0, a sample from the
// target's distribution at Temperature truncated to TopP (the rejection rule of Leviathan et al., 2023: accept
// Draft[i] with probability min(1, p(x)/q(x)); on rejection sample Next from
// norm(max(0, p-q)); if all are accepted sample the bonus token from p).
//
// With Coupled set (and Temperature > 0) the rule is greedy acceptance
// against the target's coupled samples instead of its argmax: accept while the
// draft token is the target's Gumbel-max at its position; Next is the target's
// Gumbel-max at the first disagreement (or after the last draft token). The
// outcome is then the target's coupled sample of the sequence, which depends
// on the seed and the positions only, not on the draft.
//
// Accept is a pure function of its input (and the state of in.Rand).
func Accept(in AcceptInput) Verdict {
	switch {
	case in.Temperature <= 0:
		return acceptGreedy(in)
	case in.Coupled:
		return acceptCoupled(in)
	}
	return acceptSampling(in)
}

func acceptCoupled(in AcceptInput) Verdict {
	for i, d := range in.Draft {
		if t := engine.Coupled(in.Target[i], in.Temperature, in.TopP, in.Seed, in.Pos+i).Token; t != d {
			return Verdict{Accepted: i, Next: t}
		}
	}
	n := len(in.Draft)
	return Verdict{Accepted: n, Next: engine.Coupled(in.Target[n], in.Temperature, in.TopP, in.Seed, in.Pos+n).Token}
}

func acceptGreedy(in AcceptInput) Verdict {
	for i, d := range in.Draft {
		if t := engine.Argmax(in.Target[i]); t != d {
			return Verdict{Accepted: i, Next: t}
		}
	}
	return Verdict{Accepted: len(in.Draft), Next: engine.Argmax(in.Target[len(in.Draft)])}
}

func acceptSampling(in AcceptInput) Verdict {
	var p []float32
	for i, d := range in.Draft {
		p = engine.Distribution(p, in.Target[i], in.Temperature, in.TopP)
		q := draftDist(in, i)
		qd := q[d]
		if qd <= 0 {
			qd = float32(math.SmallestNonzeroFloat32)
		}
		if in.Rand.Float32() < min(1, p[d]/qd) {
			continue
		}
		// Rejected: sample from the residual max(0, p - q), renormalised.
		var mass float64
		for t, pt := range p {
			r := pt - q[engine.Token(t)]
			if r > 0 {
				mass += float64(r)
			}
		}
		if mass <= 0 { // p == q where it matters: fall back to p itself
			return Verdict{Accepted: i, Next: engine.Sample(in.Rand, p)}
		}
		u := in.Rand.Float64() * mass
		last := engine.Token(0)
		for t, pt := range p {
			r := pt - q[engine.Token(t)]
			if r <= 0 {
				continue
			}
			last = engine.Token(t)
			if u -= float64(r); u <= 0 {
				return Verdict{Accepted: i, Next: engine.Token(t)}
			}
		}
		return Verdict{Accepted: i, Next: last}
	}
	p = engine.Distribution(p, in.Target[len(in.Draft)], in.Temperature, in.TopP)
	return Verdict{Accepted: len(in.Draft), Next: engine.Sample(in.Rand, p)}
}

// draftDist is the draft distribution at position i as a sparse map.
func draftDist(in AcceptInput, i int) map[engine.Token]float32 {
	if i < len(in.DraftDists) && len(in.DraftDists[i]) > 0 {
		q := make(map[engine.Token]float32, len(in.DraftDists[i]))
		for _, tp := range in.DraftDists[i] {
			q[tp.Token] = tp.Prob
		}
		return q
	}
	prob := float32(1)
	if i < len(in.DraftProbs) {
		prob = in.DraftProbs[i]
	}
	return map[engine.Token]float32{in.Draft[i]: prob}
}

// OutcomeLogprobs is the target's log-probability of each token of a round's
// outcome (the accepted draft tokens, then the correction or bonus token), with
// the top alternatives at each position: rows[i] is the logits row the i-th
// output token was chosen from (AcceptInput.Target). It is what a verify.result
// carries when the draft asks for logprobs, taken from the raw rows (temperature
// 1, no truncation), as vLLM and OpenAI report them.
func OutcomeLogprobs(rows [][]float32, out []engine.Token, top int) []events.TokenLogprob {
	lps := make([]events.TokenLogprob, len(out))
	for i, t := range out {
		lp, alts := engine.Logprobs(rows[i], t, top)
		lps[i].Logprob = min(lp, 0)
		for _, a := range alts {
			lps[i].Top = append(lps[i].Top, events.TopLogprob{Token: a.Token, Logprob: min(a.Logprob, 0)})
		}
	}
	return lps
}
