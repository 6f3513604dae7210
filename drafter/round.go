package drafter

import (
	"fmt"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/textgen"
)

// roundState is the pure state of one generation's verification rounds: what the
// device has committed, what the verifier holds of it, which draft tokens await a
// verdict, and what each round's outcome changes in all of that. It does no I/O:
// drafting, publishing, emitting, metrics and spans stay with the generation
// (device.go), which asks roundState what follows from each outcome. It is not
// safe for concurrent use.
//
// The decisions it owns:
//   - an ok verdict commits the accepted draft tokens and the verifier's token,
//     and keeps the tokens drafted ahead while the round was in flight when they
//     continue the new committed text (verdict);
//   - a resync request resends every unverified token with the full prefix, the
//     tokens drafted ahead appended to the pending ones (resync);
//   - a failed round (timeout, expired, overloaded, publish error) counts a
//     failure and resends the same way (failed), unless the fallback releases the
//     pending drafts unverified (release), after which the tokens drafted ahead
//     become the next draft;
//   - every commit stops at an end-of-generation token and at the room the
//     request and the context leave (commit).
type roundState struct {
	committed  []engine.Token // prompt + output released so far
	promptLen  int
	sent       int            // committed[:sent] is in the verifier's cache after the last verdict
	pending    []engine.Token // draft tokens awaiting a verdict
	probs      []float32      // draft probabilities of pending
	needPrefix bool           // the next round carries the full prefix
	failures   int            // consecutive failed rounds

	maxTokens, maxContext int
	isEOG                 func(engine.Token) bool
}

// newRoundState starts a generation of at most maxTokens tokens after prompt,
// within maxContext positions. The first round carries the full prefix.
func newRoundState(prompt []engine.Token, maxTokens, maxContext int, isEOG func(engine.Token) bool) *roundState {
	return &roundState{
		committed: append([]engine.Token(nil), prompt...), promptLen: len(prompt),
		needPrefix: true, maxTokens: maxTokens, maxContext: maxContext, isEOG: isEOG,
	}
}

// output is the generated text so far.
func (s *roundState) output() []engine.Token { return s.committed[s.promptLen:] }

// room is how many more tokens the generation may produce.
func (s *roundState) room() int {
	return min(s.maxTokens-len(s.output()), s.maxContext-len(s.committed))
}

// draftLimit is how many draft tokens the next round may carry under a policy
// allowing maxLen: the verdict adds one token of its own. Pending tokens beyond
// it are dropped.
func (s *roundState) draftLimit(maxLen int) int {
	limit := max(min(maxLen, s.room()-1), 0)
	s.trim(limit)
	return limit
}

func (s *roundState) trim(limit int) {
	if len(s.pending) > limit {
		s.pending, s.probs = s.pending[:limit], s.probs[:limit]
	}
}

// endsInEOG reports whether the last pending or drafted-ahead token ends the
// text, so that nothing may be drafted after it.
func (s *roundState) endsInEOG(ahead []engine.Token) bool {
	last := s.pending
	if len(ahead) > 0 {
		last = ahead
	}
	return len(last) > 0 && s.isEOG(last[len(last)-1])
}

// unsent is the committed tokens the verifier has not evaluated yet: the
// last verdict's own token, or everything released unverified since.
func (s *roundState) unsent() []engine.Token { return s.committed[s.sent:] }

// verdict folds an ok verdict in: the verifier accepted the first accepted
// pending tokens and chose token after them. It returns the tokens to commit
// (see commit). ahead holds the tokens drafted while the round was in flight,
// on the assumption that every pending token would be accepted; when that held
// and the verifier's token is the first of them, the rest continue the new
// committed text and become the next round's draft (the draft cache already
// holds them). A verdict accepting more tokens than were pending is an error
// and changes nothing.
func (s *roundState) verdict(accepted int, token engine.Token, ahead []engine.Token, aheadProbs []float32) ([]engine.Token, error) {
	if accepted < 0 || accepted > len(s.pending) {
		return nil, fmt.Errorf("%w: verdict accepts %d of %d draft tokens", ErrRejected, accepted, len(s.pending))
	}
	out := make([]engine.Token, 0, accepted+1)
	out = append(append(out, s.pending[:accepted]...), token)
	var next []engine.Token
	var nextProbs []float32
	if accepted == len(s.pending) && len(ahead) > 0 && ahead[0] == token {
		next = append(next, ahead[1:]...)
		nextProbs = append(nextProbs, aheadProbs[1:]...)
	}
	s.pending, s.probs = next, nextProbs
	s.needPrefix = false
	s.failures = 0
	return out, nil
}

// resync records that the verifier lacks the session (unknown, or its cache
// does not match the prefix): the next round carries the full prefix and every
// token drafted so far.
func (s *roundState) resync(ahead []engine.Token, aheadProbs []float32) {
	s.needPrefix = true
	s.merge(ahead, aheadProbs)
}

// failed records a round that got no ok verdict and returns the number of
// consecutive failures, for the fallback policy to judge. Unless the caller
// then releases, it calls resend.
func (s *roundState) failed() int {
	s.failures++
	return s.failures
}

// resend prepares the round again after a failure: the tokens drafted ahead
// join the pending ones (see fit).
func (s *roundState) resend(ahead []engine.Token, aheadProbs []float32) {
	s.merge(ahead, aheadProbs)
	s.fit()
}

// fit drops pending tokens beyond MaxDraftLen and beyond the room left (less the
// verdict's own token).
func (s *roundState) fit() { s.trim(max(min(MaxDraftLen, s.room()-1), 0)) }

// releaseNeedsToken reports whether a release would have nothing to release:
// no pending or drafted-ahead token (the room allowed only the verdict's own),
// so the device must first draft the stand-in for the target's token.
func (s *roundState) releaseNeedsToken(ahead []engine.Token) bool {
	return len(s.pending) == 0 && len(ahead) == 0
}

// addPending appends one drafted token to the pending ones.
func (s *roundState) addPending(t engine.Token, p float32) {
	s.pending, s.probs = append(s.pending, t), append(s.probs, p)
}

// release gives up on verification for the pending tokens (fallback): it
// returns them, for the caller to commit unverified and then call fit, and
// makes the tokens drafted ahead, which continue them, the next draft. The
// failure count starts again.
func (s *roundState) release(ahead []engine.Token, aheadProbs []float32) []engine.Token {
	out := s.pending
	s.pending, s.probs = ahead, aheadProbs
	s.failures = 0
	return out
}

// commit appends out, cut after its first end-of-generation token and at the
// room left, to the committed text, and returns what it kept and, when the
// generation is over, its finish reason ("" while it goes on). eos says the
// verifier's token ended the text. Verified tokens are in the verifier's cache
// but for the last one; unverified ones are not.
func (s *roundState) commit(out []engine.Token, unverified, eos bool) ([]engine.Token, string) {
	for i, t := range out {
		if s.isEOG(t) {
			out, eos = out[:i+1], true
			break
		}
	}
	if r := s.room(); len(out) > r {
		out = out[:max(r, 0)]
	}
	s.committed = append(s.committed, out...)
	if !unverified {
		s.sent = len(s.committed) - 1
	}
	switch {
	case eos:
		return out, textgen.FinishStop
	case s.room() <= 0:
		return out, textgen.FinishLength
	}
	return out, ""
}

// merge appends the tokens drafted ahead to the pending ones, at most
// MaxDraftLen in all.
func (s *roundState) merge(a []engine.Token, ap []float32) {
	n := min(len(a), MaxDraftLen-len(s.pending))
	if n > 0 {
		s.pending, s.probs = append(s.pending, a[:n]...), append(s.probs, ap[:n]...)
	}
}
