package tests

import (
	"context"
	"math"
	"testing"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
)

// offlineAgreement is the teacher-forced greedy agreement of draft with the target
// on the target's own continuations: the fraction of positions where the draft's
// argmax equals the target's next token.
func offlineAgreement(t *testing.T, target, draft *engine.Model, refs [][]engine.Token, prompts [][]engine.Token) float64 {
	t.Helper()
	c, err := draft.NewContext(engine.ContextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	agree, total := 0, 0
	for i, ref := range refs {
		seq := append(append([]engine.Token(nil), prompts[i]...), ref...)
		es := make([]engine.Entry, len(seq)-1)
		for j := range es {
			es[j] = engine.Entry{Seq: 0, Pos: j, Token: seq[j], Logits: j >= len(prompts[i])-1}
		}
		if err := c.Clear(0); err != nil {
			t.Fatal(err)
		}
		rows, err := c.Decode(context.Background(), es)
		if err != nil {
			t.Fatal(err)
		}
		for j, row := range rows {
			if engine.Argmax(row) == ref[j] {
				agree++
			}
			total++
		}
	}
	return float64(agree) / float64(total)
}

func rate(acc, drafted int) float64 { return float64(acc) / float64(max(drafted, 1)) }

func TestAcceptanceMatchesOfflineAgreement(t *testing.T) {
	ps := prompts[:10]
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	// One draft token per round and no threshold: the acceptance rate is then the
	// per-token agreement of the pair on the target's own text. The drafting
	// policy is what is measured here, so the server sends no draft budgets
	// (they would cut drafts by the server's load).
	static := goodput.Policy{Static: true}
	fixed1 := start(t, services.UpConfig{Drafts: drafts, Devices: 2, Budget: static,
		Draft: drafter.DraftPolicy{Fixed: true, MinLen: 1, MaxLen: 1}})
	// Both devices run every prompt so the figures compare like with like.
	type figures struct{ acc, drafted int }
	runEach := func(s *services.System) ([]figures, [][]engine.Token) {
		var out []figures
		var toks [][]engine.Token
		for dev := range s.Generators() {
			var f figures
			for _, o := range runOn(t, s.Generators()[dev:dev+1], ps, genTokens) {
				f.acc += o.res.Stats.Accepted
				f.drafted += o.res.Stats.Drafted
				if dev == 0 {
					toks = append(toks, o.tokens)
				}
			}
			out = append(out, f)
		}
		return out, toks
	}
	got, refs := runEach(fixed1)
	target := fixed1.Target()
	var promptToks [][]engine.Token
	for _, p := range ps {
		pt, _ := target.Tokenize(p, true)
		promptToks = append(promptToks, pt)
	}
	names := []string{"4-block", "3-block"}
	want := []float64{0.5, 0.2}
	for i, path := range drafts {
		online := rate(got[i].acc, got[i].drafted)
		offline := offlineAgreement(t, target, fixed1.Model(path), refs, promptToks)
		t.Logf("%s draft, 1 token per round, no threshold: acceptance %.3f (%d/%d); offline agreement %.3f", names[i], online, got[i].acc, got[i].drafted, offline)
		if math.Abs(online-offline) > 0.03 {
			t.Errorf("%s: online acceptance %.3f inconsistent with offline agreement %.3f", names[i], online, offline)
		}
		if math.Abs(online-want[i]) > 0.15 {
			t.Errorf("%s: acceptance %.3f, expected near %.1f", names[i], online, want[i])
		}
	}
	fixed1.Close()

	// Fixed length 8 vs the confidence threshold: θ stops drafting where the draft
	// is unsure, so more of what is drafted is accepted.
	fixed8 := start(t, services.UpConfig{Drafts: drafts, Devices: 2, Budget: static, Draft: drafter.DraftPolicy{Fixed: true, MinLen: 8, MaxLen: 8}})
	f8, _ := runEach(fixed8)
	fixed8.Close()
	dyn := start(t, services.UpConfig{Drafts: drafts, Devices: 2, Budget: static, Draft: drafter.DraftPolicy{Threshold: drafter.DefaultThreshold, MaxLen: 8}})
	fd, _ := runEach(dyn)
	for i := range drafts {
		r8, rd := rate(f8[i].acc, f8[i].drafted), rate(fd[i].acc, fd[i].drafted)
		t.Logf("%s draft: acceptance per drafted token %.3f at fixed length 8, %.3f with threshold %.2f (max 8) (%d vs %d drafted)",
			names[i], r8, rd, drafter.DefaultThreshold, f8[i].drafted, fd[i].drafted)
		if rd <= r8*1.2 {
			t.Errorf("%s: threshold did not raise acceptance per drafted token: %.3f vs %.3f", names[i], rd, r8)
		}
	}
}
