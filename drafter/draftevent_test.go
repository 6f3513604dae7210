package drafter

import (
	"fmt"
	"testing"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
)

func TestDraftRoundEvent(t *testing.T) {
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	r := DraftRound{
		DeviceID: "d1", SessionID: "s1", Pool: "p", Round: 3,
		Committed: tk(1, 10, 11, 12), Sent: 3, Draft: tk(20, 21), Probs: []float32{0.9, 0.5},
		VocabFingerprint: "fp", Timeout: 2 * time.Second,
	}
	ev := r.Event(now)
	if ev.PrefixLen != 4 || ev.PrefixHash != events.PrefixHash(tk(1, 10, 11, 12)) || ev.Prefix != nil {
		t.Fatalf("prefix: len %d hash %s prefix %v", ev.PrefixLen, ev.PrefixHash, ev.Prefix)
	}
	if fmt.Sprint(ev.Committed) != "[12]" || fmt.Sprint(ev.Draft) != "[20 21]" || len(ev.DraftProbs) != 2 {
		t.Fatalf("committed %v draft %v probs %v", ev.Committed, ev.Draft, ev.DraftProbs)
	}
	if !ev.Deadline.Equal(now.Add(2*time.Second)) || ev.TopK != nil {
		t.Fatalf("deadline %v topk %v", ev.Deadline, ev.TopK)
	}
	// The event owns its slices.
	r.Draft[0], r.Committed[3] = 99, 99
	if ev.Draft[0] != 20 || ev.Committed[0] != 12 {
		t.Fatal("event shares the round's slices")
	}
	// A resync carries the whole prefix; sampling declares the greedy draft's point mass.
	r.WithPrefix, r.Sampling = true, events.Sampling{Temperature: 0.8, Seed: 7}
	ev = r.Event(now)
	if fmt.Sprint(ev.Prefix) != "[1 10 11 99]" {
		t.Fatalf("prefix %v", ev.Prefix)
	}
	if len(ev.TopK) != 2 || ev.TopK[1].IDs[0] != 21 || ev.TopK[1].Probs[0] != 1 {
		t.Fatalf("top-k %v", ev.TopK)
	}
	// Top-k drafts carry their distributions; coupled drafts none.
	r.Dists = [][]engine.TokenProb{{{Token: 20, Prob: 0.7}, {Token: 5, Prob: 0.3}}, {{Token: 21, Prob: 1}}}
	if ev := r.Event(now); len(ev.TopK) != 2 || fmt.Sprint(ev.TopK[0].IDs, ev.TopK[0].Probs) != "[20 5] [0.7 0.3]" {
		t.Fatalf("top-k dists %v", ev.TopK)
	}
	r.Sampling.Mode = events.SamplingCoupled
	if ev := r.Event(now); ev.TopK != nil || ev.Sampling.Mode != events.SamplingCoupled {
		t.Fatalf("coupled round carries top-k %v, mode %q", ev.TopK, ev.Sampling.Mode)
	}
	r.Dists, r.Sampling.Mode = nil, ""
	// It passes the decoder's schema and semantic checks.
	m, err := events.Encode(events.New("/sled/device/d1", ev))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Decode(m.Subject, m.Header, m.Data); err != nil {
		t.Fatalf("event does not decode: %v", err)
	}
}

func TestRoundDue(t *testing.T) {
	began := time.Unix(100, 0)
	if d := RoundDue(began, 0, 5, 10, 5); !d.IsZero() {
		t.Errorf("no objective: due %v, want zero", d)
	}
	// Before any round: one token plus half the pending ones.
	if d := RoundDue(began, 100*time.Millisecond, 4, 0, 0); !d.Equal(began.Add(300 * time.Millisecond)) {
		t.Errorf("first round: due %v after start, want 300ms", d.Sub(began))
	}
	// 3 of 4 accepted so far: 1 + 0.75*4 = 4 tokens.
	if d := RoundDue(began, 100*time.Millisecond, 4, 40, 30); !d.Equal(began.Add(400 * time.Millisecond)) {
		t.Errorf("due %v after start, want 400ms", d.Sub(began))
	}
}

// TestServerAllowance: a round allows the verifier at most its limit (0: the
// default, negative: none), never past the generation's room after its draft
// and its verdict's token; the device's own next round is numbered above
// every round the verifier may run, and a session's end is such a round.
func TestServerAllowance(t *testing.T) {
	cases := []struct{ limit, room, draft, want int }{
		{0, 1000, 3, DefaultServerRounds},
		{8, 1000, 3, 8},
		{-1, 1000, 0, 0},
		{8, 5, 2, 2}, // 5 tokens left: 2 drafted, 1 verdict token, 2 for the verifier
		{8, 1, 0, 0},
		{8, 2, 4, 0},
	}
	for _, c := range cases {
		if got := ServerAllowance(c.limit, c.room, c.draft); got != c.want {
			t.Errorf("ServerAllowance(%d, %d, %d) = %d, want %d", c.limit, c.room, c.draft, got, c.want)
		}
	}
	if OwnRound(5, 0) != 6 || OwnRound(5, 37) != 38 || OwnRound(40, 37) != 41 {
		t.Error("OwnRound not above both the last round and the verifier's allowance")
	}
	committed := []engine.Token{1, 2, 3}
	end := SessionEnd("d1", "s1", "p", 4, 20, committed, "fp", time.Second, time.Unix(0, 0))
	if !end.End || end.Round != 21 || len(end.Draft) != 0 || len(end.Committed) != 0 ||
		end.PrefixLen != 3 || end.PrefixHash != events.PrefixHash(committed) {
		t.Errorf("session end %+v", end)
	}
}
