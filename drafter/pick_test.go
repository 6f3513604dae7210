package drafter

import (
	"errors"
	"testing"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/textgen"
)

func TestPickerModes(t *testing.T) {
	logits := []float32{0, 3, 1, 2.5, -1}
	ds := &draftState{kv: []engine.Token{9, 9, 9}, logits: logits}
	cases := []struct {
		req  textgen.Request
		wire string
	}{
		{textgen.Request{}, ""},
		{textgen.Request{Temperature: 0.8, Seed: 3}, events.SamplingCoupled},
		{textgen.Request{Temperature: 0.8, Sampling: textgen.SamplingPoint}, events.SamplingRejection},
		{textgen.Request{Temperature: 0.8, Sampling: textgen.SamplingTopK, DraftTopK: 2}, events.SamplingRejection},
	}
	for _, tc := range cases {
		p := newPicker(tc.req)
		if got := p.sampling(tc.req).Mode; got != tc.wire {
			t.Errorf("%+v: wire mode %q, want %q", tc.req, got, tc.wire)
		}
		tok, prob, _ := p.next(sameVocab{ds})
		switch p.mode {
		case "", textgen.SamplingPoint:
			if tok != 1 {
				t.Errorf("%+v: drafted %d, want the argmax", tc.req, tok)
			}
		case textgen.SamplingCoupled:
			if want := engine.Coupled(logits, 0.8, 0, 3, 3).Token; tok != want {
				t.Errorf("coupled: drafted %d, want the Gumbel-max at position 3, %d", tok, want)
			}
		case textgen.SamplingTopK:
			if tok != 1 && tok != 3 {
				t.Errorf("top-2: drafted %d, outside the top 2", tok)
			}
			d, err := p.dists(3, []engine.Token{tok})
			if err != nil || len(d) != 1 || len(d[0]) != 2 {
				t.Fatalf("dists %v, %v", d, err)
			}
			for _, tp := range d[0] {
				if tp.Token == tok && tp.Prob != prob {
					t.Errorf("confidence %v, distribution says %v", prob, tp.Prob)
				}
			}
			// A pending token the sampler did not draw is refused, not declared.
			if _, err := p.dists(3, []engine.Token{4}); !errors.Is(err, errNotDrawn) {
				t.Errorf("undrawn token: %v", err)
			}
			// Positions before the committed length are forgotten.
			if _, err := p.dists(4, nil); err != nil || len(p.drawn) != 0 {
				t.Errorf("drawn kept %v (%v)", p.drawn, err)
			}
		}
	}
}
