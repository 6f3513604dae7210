package drafter

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/textgen"
)

const eog engine.Token = 2

func isEOG(t engine.Token) bool { return t == eog }

func tk(xs ...int) []engine.Token {
	out := make([]engine.Token, len(xs))
	for i, x := range xs {
		out[i] = engine.Token(x)
	}
	return out
}

func pr(n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = 0.9
	}
	return out
}

func same(t *testing.T, what string, got, want []engine.Token) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// draftN makes pending hold toks, as the generation's drafting would.
func draftN(s *roundState, toks []engine.Token) {
	for _, x := range toks {
		s.addPending(x, 0.9)
	}
}

func TestRoundVerdict(t *testing.T) {
	s := newRoundState(tk(1, 10, 11), 100, 1000, isEOG)
	if !s.needPrefix || s.room() != 100 {
		t.Fatalf("new state: needPrefix %v room %d", s.needPrefix, s.room())
	}
	draftN(s, tk(20, 21, 22))
	// Two of three accepted, the verifier's token 30 after them; nothing drafted ahead.
	out, err := s.verdict(2, 30, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	same(t, "verdict", out, tk(20, 21, 30))
	kept, finish := s.commit(out, false, false)
	same(t, "kept", kept, tk(20, 21, 30))
	if finish != "" || s.needPrefix || len(s.pending) != 0 {
		t.Fatalf("after verdict: finish %q needPrefix %v pending %v", finish, s.needPrefix, s.pending)
	}
	same(t, "output", s.output(), tk(20, 21, 30))
	// The verifier's cache holds everything but its own last token.
	same(t, "unsent", s.unsent(), tk(30))

	// A verdict accepting more than was drafted is refused and changes nothing.
	draftN(s, tk(40))
	if _, err := s.verdict(2, 41, nil, nil); !errors.Is(err, ErrRejected) {
		t.Fatalf("accepted 2 of 1: err %v", err)
	}
	same(t, "pending after a bad verdict", s.pending, tk(40))
	same(t, "output after a bad verdict", s.output(), tk(20, 21, 30))
}

// Tokens drafted while the round was in flight are the next draft exactly when
// every pending token was accepted and the verifier's token is the first of them.
func TestRoundDraftedAheadReuse(t *testing.T) {
	cases := []struct {
		name     string
		accepted int
		token    int
		next     []engine.Token
	}{
		{"all accepted, verifier agrees with the first ahead token", 3, 50, tk(51, 52)},
		{"all accepted, verifier picks another token", 3, 60, nil},
		{"one rejected", 2, 50, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newRoundState(tk(1), 100, 1000, isEOG)
			draftN(s, tk(20, 21, 22))
			ahead := tk(50, 51, 52)
			if _, err := s.verdict(c.accepted, engine.Token(c.token), ahead, pr(3)); err != nil {
				t.Fatal(err)
			}
			same(t, "next draft", s.pending, c.next)
			if len(s.probs) != len(s.pending) {
				t.Fatalf("%d probabilities for %d pending tokens", len(s.probs), len(s.pending))
			}
		})
	}
}

// A resync resends with the full prefix everything unverified, the tokens
// drafted ahead appended (at most MaxDraftLen in all).
func TestRoundResync(t *testing.T) {
	s := newRoundState(tk(1, 10), 100, 1000, isEOG)
	draftN(s, tk(20, 21))
	out, _ := s.verdict(2, 22, nil, nil)
	s.commit(out, false, false)
	draftN(s, tk(23, 24))
	s.resync(tk(25, 26), pr(2))
	if !s.needPrefix {
		t.Fatal("resync: no prefix requested")
	}
	same(t, "pending", s.pending, tk(23, 24, 25, 26))
	// The next ok verdict clears it.
	if _, err := s.verdict(4, 27, nil, nil); err != nil || s.needPrefix {
		t.Fatalf("verdict after resync: err %v needPrefix %v", err, s.needPrefix)
	}

	s = newRoundState(tk(1), 1000, 1000, isEOG)
	for range MaxDraftLen - 2 {
		s.addPending(5, 0.9)
	}
	s.resync(tk(6, 7, 8, 9), pr(4))
	if len(s.pending) != MaxDraftLen || s.pending[MaxDraftLen-1] != 7 {
		t.Fatalf("merge past MaxDraftLen: %d pending, last %d", len(s.pending), s.pending[len(s.pending)-1])
	}
}

// Failures count up to the fallback; a resend merges the tokens drafted ahead
// and cuts the draft to the room left; a release hands back the pending tokens
// for an unverified commit, and the tokens drafted ahead become the next draft.
func TestRoundFailureAndRelease(t *testing.T) {
	s := newRoundState(tk(1), 6, 1000, isEOG)
	draftN(s, tk(20, 21))
	release := RetryPolicy{Fallback: true, MaxFailures: 2}.Release
	if n := s.failed(); release(n) {
		t.Fatalf("released after %d failure", n)
	}
	// Room 6, less the verdict's own token: at most 5 draft tokens.
	s.resend(tk(22, 23, 24, 25), pr(4))
	same(t, "resent draft", s.pending, tk(20, 21, 22, 23, 24))
	if s.releaseNeedsToken(nil) {
		t.Fatal("releaseNeedsToken with pending tokens")
	}
	if n := s.failed(); !release(n) {
		t.Fatalf("not released after %d failures", n)
	}
	out := s.release(tk(26, 27), pr(2))
	same(t, "released", out, tk(20, 21, 22, 23, 24))
	kept, finish := s.commit(out, true, false)
	same(t, "kept", kept, tk(20, 21, 22, 23, 24))
	if finish != "" || s.failures != 0 {
		t.Fatalf("after release: finish %q failures %d", finish, s.failures)
	}
	// Unverified tokens are not in the verifier's cache.
	same(t, "unsent", s.unsent(), tk(1, 20, 21, 22, 23, 24))
	// Room 1: the verdict's token only, so the drafted-ahead tokens go.
	s.fit()
	if len(s.pending) != 0 || s.room() != 1 {
		t.Fatalf("after fit: pending %v room %d", s.pending, s.room())
	}
	if !s.releaseNeedsToken(nil) {
		t.Fatal("nothing pending, nothing ahead: a release needs a stand-in token")
	}
	s.addPending(28, 0.5)
	kept, finish = s.commit(s.release(nil, nil), true, false)
	same(t, "last kept", kept, tk(28))
	if finish != textgen.FinishLength || s.room() != 0 {
		t.Fatalf("finish %q room %d", finish, s.room())
	}
}

// A commit stops after the first end-of-generation token and at the room left.
func TestRoundCommitTruncation(t *testing.T) {
	s := newRoundState(tk(1), 10, 1000, isEOG)
	kept, finish := s.commit(tk(5, int(eog), 6), false, false)
	same(t, "kept", kept, tk(5, int(eog)))
	if finish != textgen.FinishStop {
		t.Fatalf("finish %q at an EOG token", finish)
	}
	s = newRoundState(tk(1, 1, 1), 10, 6, isEOG) // the context leaves 3
	kept, finish = s.commit(tk(5, 6, 7, 8), false, false)
	same(t, "kept", kept, tk(5, 6, 7))
	if finish != textgen.FinishLength {
		t.Fatalf("finish %q at the context's end", finish)
	}
	s = newRoundState(tk(1), 10, 1000, isEOG)
	if _, finish := s.commit(tk(5), false, true); finish != textgen.FinishStop {
		t.Fatalf("finish %q with the verifier's EOS", finish)
	}
	// Drafting stops at an EOG: nothing may follow it.
	s = newRoundState(tk(1), 10, 1000, isEOG)
	draftN(s, tk(5, int(eog)))
	if !s.endsInEOG(nil) || s.endsInEOG(tk(7)) || !s.endsInEOG(tk(7, int(eog))) {
		t.Fatal("endsInEOG")
	}
	// The draft limit leaves room for the verdict's token and trims pending.
	s = newRoundState(tk(1), 3, 1000, isEOG)
	draftN(s, tk(5, 6, 7, 8))
	if n := s.draftLimit(8); n != 2 || len(s.pending) != 2 {
		t.Fatalf("draftLimit %d with %d pending, want 2", n, len(s.pending))
	}
}
