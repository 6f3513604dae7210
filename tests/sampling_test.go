package tests

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/internal/chisq"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
)

// sampled posts one seeded completion to the device dev of the API at addr.
func sampled(t testing.TB, addr, dev, prompt string, n int, temp float64, seed *int64, mode string) *httpapi.Completion {
	t.Helper()
	client := &httpapi.Client{BaseURL: "http://" + addr, Device: dev}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req := httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(prompt), MaxTokens: &n, Temperature: &temp, Seed: seed}
	if mode != "" {
		req.SLED = &httpapi.RequestOptions{Sampling: &mode}
	}
	resp, err := client.Complete(ctx, req, nil)
	if err != nil {
		t.Fatalf("device %s, prompt %q: %v", dev, prompt, err)
	}
	return resp
}

// checkAgainst compares an API text with the target's own output (a greedy
// or a coupled-sampling bench.Reference): it must be identical or part at a
// near-tie of the reference, shown with its margin. It reports whether the
// text was identical.
func checkAgainst(t testing.TB, m *engine.Model, ref *bench.Reference, got, who string) bool {
	t.Helper()
	d := textDiff(m, ref, got)
	switch {
	case d.Identical():
		return true
	case d.NearTie():
		t.Logf("%s: near-tie at token %d: reference %q, got %q, %.3f below it in the reference (top-2 gap %.3f)",
			who, d.FirstDiff, m.Piece(d.RefToken), m.Piece(d.GotToken), d.GotGap, d.Gap)
	default:
		t.Errorf("%s: differs from the target's output at token %d with a clear margin: reference %q (top-2 gap %.3f), got's gap %.3f (-1: not a runner-up)\ngot: %q\nref: %q",
			who, d.FirstDiff, m.Piece(d.RefToken), d.Gap, d.GotGap, got, m.Detokenize(ref.Tokens))
	}
	return false
}

// Coupled sampling through the HTTP API: the same prompt and seed at
// temperature 0.8 give the same text on every device (three different drafts:
// 4 and 3 blocks of the target, and a Q8_0 requantization) and in centralized
// mode, equal to the target alone's coupled sample (bench.CoupledReference),
// near-ties shown with their margins. The response names the mode and the
// seed, and a drawn seed sent back reproduces the text. Point-mass sampling
// (the rejection rule) is exact but not reproducible: on the same requests
// its texts differ between devices, which is what the test would miss if it
// could not tell the two apart.
func TestCoupledSamplingReproducibleThroughAPI(t *testing.T) {
	const n, temp = 48, 0.8
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L), requantized(t)}
	// The paper's fixed length: the point-mass control below needs drafts, and
	// on a compute-bound CPU the goodput policy holds the budgets at 0 (the
	// verifier then samples every token itself, alike on every device).
	sled := start(t, services.UpConfig{Drafts: drafts, Devices: 3, HTTPAddr: "127.0.0.1:0", Budget: goodput.Policy{Static: true}})
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Devices: 1, HTTPAddr: "127.0.0.1:0"})
	m := sled.Target()
	seed := int64(42)
	var identical, texts, pointDiffer int
	for _, p := range prompts[:4] {
		prompt, err := m.Tokenize(p, true)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := bench.CoupledReference(context.Background(), m, prompt, n, engine.DefaultThreads(), temp, 0, uint64(seed))
		if err != nil {
			t.Fatal(err)
		}
		var point []string
		for _, g := range sled.Generators() {
			resp := sampled(t, sled.HTTPAddr(), g.Name, p, n, temp, &seed, "")
			st := resp.SLED
			if st == nil || st.Sampling != textgen.SamplingCoupled || st.Seed == nil || *st.Seed != seed {
				t.Fatalf("%s: the response's sled object %+v does not report coupled sampling with seed %d", g.Name, st, seed)
			}
			if checkAgainst(t, m, ref, resp.Choices[0].Text, fmt.Sprintf("%q on %s", p, g.Name)) {
				identical++
			}
			texts++
			point = append(point, sampled(t, sled.HTTPAddr(), g.Name, p, n, temp, &seed, textgen.SamplingPoint).Choices[0].Text)
		}
		cg := central.Generators()[0].Name
		resp := sampled(t, central.HTTPAddr(), cg, p, n, temp, &seed, "")
		if checkAgainst(t, m, ref, resp.Choices[0].Text, fmt.Sprintf("%q centralized", p)) {
			identical++
		}
		texts++
		if point[0] != point[1] || point[1] != point[2] {
			pointDiffer++
		}
	}
	t.Logf("coupled: %d of %d texts identical to the target's seeded sample; point mass: %d of 4 prompts gave different texts on different devices", identical, texts, pointDiffer)
	if identical < texts*3/4 {
		t.Errorf("only %d of %d texts identical to the reference", identical, texts)
	}
	if pointDiffer == 0 {
		t.Error("point-mass sampling gave the same text on every device for every prompt: the test cannot tell reproducible sampling from the rest")
	}

	// A drawn seed, sent back, reproduces the text on another device.
	g := sled.Generators()
	first := sampled(t, sled.HTTPAddr(), g[0].Name, prompts[5], n, temp, nil, "")
	if first.SLED.Seed == nil {
		t.Fatal("no seed reported for a request without one")
	}
	again := sampled(t, sled.HTTPAddr(), g[1].Name, prompts[5], n, temp, first.SLED.Seed, "")
	if first.Choices[0].Text != again.Choices[0].Text {
		prompt, _ := m.Tokenize(prompts[5], true)
		ref, err := bench.CoupledReference(context.Background(), m, prompt, n, engine.DefaultThreads(), temp, 0, uint64(*first.SLED.Seed))
		if err != nil {
			t.Fatal(err)
		}
		checkAgainst(t, m, ref, first.Choices[0].Text, "drawn seed, first")
		checkAgainst(t, m, ref, again.Choices[0].Text, "drawn seed, sent back")
	}
	greedy := sampled(t, sled.HTTPAddr(), g[0].Name, prompts[5], 8, 0, nil, "")
	if greedy.SLED.Sampling != "greedy" || greedy.SLED.Seed != nil {
		t.Errorf("greedy response reports sampling %q seed %v", greedy.SLED.Sampling, greedy.SLED.Seed)
	}
}

// Sampling through the API follows the target's distribution in every mode:
// over many seeds, the first token and the second token (given the likeliest
// first) of a SLED device's texts match the target's probabilities at that
// position (Pearson's chi-square at level 0.001, bins pooled to an expected
// count of at least 5). Power: the same first-token counts are rejected
// against the target's distribution at a temperature 15% higher.
func TestSamplingDistributionThroughAPI(t *testing.T) {
	const seeds, temp = 1500, 1.0
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	sled := start(t, services.UpConfig{Drafts: drafts, Devices: 2, HTTPAddr: "127.0.0.1:0"})
	m := sled.Target()
	const text = "Tom and his dog"
	prompt, err := m.Tokenize(text, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{textgen.SamplingCoupled, textgen.SamplingTopK, textgen.SamplingPoint} {
		outs := make([][]engine.Token, seeds)
		var wg sync.WaitGroup
		for d, g := range sled.Generators() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for s := d; s < seeds; s += len(sled.Generators()) {
					seed := int64(1000 + s)
					resp := sampled(t, sled.HTTPAddr(), g.Name, text, 2, temp, &seed, mode)
					toks, err := outputTokens(m, prompt, text, resp.Choices[0].Text)
					if err != nil || len(toks) == 0 {
						t.Errorf("seed %d: text %q: %v", seed, resp.Choices[0].Text, err)
						return
					}
					outs[s] = toks
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		p1 := targetProbs(t, m, prompt, temp)
		first := make([]int, m.VocabSize())
		for _, o := range outs {
			first[o[0]]++
		}
		res := chisq.Test(first, p1, 0, chisq.Z001)
		if res.Rejects() {
			t.Errorf("%s: first token: %v", mode, res)
		}
		if power := chisq.Test(first, targetProbs(t, m, prompt, temp*1.15), 0, chisq.Z001); !power.Rejects() {
			t.Errorf("%s: the test cannot tell temperature %.2f from %.2f: %v", mode, temp*1.15, temp, power)
		}
		top := engine.Token(engine.Argmax(p1f(p1)))
		second := make([]int, m.VocabSize())
		given := 0
		for _, o := range outs {
			if o[0] == top && len(o) > 1 {
				second[o[1]]++
				given++
			}
		}
		res2 := chisq.Test(second, targetProbs(t, m, append(append([]engine.Token(nil), prompt...), top), temp), 0, chisq.Z001)
		if res2.Rejects() {
			t.Errorf("%s: second token given %q: %v", mode, m.Piece(top), res2)
		}
		t.Logf("%s: first token %v; second given %q (%d samples) %v", mode, res, m.Piece(top), given, res2)
	}
}

// outputTokens recovers a completion's tokens from its text: the tokens of
// prompt and text together past the prompt's, which must be a prefix of them
// (a token that straddles the boundary is an error, not a guess).
func outputTokens(m *engine.Model, prompt []engine.Token, ptext, out string) ([]engine.Token, error) {
	all, err := m.Tokenize(ptext+out, true)
	if err != nil {
		return nil, err
	}
	if len(all) < len(prompt) || fmt.Sprint(all[:len(prompt)]) != fmt.Sprint(prompt) {
		return nil, fmt.Errorf("the text's tokens %v do not extend the prompt's %v", all, prompt)
	}
	return all[len(prompt):], nil
}

// targetProbs is the target's distribution after prefix at temp.
func targetProbs(t testing.TB, m *engine.Model, prefix []engine.Token, temp float32) []float64 {
	t.Helper()
	c, err := m.NewContext(engine.ContextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	entries := make([]engine.Entry, len(prefix))
	for i, tok := range prefix {
		entries[i] = engine.Entry{Pos: i, Token: tok, Logits: i == len(prefix)-1}
	}
	rows, err := c.Decode(context.Background(), entries)
	if err != nil {
		t.Fatal(err)
	}
	p := engine.Softmax(nil, rows[0], temp)
	out := make([]float64, len(p))
	for i, v := range p {
		out[i] = float64(v)
	}
	return out
}

func p1f(p []float64) []float32 {
	out := make([]float32, len(p))
	for i, v := range p {
		out[i] = float32(v)
	}
	return out
}
