package tests

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
)

// generate runs one request on g and returns its tokens and logprobs as emitted.
func generate(t *testing.T, g textgen.Generator, prompt string, req textgen.Request) ([]engine.Token, []textgen.Logprob) {
	t.Helper()
	p, err := g.Model().Tokenize(prompt, true)
	if err != nil {
		t.Fatal(err)
	}
	req.Prompt = p
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var toks []engine.Token
	var lps []textgen.Logprob
	_, err = g.Generate(ctx, req, func(c textgen.Chunk) error {
		toks = append(toks, c.Tokens...)
		if req.Logprobs && len(c.Logprobs) != len(c.Tokens) {
			t.Errorf("chunk of %d tokens carries %d logprobs", len(c.Tokens), len(c.Logprobs))
		}
		lps = append(lps, c.Logprobs...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return toks, lps
}

// A SLED device's logprobs are the target's, taken from its verification logits:
// they equal the centralized server's (the target alone) to within llama.cpp's
// batched-kernel noise, and under greedy decoding every token heads its own
// alternatives. top_p is honoured through the verifier: a nucleus that holds
// only the likeliest token makes sampling greedy.
func TestLogprobsAreTheTargets(t *testing.T) {
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Devices: 1})
	s := start(t, services.UpConfig{Drafts: []string{testmodels.Path(t, testmodels.Draft4L)}, Devices: 1})
	ref, dev := central.Generators()[0].Generator, s.Generators()[0].Generator
	req := textgen.Request{MaxTokens: 32, Logprobs: true, TopLogprobs: 3}
	compared := 0
	for _, p := range prompts[:4] {
		wantToks, want := generate(t, ref, p, req)
		gotToks, got := generate(t, dev, p, req)
		if len(got) != len(gotToks) || len(want) != len(wantToks) {
			t.Fatalf("%q: %d logprobs for %d tokens (reference %d for %d)", p, len(got), len(gotToks), len(want), len(wantToks))
		}
		for i, lp := range got {
			if lp.Token != gotToks[i] || lp.Draft || len(lp.Top) != 3 {
				t.Errorf("%q token %d: %+v", p, i, lp)
				continue
			}
			if lp.Top[0].Token != lp.Token && lp.Top[0].Logprob-lp.Logprob > nearTie {
				t.Errorf("%q token %d: greedy output %d is not the likeliest (%+v)", p, i, lp.Token, lp.Top)
			}
			if i >= len(wantToks) || wantToks[i] != gotToks[i] {
				break // the texts part at a near-tie (TestLosslessAgainstCentralized); figures after it differ
			}
			if d := math.Abs(float64(lp.Logprob - want[i].Logprob)); d > 2e-2 {
				t.Errorf("%q token %d: SLED logprob %.5f, target alone %.5f", p, i, lp.Logprob, want[i].Logprob)
			}
			compared++
		}
	}
	if compared < 64 {
		t.Errorf("only %d logprobs compared", compared)
	}
	t.Logf("%d logprobs equal to the target alone's within 2e-2", compared)

	greedy, _ := generate(t, dev, prompts[0], textgen.Request{MaxTokens: 24})
	nucleus, _ := generate(t, dev, prompts[0], textgen.Request{MaxTokens: 24, Temperature: 1.5, TopP: 1e-6, Seed: 7})
	hot, _ := generate(t, dev, prompts[0], textgen.Request{MaxTokens: 24, Temperature: 1.5, Seed: 7})
	if !engineEqual(nucleus, greedy) {
		t.Errorf("top_p 1e-6 at temperature 1.5 gave %v, greedy %v", nucleus, greedy)
	}
	if engineEqual(hot, greedy) {
		t.Errorf("temperature 1.5 without top_p gave the greedy text: the test cannot tell top_p apart")
	}
}

func engineEqual(a, b []engine.Token) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
