package events

import (
	"fmt"

	"github.com/sled-project/sled/schemas"
)

// The check methods hold the semantic rules that JSON Schema cannot state,
// plus the element bounds of token and probability arrays that
// schemas.Structural leaves out (reported as ErrSchema). Encode runs them
// with vocab 0; Decode with the decoder's VocabSize.

func checkIDs(kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if !ValidID(kv[i+1]) {
			return fmt.Errorf("%w: %s %q is not a valid id", ErrInvalid, kv[i], truncate(kv[i+1], 80))
		}
	}
	return nil
}

func checkTokens(field string, toks []int32, vocab int) error {
	for i, t := range toks {
		if t < 0 {
			return fmt.Errorf("%w: %s[%d] = %d is negative", ErrSchema, field, i, t)
		}
		if vocab > 0 && int(t) >= vocab {
			return fmt.Errorf("%w: %s[%d] = %d, vocabulary size %d", ErrTokenRange, field, i, t, vocab)
		}
	}
	return nil
}

func checkProbs(field string, ps []float32) error {
	for i, p := range ps {
		if !(p >= 0 && p <= 1) {
			return fmt.Errorf("%w: %s[%d] = %v not in [0,1]", ErrSchema, field, i, p)
		}
	}
	return nil
}

func (d *DraftReady) check(vocab int) error {
	if err := checkIDs("device_id", d.DeviceID, "session_id", d.SessionID, "pool", d.Pool); err != nil {
		return err
	}
	switch {
	case d.Round == 0:
		return fmt.Errorf("%w: round 0 (rounds start at 1)", ErrInvalid)
	case len(d.Draft) > schemas.MaxDraftTokens:
		return fmt.Errorf("%w: %d draft tokens, max %d", ErrInvalid, len(d.Draft), schemas.MaxDraftTokens)
	case len(d.DraftProbs) != len(d.Draft):
		return fmt.Errorf("%w: %d draft probs for %d draft tokens", ErrInvalid, len(d.DraftProbs), len(d.Draft))
	case len(d.TopK) != 0 && len(d.TopK) != len(d.Draft):
		return fmt.Errorf("%w: %d top_k entries for %d draft tokens", ErrInvalid, len(d.TopK), len(d.Draft))
	case !(d.TPOTMs >= 0 && d.TPOTMs <= MaxTPOTMs):
		return fmt.Errorf("%w: tpot_ms %v not in [0,%v]", ErrInvalid, d.TPOTMs, float64(MaxTPOTMs))
	case d.End && len(d.Draft) > 0:
		return fmt.Errorf("%w: a session's end carries %d draft tokens", ErrInvalid, len(d.Draft))
	case d.ServerRounds < 0 || d.ServerRounds > MaxServerRounds:
		return fmt.Errorf("%w: server_rounds %d not in [0,%d]", ErrInvalid, d.ServerRounds, MaxServerRounds)
	case d.PrefixLen < 0 || d.PrefixLen > schemas.MaxPrefixTokens:
		return fmt.Errorf("%w: prefix_len %d not in [0,%d]", ErrInvalid, d.PrefixLen, schemas.MaxPrefixTokens)
	case len(d.Committed) > d.PrefixLen:
		return fmt.Errorf("%w: %d committed tokens exceed prefix_len %d", ErrInvalid, len(d.Committed), d.PrefixLen)
	case len(d.PrefixHash) != 16:
		return fmt.Errorf("%w: prefix_hash %q is not 16 hex digits", ErrInvalid, truncate(d.PrefixHash, 32))
	case d.TraceParent != "" && !validTraceParent(d.TraceParent):
		return fmt.Errorf("%w: traceparent %q is not a W3C trace context", ErrInvalid, truncate(d.TraceParent, 64))
	case d.TopLogprobs < 0 || d.TopLogprobs > MaxTopLogprobs:
		return fmt.Errorf("%w: top_logprobs %d not in [0,%d]", ErrInvalid, d.TopLogprobs, MaxTopLogprobs)
	case d.TopLogprobs > 0 && !d.Logprobs:
		return fmt.Errorf("%w: top_logprobs without logprobs", ErrInvalid)
	case !(d.Sampling.TopP >= 0 && d.Sampling.TopP <= 1):
		return fmt.Errorf("%w: sampling.top_p %v not in [0,1]", ErrSchema, d.Sampling.TopP)
	case d.Sampling.Mode != "" && d.Sampling.Mode != SamplingCoupled && d.Sampling.Mode != SamplingRejection:
		return fmt.Errorf("%w: sampling.mode %q is not %q or %q", ErrSchema, truncate(d.Sampling.Mode, 32), SamplingCoupled, SamplingRejection)
	case len(d.TraceState) > 512:
		return fmt.Errorf("%w: tracestate is %d bytes, limit 512", ErrInvalid, len(d.TraceState))
	}
	if err := checkTokens("committed", d.Committed, vocab); err != nil {
		return err
	}
	if err := checkTokens("draft", d.Draft, vocab); err != nil {
		return err
	}
	if err := checkProbs("draft_probs", d.DraftProbs); err != nil {
		return err
	}
	for i, tk := range d.TopK {
		if len(tk.IDs) != len(tk.Probs) {
			return fmt.Errorf("%w: top_k[%d] has %d ids and %d probs", ErrInvalid, i, len(tk.IDs), len(tk.Probs))
		}
		if err := checkTokens(fmt.Sprintf("top_k[%d].ids", i), tk.IDs, vocab); err != nil {
			return err
		}
		if err := checkProbs(fmt.Sprintf("top_k[%d].probs", i), tk.Probs); err != nil {
			return err
		}
	}
	if d.Prefix != nil {
		if err := checkTokens("prefix", d.Prefix, vocab); err != nil {
			return err
		}
		if len(d.Prefix) != d.PrefixLen {
			return fmt.Errorf("%w: prefix has %d tokens, prefix_len %d", ErrInvalid, len(d.Prefix), d.PrefixLen)
		}
		tail := d.Prefix[len(d.Prefix)-len(d.Committed):]
		for i := range tail {
			if tail[i] != d.Committed[i] {
				return fmt.Errorf("%w: committed tokens are not the tail of prefix", ErrInvalid)
			}
		}
		if h := PrefixHash(d.Prefix); h != d.PrefixHash {
			return fmt.Errorf("%w: prefix hashes to %s, prefix_hash %s", ErrInvalid, h, truncate(d.PrefixHash, 32))
		}
	}
	return nil
}

func (b *VerifyBatch) check(vocab int) error {
	if err := checkIDs("batch_id", b.BatchID, "pool", b.Pool); err != nil {
		return err
	}
	if b.Worker != "" {
		if err := checkIDs("worker", b.Worker); err != nil {
			return err
		}
	}
	if len(b.Drafts) == 0 || len(b.Drafts) > schemas.MaxBatchDrafts {
		return fmt.Errorf("%w: %d drafts in batch, want 1..%d", ErrInvalid, len(b.Drafts), schemas.MaxBatchDrafts)
	}
	seen := make(map[string]struct{}, len(b.Drafts))
	for i := range b.Drafts {
		d := &b.Drafts[i]
		if err := d.check(vocab); err != nil {
			return fmt.Errorf("drafts[%d]: %w", i, err)
		}
		if d.Pool != b.Pool {
			return fmt.Errorf("%w: drafts[%d] is for pool %q, batch for %q", ErrInvalid, i, d.Pool, b.Pool)
		}
		if _, dup := seen[d.SessionID]; dup {
			return fmt.Errorf("%w: session %q twice in one batch", ErrInvalid, d.SessionID)
		}
		seen[d.SessionID] = struct{}{}
	}
	return nil
}

func (r *VerifyResult) check(vocab int) error {
	if err := checkIDs("device_id", r.DeviceID); err != nil {
		return err
	}
	if r.SessionID != "" {
		if err := checkIDs("session_id", r.SessionID); err != nil {
			return err
		}
	}
	switch r.Status {
	case StatusOK:
		if r.SessionID == "" || r.Round == 0 {
			return fmt.Errorf("%w: ok result without session and round", ErrInvalid)
		}
		if r.Accepted < 0 || r.Accepted > schemas.MaxDraftTokens {
			return fmt.Errorf("%w: accepted %d not in [0,%d]", ErrInvalid, r.Accepted, schemas.MaxDraftTokens)
		}
		if b := r.DraftBudget; b != nil && (*b < 0 || *b > schemas.MaxDraftTokens) {
			return fmt.Errorf("%w: draft budget %d not in [0,%d]", ErrInvalid, *b, schemas.MaxDraftTokens)
		}
		if len(r.Logprobs) != 0 && len(r.Logprobs) != r.Accepted+1 {
			return fmt.Errorf("%w: %d logprobs for %d output tokens", ErrInvalid, len(r.Logprobs), r.Accepted+1)
		}
		for i, lp := range r.Logprobs {
			if !(lp.Logprob <= 0) || len(lp.Top) > MaxTopLogprobs {
				return fmt.Errorf("%w: logprobs[%d]: logprob %v, %d alternatives", ErrSchema, i, lp.Logprob, len(lp.Top))
			}
			for j, tl := range lp.Top {
				if err := checkTokens(fmt.Sprintf("logprobs[%d].top[%d].token", i, j), []int32{tl.Token}, vocab); err != nil {
					return err
				}
				if !(tl.Logprob <= 0) {
					return fmt.Errorf("%w: logprobs[%d].top[%d].logprob %v is not <= 0", ErrSchema, i, j, tl.Logprob)
				}
			}
		}
		return checkTokens("token", []int32{r.Token}, vocab)
	case StatusUnknownSession, StatusPrefixMismatch, StatusInvalid, StatusOverloaded, StatusExpired:
		if !validReason(r.Reason) {
			return fmt.Errorf("%w: error result needs a reason [a-z][a-z0-9_]{0,31}, got %q", ErrInvalid, truncate(r.Reason, 40))
		}
		if len(r.Error) > schemas.MaxErrorLen {
			return fmt.Errorf("%w: error text of %d bytes, max %d", ErrInvalid, len(r.Error), schemas.MaxErrorLen)
		}
		if r.ServerNext {
			return fmt.Errorf("%w: server_next on a %s result", ErrInvalid, r.Status)
		}
		return nil
	}
	return fmt.Errorf("%w: unknown status %q", ErrInvalid, truncate(string(r.Status), 40))
}

func validReason(s string) bool {
	if len(s) == 0 || len(s) > 32 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
