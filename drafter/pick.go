package drafter

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/textgen"
)

// picker chooses a generation's draft tokens by its sampling mode:
//
//   - greedy, or textgen.SamplingPoint at a temperature: the draft model's
//     argmax, with its probability at temperature 1 as the confidence;
//   - textgen.SamplingCoupled: the draft model's Gumbel-max with the noise of
//     (seed, position), the target's own sample wherever the two models agree
//     (engine.Coupled), with the draft model's probability of it at the
//     request's temperature as the confidence;
//   - textgen.SamplingTopK: a sample from the draft model's top-k distribution
//     at the request's temperature, which it keeps, by position, for the
//     round's event (the rejection rule needs it).
//
// The position of a token is its index in the whole sequence, prompt
// included: the length of the draft context before it. Not safe for
// concurrent use (a generation drafts on one goroutine).
type picker struct {
	mode  string // textgen mode, "" when greedy
	temp  float32
	topP  float32
	seed  uint64
	topK  int
	rng   *rand.Rand
	drawn map[int]drawn // SamplingTopK: by position
}

// drawn is a token sampled from a top-k distribution.
type drawn struct {
	token engine.Token
	dist  []engine.TokenProb
}

func newPicker(req textgen.Request) picker {
	p := picker{temp: req.Temperature, topP: req.TopP, seed: req.Seed}
	if req.Temperature <= 0 {
		return p
	}
	p.mode = req.Sampling
	if p.mode == "" {
		p.mode = textgen.SamplingCoupled
	}
	if p.mode == textgen.SamplingTopK {
		p.topK = req.DraftTopK
		if p.topK <= 0 {
			p.topK = textgen.DefaultDraftTopK
		}
		p.rng = rand.New(rand.NewPCG(req.Seed, 0xd4af7))
		p.drawn = make(map[int]drawn)
	}
	return p
}

// next is the draft token after the context ds holds, and the draft model's
// confidence in it; ok false when ds has nothing to draft. A draft model with
// another vocabulary has no logits over the target's: it drafts by its own
// argmax in every mode (coupled verification stays exact and reproducible
// with any drafts; top-k then declares the point mass).
func (p *picker) next(ds draftSource) (engine.Token, float32, bool) {
	row, pos, ok := ds.logits()
	if !ok {
		t, prob, ok := ds.peek()
		if ok && p.drawn != nil {
			p.drawn[pos] = drawn{token: t, dist: []engine.TokenProb{{Token: t, Prob: 1}}}
		}
		return t, prob, ok
	}
	switch p.mode {
	case textgen.SamplingCoupled:
		t := engine.Coupled(row, p.temp, p.topP, p.seed, pos).Token
		return t, probAt(row, t, p.temp), true
	case textgen.SamplingTopK:
		dist := engine.TopK(row, p.topK, p.temp)
		u := p.rng.Float32()
		d := dist[len(dist)-1]
		for _, tp := range dist {
			if u -= tp.Prob; u <= 0 {
				d = tp
				break
			}
		}
		p.drawn[pos] = drawn{token: d.Token, dist: dist}
		return d.Token, d.Prob, true
	}
	return ds.peek()
}

// errNotDrawn is a pending draft token the top-k sampler did not draw at its
// position: a bug, reported rather than a wrong distribution declared (which
// would bias the output silently).
var errNotDrawn = errors.New("drafter: a pending draft token was not drawn by the top-k sampler")

// dists returns the top-k distributions of the pending draft tokens, which
// start at position start; nil outside SamplingTopK. It forgets the positions
// before start (committed for good).
func (p *picker) dists(start int, pending []engine.Token) ([][]engine.TokenProb, error) {
	if p.drawn == nil {
		return nil, nil
	}
	for pos := range p.drawn {
		if pos < start {
			delete(p.drawn, pos)
		}
	}
	out := make([][]engine.TokenProb, len(pending))
	for i, t := range pending {
		d, ok := p.drawn[start+i]
		if !ok || d.token != t {
			return nil, fmt.Errorf("%w (position %d)", errNotDrawn, start+i)
		}
		out[i] = d.dist
	}
	return out, nil
}

// sampling is the sampling settings a round's event carries.
func (p *picker) sampling(req textgen.Request) events.Sampling {
	s := events.Sampling{Temperature: req.Temperature, TopP: req.TopP, Seed: req.Seed}
	switch {
	case req.Temperature <= 0:
	case p.mode == textgen.SamplingCoupled:
		s.Mode = events.SamplingCoupled
	default:
		s.Mode = events.SamplingRejection
	}
	return s
}

// probAt is the softmax probability of t under logits at temperature temp.
func probAt(logits []float32, t engine.Token, temp float32) float32 {
	if temp <= 0 {
		temp = 1
	}
	m := logits[engine.Argmax(logits)]
	inv := 1 / float64(temp)
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v-m) * inv)
	}
	return float32(math.Exp(float64(logits[t]-m)*inv) / sum)
}
