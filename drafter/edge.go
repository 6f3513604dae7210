package drafter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/textgen"
)

// Edge generates with the device's draft model alone, with no server: the paper's
// edge-only baseline. Its output is the draft model's, not the target's. It
// implements textgen.Generator, one generation at a time.
type Edge struct {
	model  *engine.Model
	maxCtx int
	mu     sync.Mutex
	ds     *draftState
}

// NewEdge creates an edge-only generator on model. threads and maxContext default
// as in Config.
func NewEdge(model *engine.Model, threads, maxContext int) (*Edge, error) {
	if maxContext <= 0 {
		maxContext = model.DefaultSlotContext()
	}
	ds, err := newDraftState(model, threads, maxContext)
	if err != nil {
		return nil, fmt.Errorf("drafter: %w", err)
	}
	return &Edge{model: model, maxCtx: maxContext, ds: ds}, nil
}

// Close frees the context.
func (e *Edge) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ds.close()
}

// Model implements textgen.Generator.
func (e *Edge) Model() *engine.Model { return e.model }

// Generate implements textgen.Generator.
func (e *Edge) Generate(ctx context.Context, req textgen.Request, emit func(textgen.Chunk) error) (textgen.Result, error) {
	if err := textgen.Validate(e.model, req, e.maxCtx); err != nil {
		return textgen.Result{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	res := textgen.Result{FinishReason: textgen.FinishLength}
	if err := e.ds.reset(); err != nil {
		return res, err
	}
	if err := e.ds.sync(ctx, req.Prompt); err != nil {
		return res, err
	}
	var rng *rand.Rand
	var probs []float32
	if req.Temperature > 0 && !req.Coupled() {
		rng = rand.New(rand.NewPCG(req.Seed, 0xed6e))
	}
	for len(res.Tokens) < req.MaxTokens && len(req.Prompt)+len(res.Tokens) < e.maxCtx {
		var t engine.Token
		switch {
		case req.Coupled():
			t = engine.Coupled(e.ds.logits, req.Temperature, req.TopP, req.Seed, len(req.Prompt)+len(res.Tokens)).Token
		case rng != nil:
			probs = engine.Distribution(probs, e.ds.logits, req.Temperature, req.TopP)
			t = engine.Sample(rng, probs)
		default:
			t, _ = e.ds.peek()
		}
		res.Tokens = append(res.Tokens, t)
		c := textgen.Chunk{Tokens: []engine.Token{t}}
		if req.Logprobs {
			// An edge-only device's text is its own model's: so are the logprobs.
			c.Logprobs = []textgen.Logprob{textgen.LogprobAt(e.ds.logits, t, req.TopLogprobs)}
		}
		if err := emit(c); err != nil {
			if errors.Is(err, textgen.ErrStop) {
				res.FinishReason = textgen.FinishStop
				return res, nil
			}
			return res, err
		}
		if e.model.IsEOG(t) {
			res.FinishReason = textgen.FinishStop
			return res, nil
		}
		if err := e.ds.push(ctx, t); err != nil {
			return res, err
		}
	}
	return res, nil
}
