package drafter

import (
	"context"
	"fmt"

	"github.com/sled-project/sled/engine"
)

// draftState is a draft model context with one sequence, kept in step with the
// tokens it holds so that rollback after a rejection and reuse of tokens drafted
// ahead are both just a sync to the wanted sequence. Not safe for concurrent use.
type draftState struct {
	ectx   *engine.Context
	kv     []engine.Token // tokens in the KV cache, in order
	logits []float32      // the model's logits after kv's last token, when valid
	valid  bool
}

func newDraftState(m *engine.Model, threads, ctxLen int) (*draftState, error) {
	ectx, err := m.NewContext(engine.ContextOptions{Slots: 1, SlotContext: ctxLen, Threads: threads})
	if err != nil {
		return nil, err
	}
	return &draftState{ectx: ectx}, nil
}

func (s *draftState) close() error { return s.ectx.Close() }

// reset empties the context.
func (s *draftState) reset() error {
	s.kv, s.valid = s.kv[:0], false
	return s.ectx.Clear(0)
}

// sync makes the cache hold exactly seq (non-empty) and the logits those after its
// last token, evaluating only what differs from what the cache already holds.
func (s *draftState) sync(ctx context.Context, seq []engine.Token) error {
	common := 0
	for common < len(s.kv) && common < len(seq) && s.kv[common] == seq[common] {
		common++
	}
	if common == len(seq) && common == len(s.kv) && s.valid {
		return nil
	}
	keep := min(common, len(seq)-1) // re-evaluate at least the last token for its logits
	if err := s.ectx.Remove(0, keep); err != nil {
		return err
	}
	s.kv, s.valid = s.kv[:keep], false
	batch := s.ectx.Options().BatchSize
	for keep < len(seq) {
		n := min(batch, len(seq)-keep)
		entries := make([]engine.Entry, n)
		for i := range n {
			entries[i] = engine.Entry{Seq: 0, Pos: keep + i, Token: seq[keep+i], Logits: keep+i == len(seq)-1}
		}
		rows, err := s.ectx.Decode(ctx, entries)
		if err != nil {
			return fmt.Errorf("drafter: draft model: %w", err)
		}
		s.kv = append(s.kv, seq[keep:keep+n]...)
		keep += n
		if len(rows) > 0 {
			s.logits = append(s.logits[:0], rows[0]...)
			s.valid = true
		}
	}
	return nil
}

// peek is the token the draft model would draft next and its probability.
func (s *draftState) peek() (engine.Token, float32) { return engine.Top1(s.logits) }

// push appends t to the cache and refreshes the logits.
func (s *draftState) push(ctx context.Context, t engine.Token) error {
	rows, err := s.ectx.Decode(ctx, []engine.Entry{{Seq: 0, Pos: len(s.kv), Token: t, Logits: true}})
	if err != nil {
		s.valid = false
		return fmt.Errorf("drafter: draft model: %w", err)
	}
	s.kv = append(s.kv, t)
	s.logits = append(s.logits[:0], rows[0]...)
	return nil
}
