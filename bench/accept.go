package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
)

// Trace is a draft model's behaviour along the target's greedy continuation of one
// prompt: at every position i of the continuation, whether the draft's own greedy
// choice after prompt+cont[:i] equals cont[i], and the draft's confidence (softmax
// probability) in its choice there.
type Trace struct {
	Agree []bool    `json:"agree"`
	Conf  []float32 `json:"conf"`
}

// Acceptance is the measured agreement of one draft/target pair over several
// prompts. It is what Sampler draws verification rounds from.
type Acceptance struct {
	Target string  `json:"target"`
	Draft  string  `json:"draft"`
	Traces []Trace `json:"traces"`
	// Kinds label the traces' prompts ("code", "prose"), one per trace, when known.
	Kinds []string `json:"kinds,omitempty"`
}

// KindNames lists the distinct prompt kinds, in order of first appearance.
func (a *Acceptance) KindNames() []string {
	var out []string
	for _, k := range a.Kinds {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

// SummaryOf is Summary over the traces of one prompt kind ("" : all of them).
func (a *Acceptance) SummaryOf(kind string, pol drafter.DraftPolicy) AcceptanceSummary {
	if kind == "" || len(a.Kinds) != len(a.Traces) {
		return a.Summary(pol)
	}
	sub := &Acceptance{Target: a.Target, Draft: a.Draft}
	for i, t := range a.Traces {
		if a.Kinds[i] == kind {
			sub.Traces = append(sub.Traces, t)
		}
	}
	return sub.Summary(pol)
}

// Round is one planned verification round: the device drafts Len tokens and the
// target accepts the first Accepted of them (Accepted <= Len), then adds one.
type Round struct {
	Len, Accepted int
}

// RoundAt returns the round a device following pol would make from position p of
// trace t: it drafts while pol.Continue allows (with the confidences measured along
// the target's continuation) and within the trace, and the target accepts the
// leading agreeing tokens.
//
// The draft's confidence after its first wrong token is not observed (the trace
// follows the target's tokens, not the draft's); the confidence at the same
// position of the target's path stands in for it. Accepted is exact.
func (t *Trace) RoundAt(p int, pol drafter.DraftPolicy) Round {
	var r Round
	for p+r.Len < len(t.Conf) && pol.Continue(r.Len, t.Conf[p+r.Len]) {
		r.Len++
	}
	for r.Accepted < r.Len && t.Agree[p+r.Accepted] {
		r.Accepted++
	}
	return r
}

// Positions is the number of positions of all traces.
func (a *Acceptance) Positions() int {
	n := 0
	for _, t := range a.Traces {
		n += len(t.Conf)
	}
	return n
}

// Sampler draws rounds from an Acceptance under a drafting policy: a position
// uniformly over all positions of all traces, then the round made from there.
// Not safe for concurrent use.
type Sampler struct {
	a   *Acceptance
	pol drafter.DraftPolicy
	rng *rand.Rand
	n   int
}

// NewSampler returns a sampler of a's rounds under pol (defaults filled), seeded.
func NewSampler(a *Acceptance, pol drafter.DraftPolicy, seed uint64) *Sampler {
	return &Sampler{a: a, pol: pol.WithDefaults(), rng: rand.New(rand.NewPCG(seed, 0xacce)), n: a.Positions()}
}

// Sample draws one round; Len >= 1 unless the traces are empty.
func (s *Sampler) Sample() Round {
	if s.n == 0 {
		return Round{}
	}
	k := s.rng.IntN(s.n)
	for i := range s.a.Traces {
		t := &s.a.Traces[i]
		if k < len(t.Conf) {
			return t.RoundAt(k, s.pol)
		}
		k -= len(t.Conf)
	}
	panic("unreachable")
}

// AcceptanceSummary describes the round distribution of a pair under a policy,
// computed exactly over every position.
type AcceptanceSummary struct {
	Threshold float32 `json:"threshold"`
	MaxLen    int     `json:"max_len"`
	// MeanLen and MeanAccepted are the mean draft length and accepted tokens per round.
	MeanLen      float64 `json:"mean_len"`
	MeanAccepted float64 `json:"mean_accepted"`
	// Rate is MeanAccepted / MeanLen: the acceptance rate per drafted token.
	Rate float64 `json:"rate"`
	// AcceptedHist[m] is the share of rounds that accept exactly m tokens.
	AcceptedHist []float64 `json:"accepted_hist"`
}

// Summary computes the round distribution under pol over every position.
func (a *Acceptance) Summary(pol drafter.DraftPolicy) AcceptanceSummary {
	pol = pol.WithDefaults()
	s := AcceptanceSummary{Threshold: pol.Threshold, MaxLen: pol.MaxLen, AcceptedHist: make([]float64, pol.MaxLen+1)}
	n := 0
	for i := range a.Traces {
		t := &a.Traces[i]
		for p := range t.Conf {
			r := t.RoundAt(p, pol)
			s.MeanLen += float64(r.Len)
			s.MeanAccepted += float64(r.Accepted)
			s.AcceptedHist[r.Accepted]++
			n++
		}
	}
	if n == 0 {
		return s
	}
	s.MeanLen /= float64(n)
	s.MeanAccepted /= float64(n)
	if s.MeanLen > 0 {
		s.Rate = s.MeanAccepted / s.MeanLen
	}
	for i := range s.AcceptedHist {
		s.AcceptedHist[i] /= float64(n)
	}
	return s
}

// MeasureAcceptance measures a draft/target pair: the target's greedy continuation
// of n tokens for every prompt (one trace per prompt, in order), then, in one forward pass of the draft over
// prompt+continuation, the draft's greedy choice and confidence at every position.
func MeasureAcceptance(ctx context.Context, target, draft *engine.Model, prompts [][]engine.Token, n, threads int) (*Acceptance, error) {
	if err := target.CheckCompatible(draft); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	conts, err := Continuations(ctx, target, prompts, n, threads)
	if err != nil {
		return nil, err
	}
	longest := 0
	for i, p := range prompts {
		longest = max(longest, len(p)+len(conts[i]))
	}
	ectx, err := draft.NewContext(engine.ContextOptions{Slots: 1, SlotContext: longest + 1, BatchSize: longest + 1, Threads: threads})
	if err != nil {
		return nil, fmt.Errorf("bench: draft context: %w", err)
	}
	defer ectx.Close()
	a := &Acceptance{}
	for i, p := range prompts {
		c := conts[i]
		if len(c) == 0 {
			a.Traces = append(a.Traces, Trace{}) // keeps traces aligned with prompts
			continue
		}
		if err := ectx.Clear(0); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		seq := append(append([]engine.Token(nil), p...), c...)
		entries := make([]engine.Entry, len(seq)-1)
		for j := range entries {
			entries[j] = engine.Entry{Seq: 0, Pos: j, Token: seq[j], Logits: j >= len(p)-1}
		}
		rows, err := ectx.Decode(ctx, entries)
		if err != nil {
			return nil, fmt.Errorf("bench: draft pass: %w", err)
		}
		t := Trace{Agree: make([]bool, len(c)), Conf: make([]float32, len(c))}
		for j := range c {
			tok, conf := engine.Top1(rows[j])
			t.Agree[j], t.Conf[j] = tok == c[j], conf
		}
		a.Traces = append(a.Traces, t)
	}
	return a, nil
}

// Continuations returns the model's greedy continuation of up to n tokens of each
// prompt (ending early, without it, at an end-of-generation token), decoding all
// prompts together in one multi-slot context.
func Continuations(ctx context.Context, m *engine.Model, prompts [][]engine.Token, n, threads int) ([][]engine.Token, error) {
	longest := 0
	for _, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("bench: empty prompt")
		}
		longest = max(longest, len(p))
	}
	ectx, err := m.NewContext(engine.ContextOptions{
		Slots: len(prompts), SlotContext: longest + n + 1, BatchSize: max(512, longest, len(prompts)), Threads: threads,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: context: %w", err)
	}
	defer ectx.Close()
	out := make([][]engine.Token, len(prompts))
	next := make([]engine.Token, len(prompts))
	for i, p := range prompts {
		entries := make([]engine.Entry, len(p))
		for j, t := range p {
			entries[j] = engine.Entry{Seq: i, Pos: j, Token: t, Logits: j == len(p)-1}
		}
		rows, err := ectx.Decode(ctx, entries)
		if err != nil {
			return nil, fmt.Errorf("bench: prefill: %w", err)
		}
		next[i] = engine.Argmax(rows[0])
	}
	live := make([]bool, len(prompts))
	for i := range live {
		live[i] = !m.IsEOG(next[i])
	}
	for range n {
		var entries []engine.Entry
		var who []int
		for i := range prompts {
			if !live[i] {
				continue
			}
			out[i] = append(out[i], next[i])
			if len(out[i]) == n {
				live[i] = false
				continue
			}
			entries = append(entries, engine.Entry{Seq: i, Pos: len(prompts[i]) + len(out[i]) - 1, Token: next[i], Logits: true})
			who = append(who, i)
		}
		if len(entries) == 0 {
			break
		}
		rows, err := ectx.Decode(ctx, entries)
		if err != nil {
			return nil, fmt.Errorf("bench: decode: %w", err)
		}
		for k, i := range who {
			next[i] = engine.Argmax(rows[k])
			if m.IsEOG(next[i]) {
				live[i] = false
			}
		}
	}
	return out, nil
}
