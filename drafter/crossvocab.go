package drafter

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/sled-project/sled/engine"
)

// draftSource is what a generation drafts with: a context over the target's
// vocabulary, whatever the draft model's. Sequences and tokens are the
// target's. Not safe for concurrent use.
type draftSource interface {
	// reset empties the context.
	reset() error
	// sync makes the context hold exactly seq (non-empty).
	sync(ctx context.Context, seq []engine.Token) error
	// peek is the token the draft model drafts next and its confidence; ok
	// is false when it has nothing to draft (a draft across vocabularies whose
	// text does not map onto the target's tokens yet).
	peek() (t engine.Token, p float32, ok bool)
	// push appends t to the context.
	push(ctx context.Context, t engine.Token) error
	// logits are the draft model's logits over the target's vocabulary after
	// the context, and pos the next token's position; ok is false when the
	// draft model's vocabulary is another (sampling then drafts by peek).
	logits() (row []float32, pos int, ok bool)
	close() error
}

// sameVocab adapts a draftState (a draft model with the target's vocabulary)
// to draftSource.
type sameVocab struct{ *draftState }

func (s sameVocab) peek() (engine.Token, float32, bool) {
	t, p := s.draftState.peek()
	return t, p, true
}

func (s sameVocab) logits() ([]float32, int, bool) { return s.draftState.logits, len(s.kv), true }

// crossVocab drafts for a target whose vocabulary is not the draft model's.
// The committed sequence stays in the target's tokens (the wire, the verifier
// and the verdicts are unchanged); the draft model reads it as text
// (DetokenizeSpecial, so chat-template control tokens keep their spelling)
// tokenized in its own vocabulary, drafts text greedily, and the text is
// tokenized back into the target's vocabulary. Mapping happens on the device,
// so the server's hot path does no tokenization.
//
// The text the draft model has drafted beyond the sequence is ahead. To map
// it, crossVocab tokenizes the last tailTokens tokens of the sequence and
// ahead together with the target's tokenizer and keeps what follows the tail,
// if the tail comes back unchanged: so a draft token never straddles the
// boundary with the committed text; where the tail does not come back (the
// draft text would merge with the last committed token), ahead is tokenized
// alone. The last target token of a mapping is held back until more text
// follows it (more text could make it a longer token), unless the draft
// model ended its text. Whatever the mapping gives, the verifier checks every
// token against the target itself, so greedy output stays the target's.
type crossVocab struct {
	target *engine.Model // the target's vocabulary (VocabOnly suffices)
	draft  *engine.Model
	ds     *draftState // in the draft model's vocabulary

	seq   []engine.Token // the context, in target tokens
	dirty bool           // ds does not hold text(seq)+ahead
	ahead string         // draft text beyond text(seq) that ds holds
	// conf are the draft tokens that make up ahead: where each ends in ahead
	// (bytes) and the draft model's probability of it.
	conf  []span
	ended bool // ahead ends with the draft model's end of generation
	queue []queued
}

type span struct {
	end int
	p   float32
}

type queued struct {
	t engine.Token
	p float32
}

// Limits of one mapping: the committed tokens re-tokenized with ahead, and the
// draft tokens drafted per refill.
const (
	tailTokens  = 4
	chunkTokens = 6
)

func newCrossVocab(target, draft *engine.Model, threads, ctxLen int) (*crossVocab, error) {
	ds, err := newDraftState(draft, threads, ctxLen)
	if err != nil {
		return nil, err
	}
	return &crossVocab{target: target, draft: draft, ds: ds}, nil
}

func (c *crossVocab) close() error { return c.ds.close() }

func (c *crossVocab) reset() error {
	c.seq, c.queue, c.ahead, c.conf, c.ended, c.dirty = c.seq[:0], nil, "", nil, false, true
	return c.ds.reset()
}

func (c *crossVocab) logits() ([]float32, int, bool) { return nil, len(c.seq), false }

func (c *crossVocab) peek() (engine.Token, float32, bool) {
	if len(c.queue) == 0 {
		return 0, 0, false
	}
	return c.queue[0].t, c.queue[0].p, true
}

func (c *crossVocab) sync(ctx context.Context, seq []engine.Token) error {
	// The common case: seq is the context so far plus tokens drafted from it.
	if len(seq) >= len(c.seq) && slices.Equal(seq[:len(c.seq)], c.seq) && !c.dirty {
		extra := seq[len(c.seq):]
		if len(extra) <= len(c.queue) && slices.Equal(extra, queueTokens(c.queue[:len(extra)])) {
			for _, t := range extra {
				if err := c.push(ctx, t); err != nil { // refills when it empties the queue
					return err
				}
			}
			if len(extra) == 0 && len(c.queue) == 0 && !c.ended {
				return c.refill(ctx) // nothing mapped yet: draft more text
			}
			return nil
		}
	}
	c.seq = append(c.seq[:0], seq...)
	c.dirty = true
	return c.refill(ctx)
}

func (c *crossVocab) push(ctx context.Context, t engine.Token) error {
	c.seq = append(c.seq, t)
	piece := c.target.DetokenizeSpecial([]engine.Token{t})
	if len(c.queue) > 0 && c.queue[0].t == t && !c.dirty && strings.HasPrefix(c.ahead, piece) {
		c.queue = c.queue[1:]
		c.ahead = c.ahead[len(piece):]
		kept := c.conf[:0]
		for _, s := range c.conf {
			if s.end -= len(piece); s.end > 0 {
				kept = append(kept, s)
			}
		}
		c.conf = kept
		if len(c.queue) == 0 {
			return c.refill(ctx)
		}
		return nil
	}
	c.dirty = true
	return c.refill(ctx)
}

// refill drafts more text if needed and maps ahead onto target tokens.
func (c *crossVocab) refill(ctx context.Context) error {
	c.queue = c.queue[:0]
	if c.dirty {
		text := c.target.DetokenizeSpecial(c.seq)
		toks, err := c.draft.TokenizeSpecial(text, true)
		if err != nil {
			return fmt.Errorf("drafter: cross-vocabulary draft: %w", err)
		}
		if len(toks) == 0 {
			return nil
		}
		if len(toks) >= c.ds.ectx.Options().SlotContext {
			return nil // the draft model's context is full: nothing more to draft
		}
		if err := c.ds.sync(ctx, toks); err != nil {
			return err
		}
		c.ahead, c.conf, c.ended, c.dirty = "", nil, false, false
	}
	limit := c.ds.ectx.Options().SlotContext - 1
	for range 2 { // draft a chunk; a second when the first mapped to nothing
		for n := 0; n < chunkTokens && !c.ended && len(c.ds.kv) < limit; n++ {
			t, p := c.ds.peek()
			if c.draft.IsEOG(t) {
				c.ended = true
			}
			c.ahead += c.draft.DetokenizeSpecial([]engine.Token{t})
			c.conf = append(c.conf, span{end: len(c.ahead), p: p})
			if c.ended {
				break
			}
			if err := c.ds.push(ctx, t); err != nil {
				return err
			}
		}
		if err := c.mapAhead(); err != nil || len(c.queue) > 0 || c.ended {
			return err
		}
	}
	return nil
}

// mapAhead tokenizes ahead into the queue of target tokens.
func (c *crossVocab) mapAhead() error {
	if c.ahead == "" {
		return nil
	}
	tail := c.seq[max(0, len(c.seq)-tailTokens):]
	tailText := c.target.DetokenizeSpecial(tail)
	toks, err := c.target.TokenizeSpecial(tailText+c.ahead, false)
	if err != nil {
		return fmt.Errorf("drafter: cross-vocabulary draft: %w", err)
	}
	if len(toks) >= len(tail) && slices.Equal(toks[:len(tail)], tail) {
		toks = toks[len(tail):]
	} else if toks, err = c.target.TokenizeSpecial(c.ahead, false); err != nil {
		return fmt.Errorf("drafter: cross-vocabulary draft: %w", err)
	}
	if !c.ended && len(toks) > 0 {
		toks = toks[:len(toks)-1] // more text could extend it
	}
	off := 0
	for _, t := range toks {
		piece := c.target.DetokenizeSpecial([]engine.Token{t})
		if !strings.HasPrefix(c.ahead[off:], piece) {
			break // the tokenizer normalised the text: stop where it no longer matches
		}
		c.queue = append(c.queue, queued{t: t, p: c.confidence(off, off+len(piece))})
		off += len(piece)
	}
	return nil
}

// confidence is the least probability of the draft tokens covering bytes
// [from, to) of ahead.
func (c *crossVocab) confidence(from, to int) float32 {
	p := float32(1)
	start := 0
	for _, s := range c.conf {
		if s.end > from && start < to {
			p = min(p, s.p)
		}
		start = s.end
	}
	return p
}

func queueTokens(q []queued) []engine.Token {
	out := make([]engine.Token, len(q))
	for i, e := range q {
		out[i] = e.t
	}
	return out
}
