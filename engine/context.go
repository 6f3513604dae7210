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
	// PassTokens is what a forward pass costs beyond its tokens, in tokens: with
	// SeparateKV, Decode pads a batch's short slots and gaps (tokens evaluated, then
	// removed) when that saves llama.cpp more micro-batches than it adds tokens at
	// this price (see planPadding). Default DefaultPassTokens.
	PassTokens float64

	// perPassThreads leaves ggml to create and join its threads for every pass
	// instead of keeping a threadpool for the context's life; only
	// BenchmarkDecodeThreadpool sets it, to measure what the pool saves.
	perPassThreads bool
}

// DefaultPassTokens is ContextOptions.PassTokens' default, measured on a 2-core
// x86-64 CPU on the smollm-135m shape (F16): one token alone costs what 4 more in
// the same pass cost (7 ms for 1 token, 59 ms for 40). It is model-dependent: on
// the Qwen 1.5B (Q4_K) on the same CPU a micro-batch costs little beyond its rows,
// and splitting a gapped pass beats padding it (BenchmarkGapsQwen: 84 ms against
// 104), which is why the centralized server keeps its busy slots consecutive
// (prefixcache.Cache.Place and Compact) instead of relying on padding. A GPU at
// small batch pays far less per token: set it higher there.
const DefaultPassTokens = 4

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
	if o.PassTokens <= 0 {
		o.PassTokens = DefaultPassTokens
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
	seen  []int
	rows  [][]float32
	batch []Entry // the arranged batch (SeparateKV)
	index []int   // entries[i] is batch[index[i]]
	pads  []padding
	state [2][]byte // Swap's and Copy's buffers
}

// padding is a run of padding tokens Decode added to a slot: positions from on.
type padding struct{ seq, from int }

// NewContext creates a context on m. Several contexts may share one model.
func (m *Model) NewContext(opts ContextOptions) (*Context, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.cm == nil {
		return nil, ErrClosed
	}
	if m.vocabOK {
		return nil, fmt.Errorf("engine: %s was loaded vocabulary-only: it tokenizes but cannot evaluate", m.info.Path)
	}
	opts = opts.withDefaults(m)
	cc, err := newContext(m.cm, opts.Slots*opts.SlotContext, opts.BatchSize, opts.Slots, opts.Threads, opts.Attention == AttentionFlash, opts.SeparateKV, opts.KVType, !opts.perPassThreads)
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
	batch, index := entries, []int(nil)
	if c.opts.SeparateKV {
		batch, index = c.arrange(entries)
	}
	code, _ := c.cc.decode(batch)
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
			bi := i
			if index != nil {
				bi = index[i]
			}
			rows = append(rows, c.cc.logitsRow(bi, nv))
		}
	}
	c.rows = rows
	for _, p := range c.pads {
		if !c.cc.seqRemove(p.seq, p.from) {
			// The slot's state is unknown now: empty it rather than leave padding.
			c.cc.seqRemove(p.seq, 0)
			c.next[p.seq] = 0
			return nil, fmt.Errorf("engine: llama.cpp refused to remove the padding of slot %d", p.seq)
		}
	}
	return rows, nil
}

// arrange orders a validated batch by slot, as llama.cpp's per-stream splitter
// needs to see consecutive slots, and pads it where planPadding says that saves
// forward passes (recording the padding in c.pads). It returns the batch and where
// each entry went.
func (c *Context) arrange(entries []Entry) ([]Entry, []int) {
	c.pads = c.pads[:0]
	lo, hi := len(c.next), -1
	counts := c.seen // reuse: validate is done with it
	clear(counts)
	for _, e := range entries {
		counts[e.Seq]++
		lo, hi = min(lo, e.Seq), max(hi, e.Seq)
	}
	span := counts[lo : hi+1]
	room := make([]int, len(span))
	for i := range span {
		room[i] = max(0, c.opts.SlotContext-c.next[lo+i]-span[i])
	}
	pad := planPadding(span, room, c.opts.PassTokens, c.opts.BatchSize)
	// Batch offsets: slot lo+i's tokens start at start[i].
	start := make([]int, len(span)+1)
	for i := range span {
		start[i+1] = start[i] + span[i] + pad[i]
	}
	batch := slicesGrow(c.batch, start[len(span)])
	index := slicesGrowInt(c.index, len(entries))
	fill := append([]int(nil), start[:len(span)]...)
	for i, e := range entries {
		k := e.Seq - lo
		batch[fill[k]] = e
		index[i] = fill[k]
		fill[k]++
	}
	for i, p := range pad {
		if p == 0 {
			continue
		}
		s := lo + i
		from := c.next[s] + span[i]
		for j := range p {
			batch[fill[i]+j] = Entry{Seq: s, Pos: from + j, Token: 0}
		}
		c.pads = append(c.pads, padding{seq: s, from: from})
	}
	c.batch, c.index = batch, index
	return batch, index
}

func slicesGrow(s []Entry, n int) []Entry {
	if cap(s) < n {
		return make([]Entry, n)
	}
	return s[:n]
}

func slicesGrowInt(s []int, n int) []int {
	if cap(s) < n {
		return make([]int, n)
	}
	return s[:n]
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

// Swap exchanges the cells of slots a and b: afterwards each continues exactly
// as the other did (the cells are copied, not recomputed). It lets a caller
// put a sequence in the slot it wants (with SeparateKV, consecutive slots are
// evaluated in one micro-batch) while keeping the cells both slots hold. It
// costs a copy of both slots' cells out and back in: 28 KB per position on the
// Qwen 1.5B, 256 positions each way in about 1 ms on 2 cores
// (BenchmarkSwapQwen), against 20 ms to evaluate one token. If it fails, both
// slots are emptied and the error says so.
func (c *Context) Swap(a, b int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc == nil {
		return ErrClosed
	}
	if err := c.checkSlots(a, b); err != nil {
		return err
	}
	if a == b {
		return nil
	}
	var err error
	c.state, err = c.cc.seqSwap(a, b, c.state)
	if err != nil {
		c.cc.seqRemove(a, 0)
		c.cc.seqRemove(b, 0)
		c.next[a], c.next[b] = 0, 0
		return fmt.Errorf("engine: swap slots %d and %d: %w", a, b, err)
	}
	c.next[a], c.next[b] = c.next[b], c.next[a]
	return nil
}

// Copy makes slot dst hold slot src's first n positions, so that dst continues
// at position min(n, Len(src)) exactly as src would from there; dst's own cells
// are dropped, src is unchanged. It lets a sequence reuse a prefix another slot
// holds (a chat template's system turn) without taking that slot. With
// SeparateKV it costs a copy of src's cells out and back in (half a Swap); in a
// unified cache, nothing (the cells are shared). If it fails, dst is emptied.
func (c *Context) Copy(src, dst, n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc == nil {
		return ErrClosed
	}
	if err := c.checkSlots(src, dst); err != nil {
		return err
	}
	if n < 0 {
		return fmt.Errorf("%w: negative position %d", ErrPosition, n)
	}
	n = min(n, c.next[src])
	if src == dst {
		if n < c.next[src] && !c.cc.seqRemove(src, n) {
			return fmt.Errorf("engine: llama.cpp refused to remove slot %d from position %d", src, n)
		}
		c.next[src] = n
		return nil
	}
	var err error
	c.state[0], err = c.cc.seqCopy(src, dst, n, c.opts.SeparateKV, c.state[0])
	if err != nil {
		c.cc.seqRemove(dst, 0)
		c.next[dst] = 0
		return fmt.Errorf("engine: copy slot %d to %d: %w", src, dst, err)
	}
	c.next[dst] = n
	return nil
}

// checkSlots returns an ErrSeqRange error for the first slot out of range.
func (c *Context) checkSlots(slots ...int) error {
	for _, s := range slots {
		if s < 0 || s >= c.opts.Slots {
			return fmt.Errorf("%w: slot %d, context has %d", ErrSeqRange, s, c.opts.Slots)
		}
	}
	return nil
}

// Clear empties slot seq.
func (c *Context) Clear(seq int) error { return c.Remove(seq, 0) }
