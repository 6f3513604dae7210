package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/verifier"
)

// TestCrossVocabLosslessThroughAPI: SmolLM2-135M (vocabulary 49,152) drafts
// for the Qwen2.5-Coder 1.5B target (151,936) across vocabularies, through the
// OpenAI chat endpoint: greedy output equals the 1.5B's own decoding, every
// difference a near-tie shown with its margin, and the cross-vocabulary drafts
// are accepted (at least one token per round on code: the mapping works, it
// does not just fall back to plain decoding). Without the cross-vocabulary
// mode the draft is refused at start, and the error says how to allow it.
func TestCrossVocabLosslessThroughAPI(t *testing.T) {
	const maxTokens = 48
	ctx := context.Background()
	target := testmodels.Real(t, testmodels.QwenTarget)
	smol := testmodels.Real(t, modelcache.SmolLM2)
	up := services.UpConfig{
		Target: target, Drafts: []string{smol}, HTTPAddr: "127.0.0.1:0",
		Verifier: verifier.Config{Threads: engine.DefaultThreads()},
		Retry:    drafter.RetryPolicy{Timeout: 30 * time.Second},
		Budget:   goodput.Policy{Static: true}, // acceptance is measured
	}
	if _, err := services.Start(ctx, up); err == nil || !strings.Contains(err.Error(), "--cross-vocab") {
		t.Fatalf("a draft with another tokenizer started without the cross-vocabulary mode, or the error does not name it: %v", err)
	}
	up.CrossVocab = true
	s := start(t, up)
	tm := s.Target()
	if m := s.Generators()[0].Generator.Model(); m.Fingerprint() != tm.Fingerprint() {
		t.Fatalf("the cross-vocabulary device speaks vocabulary %.12s, not the target's %.12s", m.Fingerprint(), tm.Fingerprint())
	}
	var codeRounds, codeAccepted int
	for i, p := range []bench.Prompt{realPrompts[0], realPrompts[1], realPrompts[3], realPrompts[4]} {
		n, zero := maxTokens, 0.0
		client := &httpapi.Client{BaseURL: "http://" + s.HTTPAddr()}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		resp, err := client.Chat(rctx, httpapi.ChatCompletionRequest{
			Messages:  []httpapi.ChatMessage{{Role: "user", Content: httpapi.MessageContent(p.Text)}},
			MaxTokens: &n, Temperature: &zero,
		}, nil)
		cancel()
		if err != nil {
			t.Fatalf("prompt %d: %v", i+1, err)
		}
		got, st := string(resp.Choices[0].Message.Content), resp.SLED
		prompt, err := promptTokens(tm, p.Text)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := bench.GreedyReference(ctx, tm, prompt, maxTokens, engine.DefaultThreads())
		if err != nil {
			t.Fatal(err)
		}
		if checkAgainst(t, tm, ref, got, fmt.Sprintf("prompt %d (%s)", i+1, p.Kind)) {
			t.Logf("prompt %d (%s): identical, %d rounds, %.2f accepted/round", i+1, p.Kind, st.Rounds, float64(st.Accepted)/float64(max(st.Rounds, 1)))
		}
		if p.Kind == "code" {
			codeRounds += st.Rounds
			codeAccepted += st.Accepted
		}
	}
	// Coupled sampling: a cross-vocabulary device drafts greedily, and its
	// seeded text is still the target's own seeded sample.
	n, temp, seed := maxTokens, 0.8, int64(11)
	client := &httpapi.Client{BaseURL: "http://" + s.HTTPAddr()}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	resp, err := client.Chat(rctx, httpapi.ChatCompletionRequest{
		Messages:  []httpapi.ChatMessage{{Role: "user", Content: httpapi.MessageContent(realPrompts[2].Text)}},
		MaxTokens: &n, Temperature: &temp, Seed: &seed,
	}, nil)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	prompt, _ := promptTokens(tm, realPrompts[2].Text)
	ref, err := bench.CoupledReference(ctx, tm, prompt, maxTokens, engine.DefaultThreads(), float32(temp), 0, uint64(seed))
	if err != nil {
		t.Fatal(err)
	}
	checkAgainst(t, tm, ref, string(resp.Choices[0].Message.Content), "coupled sampling across vocabularies")

	apr := float64(codeAccepted) / float64(max(codeRounds, 1))
	t.Logf("code: SmolLM2 drafts accepted %.2f tokens per round across vocabularies", apr)
	if apr < 1 {
		t.Errorf("cross-vocabulary drafts accepted %.2f tokens per round on code, want at least 1 (measured 2.05 with sled bench lossless)", apr)
	}
}
