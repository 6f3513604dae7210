package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Errors of Decode and friends; match them with errors.Is.
var (
	ErrTokenRange    = errors.New("engine: token id out of range")
	ErrSeqRange      = errors.New("engine: sequence slot out of range")
	ErrPosition      = errors.New("engine: position does not continue the sequence")
	ErrBatchTooLarge = errors.New("engine: batch larger than the context allows")
	ErrContextFull   = errors.New("engine: sequence or KV cache full")
)

// ContextOptions configures NewContext. Zero fields take the documented defaults.
type ContextOptions struct {
	// Slots is the number of sequences the context holds at once. Default 1.
	Slots int
	// SlotContext is the most positions one sequence may use. Default
	// Model.DefaultSlotContext(). The KV cache holds Slots*SlotContext positions.
	SlotContext int
	// BatchSize is the most tokens one Decode may evaluate. Default 512, at most the
	// KV cache size.
	BatchSize int
	// Threads used by llama.cpp. Default Model.DefaultThreads().
	Threads int
	// Attention selects the attention kernels. Default AttentionFlash.
	Attention Attention
	// KVType is the KV cache element type: "f16" (default), "f32" or "q8_0".
	KVType string
	// SeparateKV gives every slot its own KV cache stream instead of one unified
	// cache. Attention then reads only the slot's own positions, but llama.cpp
	// evaluates a ragged batch (slots with different token counts), or one whose
	// slots are not consecutive, in several micro-batches. Default off (unified):
	// with flash attention, whose kernel skips the cells another sequence holds, a
	// unified pass costs about what the slots' own histories cost, in one pass
	// (docs/benchmarks.md, "Verifier pass cost").
	SeparateKV bool
}

func (o ContextOptions) withDefaults(m *Model) ContextOptions {
	if o.Slots <= 0 {
		o.Slots = 1
	}
	if o.SlotContext <= 0 {
		o.SlotContext = m.DefaultSlotContext()
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 512
	}
	o.BatchSize = min(o.BatchSize, o.Slots*o.SlotContext)
	if o.Threads <= 0 {
		o.Threads = m.DefaultThreads()
	}
	return o
}

// Attention is a choice of attention kernels.
type Attention int

const (
	// AttentionFlash uses llama.cpp's flash attention where the backend supports
	// it (the CPU and CUDA backends do), else the plain kernels. The default: on
	// the real 1.5B target, a 16 x 5 pass with 512 tokens of history per sequence
	// costs 1.12x the same pass with 32 (plain kernels: 1.33x), and is faster at
	// both.
	AttentionFlash Attention = iota
	// AttentionPlain always uses the plain kernels (one matrix product over every
	// cell in use, masked).
	AttentionPlain
)

func (a Attention) String() string {
	switch a {
	case AttentionFlash:
		return "flash"
	case AttentionPlain:
		return "plain"
	}
	return fmt.Sprintf("Attention(%d)", int(a))
}

// Entry is one token of a Decode batch.
type Entry struct {
	Seq    int   // sequence slot, 0 <= Seq < Slots
	Pos    int   // position in the sequence; see Decode
	Token  Token // vocabulary id
	Logits bool  // whether Decode returns the logits after this token
}

// Context is a llama.cpp context with Slots sequence slots sharing one KV cache.
// Its methods are safe for concurrent use but run one at a time.
type Context struct {
	mu    sync.Mutex
	model *Model
	cc    *cContext
	opts  ContextOptions
	next  []int // next position of each slot = number of positions it holds
	// scratch, reused across Decode calls
	seen []int
	rows [][]float32
}

// NewContext creates a context on m. Several contexts may share one model.
func (m *Model) NewContext(opts ContextOptions) (*Context, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.cm == nil {
		return nil, ErrClosed
	}
	opts = opts.withDefaults(m)
	cc, err := newContext(m.cm, opts.Slots*opts.SlotContext, opts.BatchSize, opts.Slots, opts.Threads, opts.Attention == AttentionFlash, opts.SeparateKV, opts.KVType)
	if err != nil {
		return nil, fmt.Errorf("engine: new context (%d slots x %d positions): %w", opts.Slots, opts.SlotContext, err)
	}
	opts.BatchSize = min(opts.BatchSize, cc.nBatch)
	return &Context{model: m, cc: cc, opts: opts, next: make([]int, opts.Slots), seen: make([]int, opts.Slots)}, nil
}

// Options returns the context's settings with defaults filled in.
func (c *Context) Options() ContextOptions { return c.opts }

// Model returns the model the context runs.
func (c *Context) Model() *Model { return c.model }

// Close frees the context.
func (c *Context) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc == nil {
		return ErrClosed
	}
	c.cc.free()
	c.cc = nil
	return nil
}

// Len is the number of positions slot seq holds: the position its next token takes.
func (c *Context) Len(seq int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq < 0 || seq >= len(c.next) {
		return 0
	}
	return c.next[seq]
}

// Decode evaluates entries in one forward pass and returns, in entry order, the
// logits row (VocabSize values) of every entry that asked for one.
//
// Entries of one slot must have consecutive positions that continue the slot: the
// first at Len(seq), the next one higher, and so on; entries of different slots may
// interleave and differ in count (a ragged batch). Entries are validated before
// llama.cpp sees them: an out-of-range token, slot or position, or more entries than
// BatchSize, returns an error and changes nothing.
//
// The rows are views into llama.cpp's output buffer, valid until the next call on
// the Context; copy what must outlive it. ctx is checked before the pass starts; a
// pass, once started, runs to completion.
func (c *Context) Decode(ctx context.Context, entries []Entry) ([][]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc == nil {
		return nil, ErrClosed
	}
	if err := c.validate(entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, nil
	}
	code, _ := c.cc.decode(entries)
	if code != 0 {
		// llama.cpp restores the KV cache when a decode fails; re-read it anyway.
		for s := range c.next {
			c.next[s] = c.cc.seqPosMax(s) + 1
		}
		if code == 1 {
			return nil, fmt.Errorf("%w: no KV cache room for %d tokens", ErrContextFull, len(entries))
		}
		return nil, fmt.Errorf("engine: llama_decode failed with code %d", code)
	}
	rows := c.rows[:0]
	nv := c.model.info.VocabSize
	for i, e := range entries {
		c.next[e.Seq] = e.Pos + 1
		if e.Logits {
			rows = append(rows, c.cc.logitsRow(i, nv))
		}
	}
	c.rows = rows
	return rows, nil
}

func (c *Context) validate(entries []Entry) error {
	if len(entries) > c.opts.BatchSize {
		return fmt.Errorf("%w: %d tokens, batch size %d", ErrBatchTooLarge, len(entries), c.opts.BatchSize)
	}
	copy(c.seen, c.next)
	for i, e := range entries {
		if e.Seq < 0 || e.Seq >= c.opts.Slots {
			return fmt.Errorf("%w: entry %d names slot %d, context has %d", ErrSeqRange, i, e.Seq, c.opts.Slots)
		}
		if !c.model.ValidToken(e.Token) {
			return fmt.Errorf("%w: entry %d has token %d, vocabulary size %d", ErrTokenRange, i, e.Token, c.model.info.VocabSize)
		}
		if e.Pos != c.seen[e.Seq] {
			return fmt.Errorf("%w: entry %d is at position %d of slot %d, which continues at %d", ErrPosition, i, e.Pos, e.Seq, c.seen[e.Seq])
		}
		if e.Pos >= c.opts.SlotContext {
			return fmt.Errorf("%w: slot %d would reach position %d, limit %d", ErrContextFull, e.Seq, e.Pos, c.opts.SlotContext)
		}
		c.seen[e.Seq]++
	}
	return nil
}

// Remove drops slot seq's positions from pos on, so that the next token of the slot
// goes at pos (a KV rollback after rejected draft tokens). pos >= Len(seq) is a no-op.
func (c *Context) Remove(seq, pos int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc == nil {
		return ErrClosed
	}
	if seq < 0 || seq >= c.opts.Slots {
		return fmt.Errorf("%w: slot %d, context has %d", ErrSeqRange, seq, c.opts.Slots)
	}
	if pos < 0 {
		return fmt.Errorf("%w: negative position %d", ErrPosition, pos)
	}
	if pos >= c.next[seq] {
		return nil
	}
	if !c.cc.seqRemove(seq, pos) {
		return fmt.Errorf("engine: llama.cpp refused to remove slot %d from position %d", seq, pos)
	}
	c.next[seq] = pos
	return nil
}

// Clear empties slot seq.
func (c *Context) Clear(seq int) error { return c.Remove(seq, 0) }
