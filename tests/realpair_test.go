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

// realPrompts are the real-pair prompts: three code and three prose requests.
var realPrompts = []bench.Prompt{
	{Kind: "code", Text: "Write a Python function that checks whether a number is prime."},
	{Kind: "code", Text: "Write a Go function that reverses a string."},
	{Kind: "code", Text: "Write a JavaScript function that debounces another function."},
	{Kind: "prose", Text: "Explain in a short paragraph why the sky is blue."},
	{Kind: "prose", Text: "Write a short story about a lighthouse keeper."},
	{Kind: "prose", Text: "Describe the water cycle to a ten-year-old."},
}

// TestRealPairLosslessThroughAPI serves the Qwen2.5-Coder pair (0.5B drafts, one
// of them requantized to Q4_0, the 1.5B verifying) through the OpenAI chat
// endpoint and compares every answer with the 1.5B's own greedy decoding, token by
// token, one sequence. Every difference must be a near-tie of the reference
// (bench.NearTieGap), shown with its margin, and code prompts must accept at
// least 2 draft tokens per round on average.
func TestRealPairLosslessThroughAPI(t *testing.T) {
	const maxTokens = 64
	ctx := context.Background()
	drafts := realDrafts(t)
	target := testmodels.Real(t, testmodels.QwenTarget)
	s := start(t, services.UpConfig{
		Target: target, Drafts: drafts, HTTPAddr: "127.0.0.1:0",
		Verifier: verifier.Config{Threads: engine.DefaultThreads()},
		Retry:    drafter.RetryPolicy{Timeout: 30 * time.Second},
		// The pair's acceptance is measured (issue 9: at least 2 accepted
		// tokens per round on code), so the devices draft by their own
		// policy: draft budgets would hold them near 0 on a fast 2-core
		// server (docs/benchmarks.md, "Draft budgets"). Lossless under
		// budgets is TestLosslessAgainstCentralized's and
		// TestDraftBudgetsOnTheWire's.
		Budget: goodput.Policy{Static: true},
	})
	tm := s.Target()
	var codeRounds, codeAccepted int
	for i, p := range realPrompts {
		dev := s.Generators()[i%len(s.Generators())].Name
		n := maxTokens
		zero := 0.0
		client := &httpapi.Client{BaseURL: "http://" + s.HTTPAddr(), Device: dev}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		resp, err := client.Chat(rctx, httpapi.ChatCompletionRequest{
			Messages:  []httpapi.ChatMessage{{Role: "user", Content: httpapi.MessageContent(p.Text)}},
			MaxTokens: &n, Temperature: &zero,
		}, nil)
		cancel()
		if err != nil {
			t.Fatalf("prompt %d on %s: %v", i+1, dev, err)
		}
		got := string(resp.Choices[0].Message.Content)
		st := resp.SLED
		prompt, err := promptTokens(tm, p.Text)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := bench.GreedyReference(ctx, tm, prompt, maxTokens, engine.DefaultThreads())
		if err != nil {
			t.Fatal(err)
		}
		d := textDiff(tm, ref, got)
		apr := float64(st.Accepted) / float64(max(st.Rounds, 1))
		switch {
		case d.FirstDiff < 0:
			t.Logf("prompt %d (%s) on %s: identical, %d tokens, %d rounds, %.2f accepted/round", i+1, p.Kind, dev, len(ref.Tokens), st.Rounds, apr)
		case d.NearTie():
			t.Logf("prompt %d (%s) on %s: near-tie at token %d: reference %q, SLED %q, %.3f below it in the reference (top-2 gap %.3f); %.2f accepted/round",
				i+1, p.Kind, dev, d.FirstDiff, tm.Piece(d.RefToken), tm.Piece(d.GotToken), d.GotGap, d.Gap, apr)
		default:
			t.Errorf("prompt %d (%s) on %s: differs from the target at token %d with a clear margin: reference %q (top-2 gap %.3f), SLED's token gap %.3f (-1: not a runner-up), near-tie bound %.2f\nSLED: %q\nref:  %q",
				i+1, p.Kind, dev, d.FirstDiff, tm.Piece(d.RefToken), d.Gap, d.GotGap, bench.NearTieGap, got, tm.Detokenize(ref.Tokens))
		}
		if p.Kind == "code" {
			codeRounds += st.Rounds
			codeAccepted += st.Accepted
		}
	}
	apr := float64(codeAccepted) / float64(max(codeRounds, 1))
	t.Logf("code prompts: %d accepted in %d rounds: %.2f accepted tokens per round", codeAccepted, codeRounds, apr)
	if apr < 2 {
		t.Errorf("code prompts accept %.2f draft tokens per round; the pair accepts 3.0-3.8 at k = 4 offline, want at least 2", apr)
	}
}

// realDrafts are the qwen pair's drafts (the 0.5B twice and its Q4_0
// requantization), fetched or derived on first use.
func realDrafts(t testing.TB) []string {
	t.Helper()
	pair, _ := modelcache.LookupPair(modelcache.PairQwen)
	var drafts []string
	for _, d := range pair.Drafts {
		p, err := services.FindModel(context.Background(), d, services.FindOptions{Fetch: modelcache.FetchOptions{}})
		if err != nil {
			t.Fatal(err)
		}
		drafts = append(drafts, p)
	}
	return drafts
}

func promptTokens(m *engine.Model, text string) ([]engine.Token, error) {
	s, _ := m.FormatChat([]engine.ChatMessage{{Role: "user", Content: text}}, true)
	return m.TokenizeSpecial(s, true)
}

// textDiff compares the API's text with the reference's tokens: the first
// reference token whose text is not where got continues. got's token there is
// taken to be the reference runner-up whose text got continues with, if any.
func textDiff(m *engine.Model, ref *bench.Reference, got string) bench.Diff {
	prefix := ""
	for i, tok := range ref.Tokens {
		next := prefix + string(m.Piece(tok))
		if !strings.HasPrefix(got, next) {
			alt := engine.Token(-1)
			for _, a := range ref.Alts[i] {
				if p := string(m.Piece(a.Token)); p != "" && strings.HasPrefix(got[len(prefix):], p) {
					alt = a.Token
					break
				}
			}
			return ref.DiffAt(i, alt)
		}
		prefix = next
	}
	if prefix != got {
		return ref.DiffAt(len(ref.Tokens), -1)
	}
	return bench.Diff{FirstDiff: -1}
}

// TestRealPairCoupledSampling: on the Qwen2.5-Coder pair at temperature 0.8,
// the same chat prompt and seed give the same text on both devices (the 0.5B
// and its Q4_0 requantization drafting) and in centralized mode, equal to the
// 1.5B alone's coupled sample; a difference must be a near-tie of that
// reference, shown with its margin.
func TestRealPairCoupledSampling(t *testing.T) {
	const maxTokens, temp = 32, 0.8
	ctx := context.Background()
	drafts := realDrafts(t)
	target := testmodels.Real(t, testmodels.QwenTarget)
	up := services.UpConfig{
		Target: target, Drafts: drafts, Devices: len(drafts), HTTPAddr: "127.0.0.1:0",
		Verifier: verifier.Config{Threads: engine.DefaultThreads()},
		Retry:    drafter.RetryPolicy{Timeout: 30 * time.Second},
	}
	s := start(t, up)
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Target: target, Devices: 1, HTTPAddr: "127.0.0.1:0"})
	tm := s.Target()
	seed := int64(7)
	var identical, texts, rounds, accepted int
	for _, p := range []bench.Prompt{realPrompts[0], realPrompts[4]} {
		prompt, err := promptTokens(tm, p.Text)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := bench.CoupledReference(ctx, tm, prompt, maxTokens, engine.DefaultThreads(), temp, 0, uint64(seed))
		if err != nil {
			t.Fatal(err)
		}
		targets := append(append([]httpapi.Device(nil), s.Generators()...), central.Generators()...)
		for i, g := range targets {
			addr := s.HTTPAddr()
			if i >= len(s.Generators()) {
				addr = central.HTTPAddr()
			}
			n, tmp := maxTokens, temp
			client := &httpapi.Client{BaseURL: "http://" + addr, Device: g.Name}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			resp, err := client.Chat(rctx, httpapi.ChatCompletionRequest{
				Messages:  []httpapi.ChatMessage{{Role: "user", Content: httpapi.MessageContent(p.Text)}},
				MaxTokens: &n, Temperature: &tmp, Seed: &seed,
			}, nil)
			cancel()
			if err != nil {
				t.Fatalf("%s: %v", g.Name, err)
			}
			if checkAgainst(t, tm, ref, string(resp.Choices[0].Message.Content), fmt.Sprintf("%s prompt on %s", p.Kind, g.Name)) {
				identical++
			}
			texts++
			if st := resp.SLED; st != nil && i < len(s.Generators()) {
				rounds += st.Rounds
				accepted += st.Accepted
			}
		}
	}
	t.Logf("%d of %d texts identical to the 1.5B's seeded sample; devices accepted %.2f draft tokens per round", identical, texts, float64(accepted)/float64(max(rounds, 1)))
	if identical < texts/2 {
		t.Errorf("only %d of %d texts identical to the reference", identical, texts)
	}
}
