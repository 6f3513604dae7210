// Package centralized is the paper's baseline: the server generates every token of
// every request with the target model, using continuous batching (each forward pass
// advances every active sequence by one token and admits waiting requests as soon
// as a slot frees). It uses the same engine as the SLED verifier, so comparing the
// two measures speculation, not implementation differences; it is also the
// reference output for SLED's lossless guarantee.
package centralized

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/prefixcache"
	"github.com/sled-project/sled/textgen"
)

// Config sizes a Server. Zero fields take the documented defaults.
type Config struct {
	// Slots is the number of requests generated concurrently. Default 16.
	Slots int
	// SlotContext bounds prompt plus output tokens per request. Default: the
	// model's DefaultSlotContext.
	SlotContext int
	// BatchTokens bounds the tokens of one forward pass (prompt prefill is split
	// to fit). Default 512.
	BatchTokens int
	// UnifiedKV keeps every request in one KV cache instead of a stream per slot.
	// Default off: this server's passes are one token per decoding request, the
	// shape a stream per slot serves in one micro-batch as long as the busy slots
	// are consecutive, which the server sees to (prefixcache.Cache.Place as
	// requests come, Compact as they go), while in one cache that many requests
	// come and go in, every token's attention scans every cell in use (16
	// requests of 64 tokens, again and again, on the smollm-135m shape: 45-49 ms
	// per step with streams, 54-56 unified; BenchmarkChurn).
	UnifiedKV bool
	// Threads for llama.cpp. Default: the target's DefaultThreads.
	Threads int
	// NoPromptCache turns off prompt caching. Default off, so the cache is on: a
	// finished request's KV cells stay in its slot, a new request goes to the free
	// slot whose cells share the longest prefix with its prompt, and only the rest
	// of the prompt is evaluated (as llama-server's cache_prompt does; chat
	// requests share at least their template's system turn). The reused cells were
	// computed in other batches than a fresh prefill would be, so, as with any
	// batch, a later token may differ from a cold run's at a logit near-tie.
	NoPromptCache bool
}

// Server generates text with the target model alone. It implements
// textgen.Generator; Run must be running for Generate to make progress.
type Server struct {
	model *engine.Model
	cfg   Config
	ectx  *engine.Context
	queue chan *request

	mu     sync.Mutex
	steps  uint64 // forward passes so far
	reused uint64 // prompt tokens served from the prompt cache
	swaps  uint64 // KV exchanges made to keep busy slots consecutive
}

type request struct {
	ctx   context.Context
	req   textgen.Request
	out   chan textgen.Chunk // generated tokens, one per pass; closed when done
	final textgen.Result     // set by the loop before it closes out
	err   error
	// stopped is set by Generate when the caller stops consuming.
	stopped atomic.Bool
	// loop state
	slot   int
	fed    int // prompt tokens evaluated
	last   engine.Token
	tokens []engine.Token
	rng    *rand.Rand
	probs  []float32
}

// New creates a server on target.
func New(target *engine.Model, cfg Config) (*Server, error) {
	if cfg.Slots <= 0 {
		cfg.Slots = 16
	}
	if cfg.BatchTokens <= 0 {
		cfg.BatchTokens = 512
	}
	cfg.BatchTokens = max(cfg.BatchTokens, cfg.Slots+1)
	ectx, err := target.NewContext(engine.ContextOptions{
		Slots: cfg.Slots, SlotContext: cfg.SlotContext, BatchSize: cfg.BatchTokens, Threads: cfg.Threads,
		SeparateKV: !cfg.UnifiedKV,
	})
	if err != nil {
		return nil, fmt.Errorf("centralized: %w", err)
	}
	o := ectx.Options()
	cfg.SlotContext, cfg.BatchTokens, cfg.Threads = o.SlotContext, o.BatchSize, o.Threads
	return &Server{model: target, cfg: cfg, ectx: ectx, queue: make(chan *request)}, nil
}

// Close frees the server's context; call it after Run returned.
func (s *Server) Close() error { return s.ectx.Close() }

// Model implements textgen.Generator.
func (s *Server) Model() *engine.Model { return s.model }

// Steps is the number of forward passes run so far.
func (s *Server) Steps() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.steps
}

// ReusedPromptTokens is the number of prompt tokens taken from the prompt cache
// instead of being evaluated, over the server's life.
func (s *Server) ReusedPromptTokens() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reused
}

// Swaps is the number of times, over the server's life, that a request's cached
// cells were exchanged into the slot beside the busy ones (with a KV stream per
// slot; see Config.UnifiedKV).
func (s *Server) Swaps() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.swaps
}

func (s *Server) countSwap() {
	s.mu.Lock()
	s.swaps++
	s.mu.Unlock()
}

// Generate implements textgen.Generator.
func (s *Server) Generate(ctx context.Context, req textgen.Request, emit func(textgen.Chunk) error) (textgen.Result, error) {
	if err := textgen.Validate(s.model, req, s.cfg.SlotContext); err != nil {
		return textgen.Result{}, err
	}
	r := &request{ctx: ctx, req: req, out: make(chan textgen.Chunk, 64)}
	if req.Temperature > 0 && !req.Coupled() {
		r.rng = rand.New(rand.NewPCG(req.Seed, 0x51ed))
	}
	select {
	case s.queue <- r:
	case <-ctx.Done():
		return textgen.Result{}, ctx.Err()
	}
	var emitErr error
	for c := range r.out {
		if emitErr == nil {
			if err := emit(c); err != nil {
				emitErr = err
				r.stopped.Store(true)
			}
		}
	}
	res := r.final
	switch {
	case errors.Is(emitErr, textgen.ErrStop):
		res.FinishReason = textgen.FinishStop
		return res, nil
	case emitErr != nil:
		return res, emitErr
	}
	return res, r.err
}

// Run is the generation loop; it returns when ctx ends. Requests in flight then end
// with ctx's error.
func (s *Server) Run(ctx context.Context) error {
	active := make([]*request, 0, s.cfg.Slots)
	// slots gives out the KV slots; a finished request's cells stay for the
	// next request sharing their prefix (the prompt cache).
	slots := prefixcache.New(s.cfg.Slots)
	finish := func(r *request, reason string, err error) {
		r.final.Tokens = r.tokens
		r.final.FinishReason = reason
		r.err = err
		// Every prompt token fed and every generated token but the last is in
		// the slot's cells; keep them for the next request, unless told not to
		// or the request ended with an error (a failed pass leaves them in doubt).
		var held []engine.Token
		if n := s.ectx.Len(r.slot); n > 0 && !s.cfg.NoPromptCache && err == nil {
			held = append(append(make([]engine.Token, 0, len(r.req.Prompt)+len(r.tokens)), r.req.Prompt[:r.fed]...), r.tokens...)
			held = held[:min(n, len(held))]
		} else {
			_ = s.ectx.Clear(r.slot)
		}
		slots.Release(r.slot, held)
		close(r.out)
	}
	// admit gives r a slot and the cells it can reuse. With a stream per slot
	// the slot is one that keeps the busy slots consecutive
	// (prefixcache.Cache.Place: one micro-batch per pass), the cached cells
	// swapped into it; in one unified cache where a request runs does not matter
	// and it goes to the slot holding its cells (prefixcache.Cache.Take).
	admit := func(r *request) {
		var slot, keep int
		if s.cfg.UnifiedKV {
			slot, keep, _ = slots.Take(r.req.Prompt)
			if err := s.ectx.Remove(slot, keep); err != nil {
				keep = 0
				_ = s.ectx.Clear(slot)
			}
		} else {
			p, _ := slots.Place(r.req.Prompt)
			slot, keep = p.Slot, p.Keep
			if p.From != slot {
				if err := s.ectx.Swap(p.From, slot); err != nil {
					keep = 0
					slots.Release(p.From, nil)
				} else {
					s.countSwap()
				}
			}
			if p.Copy >= 0 {
				if err := s.ectx.Copy(p.Copy, slot, keep); err != nil {
					keep = 0
				}
			} else if err := s.ectx.Remove(slot, keep); err != nil {
				keep = 0
				_ = s.ectx.Clear(slot)
			}
		}
		r.slot = slot
		r.fed = keep
		if keep > 0 {
			s.mu.Lock()
			s.reused += uint64(keep)
			s.mu.Unlock()
		}
	}
	defer func() {
		for _, r := range active {
			finish(r, "", ctx.Err())
		}
	}()
	for {
		// Admit new requests: block only when idle.
		for slots.Free() > 0 {
			var r *request
			if len(active) == 0 {
				select {
				case r = <-s.queue:
				case <-ctx.Done():
					return ctx.Err()
				}
			} else {
				select {
				case r = <-s.queue:
				default:
				}
			}
			if r == nil {
				break
			}
			admit(r)
			active = append(active, r)
		}
		// With a stream per slot, close the gaps requests that ended left and
		// no new one filled: a pass over slots with gaps is split or padded.
		if !s.cfg.UnifiedKV {
			for _, mv := range slots.Compact() {
				var r *request
				for _, a := range active {
					if a.slot == mv.From {
						r = a
					}
				}
				err := s.ectx.Swap(mv.From, mv.To)
				r.slot = mv.To
				if err != nil {
					// Both slots are empty now: r cannot go on.
					slots.Release(mv.From, nil)
					finish(r, "", fmt.Errorf("centralized: moving the request's KV cells: %w", err))
					active = slices.DeleteFunc(active, func(a *request) bool { return a == r })
					continue
				}
				s.countSwap()
			}
		}
		// One pass: a token for every decoding request, prompt chunks for the rest.
		var entries []engine.Entry
		var owners []*request // owner of each logits row
		budget := s.cfg.BatchTokens
		for _, r := range active {
			if r.fed == len(r.req.Prompt) && len(r.tokens) > 0 {
				entries = append(entries, engine.Entry{Seq: r.slot, Pos: len(r.req.Prompt) + len(r.tokens) - 1, Token: r.last, Logits: true})
				owners = append(owners, r)
				budget--
			}
		}
		for _, r := range active {
			if r.fed == len(r.req.Prompt) || budget <= 0 {
				continue
			}
			n := min(budget, len(r.req.Prompt)-r.fed)
			for i := r.fed; i < r.fed+n; i++ {
				last := i == len(r.req.Prompt)-1
				entries = append(entries, engine.Entry{Seq: r.slot, Pos: i, Token: r.req.Prompt[i], Logits: last})
				if last {
					owners = append(owners, r)
				}
			}
			r.fed += n
			budget -= n
		}
		rows, err := s.ectx.Decode(ctx, entries)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			for _, r := range active {
				finish(r, "", fmt.Errorf("centralized: forward pass: %w", err))
			}
			active = active[:0]
			continue
		}
		s.mu.Lock()
		s.steps++
		s.mu.Unlock()
		for i, r := range owners {
			var next engine.Token
			switch {
			case r.req.Coupled():
				// The position of the token in the sequence, prompt included:
				// what a device's verifier keys the same sample by.
				next = engine.Coupled(rows[i], r.req.Temperature, r.req.TopP, r.req.Seed, len(r.req.Prompt)+len(r.tokens)).Token
			case r.rng != nil:
				r.probs = engine.Distribution(r.probs, rows[i], r.req.Temperature, r.req.TopP)
				next = engine.Sample(r.rng, r.probs)
			default:
				next = engine.Argmax(rows[i])
			}
			r.tokens = append(r.tokens, next)
			r.last = next
			c := textgen.Chunk{Tokens: []engine.Token{next}}
			if r.req.Logprobs {
				c.Logprobs = []textgen.Logprob{textgen.LogprobAt(rows[i], next, r.req.TopLogprobs)}
			}
			r.out <- c
		}
		// Retire finished requests.
		kept := active[:0]
		for _, r := range active {
			switch {
			case r.stopped.Load():
				finish(r, textgen.FinishStop, nil)
			case r.ctx.Err() != nil:
				finish(r, textgen.FinishStop, r.ctx.Err())
			case len(r.tokens) > 0 && s.model.IsEOG(r.last):
				finish(r, textgen.FinishStop, nil)
			case len(r.tokens) >= r.req.MaxTokens:
				finish(r, textgen.FinishLength, nil)
			case len(r.req.Prompt)+len(r.tokens) >= s.cfg.SlotContext:
				finish(r, textgen.FinishLength, nil)
			default:
				kept = append(kept, r)
			}
		}
		active = kept
	}
}
