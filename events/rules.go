package events

import (
	"fmt"
	"math"

	"github.com/sled-project/sled/schemas"
)

// The rules methods are the rest of each payload's structural schema
// (schemas.Structural): the numeric bounds and array lengths it states, on
// the Go value that encoding/json produced, given the set of top-level keys
// the data held (scanShape). With the shape they replace the generic JSON
// Schema validator on the decoding path, which cost about three quarters of a
// decode (events.BenchmarkCodec); they report ErrSchema, as it did, and run
// before the semantic checks (check.go), so an event breaking both is
// reported as a schema violation, as before. Token and probability elements
// are left to check, as with schemas.Structural.

// maxSafeInt is the schema's bound on round numbers (2^53-1).
const maxSafeInt = 1<<53 - 1

func schemaErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrSchema}, args...)...)
}

func between[T int | uint64 | float32 | float64](name string, v, lo, hi T) error {
	if v < lo || v > hi {
		return schemaErr("%s %v not in [%v,%v]", name, v, lo, hi)
	}
	return nil
}

func items(name string, n, lo, hi int) error {
	if n < lo || n > hi {
		return schemaErr("%s has %d items, want %d..%d", name, n, lo, hi)
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *DraftReady) rules(uint64) error {
	if err := firstErr(
		between("round", d.Round, 1, maxSafeInt),
		between("prefix_len", d.PrefixLen, 0, schemas.MaxPrefixTokens),
		items("committed", len(d.Committed), 0, schemas.MaxCommittedTokens),
		items("draft", len(d.Draft), 0, schemas.MaxDraftTokens),
		items("draft_probs", len(d.DraftProbs), 0, schemas.MaxDraftTokens),
		items("top_k", len(d.TopK), 0, schemas.MaxDraftTokens),
		between("sampling.temperature", d.Sampling.Temperature, 0, 100),
		between("sampling.top_p", d.Sampling.TopP, 0, 1),
		between("top_logprobs", d.TopLogprobs, 0, MaxTopLogprobs),
		between("tpot_ms", d.TPOTMs, 0, MaxTPOTMs),
		between("server_rounds", d.ServerRounds, 0, MaxServerRounds),
	); err != nil {
		return err
	}
	for i, tk := range d.TopK {
		if err := firstErr(
			items("ids", len(tk.IDs), 1, schemas.MaxTopK),
			items("probs", len(tk.Probs), 1, schemas.MaxTopK),
		); err != nil {
			return fmt.Errorf("top_k[%d]: %w", i, err)
		}
	}
	if d.Prefix != nil { // present: unmarshalling [] gives an empty, non-nil slice
		return items("prefix", len(d.Prefix), 1, schemas.MaxPrefixTokens)
	}
	return nil
}

func (b *VerifyBatch) rules(uint64) error {
	if err := items("drafts", len(b.Drafts), 1, schemas.MaxBatchDrafts); err != nil {
		return err
	}
	for i := range b.Drafts {
		if err := b.Drafts[i].rules(0); err != nil {
			return fmt.Errorf("drafts[%d]: %w", i, err)
		}
	}
	return nil
}

func (r *VerifyResult) rules(seen uint64) error {
	has := func(k string) bool { return seen&resultKey[k] != 0 }
	if r.Status == StatusOK {
		for _, k := range []string{"session_id", "round", "accepted", "token"} {
			if !has(k) {
				return schemaErr("an ok result lacks required property %q", k)
			}
		}
	} else if !has("reason") {
		return schemaErr("a %s result lacks required property \"reason\"", truncate(string(r.Status), 40))
	}
	var budget error
	if r.DraftBudget != nil {
		budget = between("draft_budget", *r.DraftBudget, 0, schemas.MaxDraftTokens)
	}
	st := r.ServerTiming
	if err := firstErr(
		budget,
		between("accepted", r.Accepted, 0, schemas.MaxDraftTokens),
		between("token", int(r.Token), 0, math.MaxInt32),
		between("batch_size", r.BatchSize, 0, schemas.MaxBatchDrafts),
		between("server_timing.queue_ms", st.QueueMs, 0, math.MaxFloat64),
		between("server_timing.batch_ms", st.BatchMs, 0, math.MaxFloat64),
		between("server_timing.verify_ms", st.VerifyMs, 0, math.MaxFloat64),
		between("server_timing.total_ms", st.TotalMs, 0, math.MaxFloat64),
		items("logprobs", len(r.Logprobs), 0, schemas.MaxDraftTokens+1),
	); err != nil {
		return err
	}
	if has("round") {
		if err := between("round", r.Round, 1, maxSafeInt); err != nil {
			return err
		}
	}
	for i, lp := range r.Logprobs {
		if err := firstErr(
			between("logprob", lp.Logprob, -math.MaxFloat32, 0),
			items("top", len(lp.Top), 0, MaxTopLogprobs),
		); err != nil {
			return fmt.Errorf("logprobs[%d]: %w", i, err)
		}
		for j, tl := range lp.Top {
			if err := firstErr(
				between("token", int(tl.Token), 0, math.MaxInt32),
				between("logprob", tl.Logprob, -math.MaxFloat32, 0),
			); err != nil {
				return fmt.Errorf("logprobs[%d].top[%d]: %w", i, j, err)
			}
		}
	}
	return nil
}
