package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/textgen"
)

// greedyGen is a real textgen.Generator: greedy decoding of the target model alone
// in a one-slot engine context, one request at a time, emitting every token as it
// is chosen. Options let tests mark tokens unverified or stop with an error, as a
// device in fallback mode or a failing device would.
type greedyGen struct {
	m   *engine.Model
	mu  sync.Mutex
	ctx *engine.Context

	unverifiedFrom int           // tokens after this many are marked unverified; 0: none
	failAfter      int           // fail after emitting this many tokens; 0: never
	finished       chan error    // if not nil, receives every Generate's error
	started        chan struct{} // if not nil, receives a value when a generation emits its first token
}

var errDeviceBroke = errors.New("device broke")

var (
	modelOnce sync.Once
	model     *engine.Model
	modelErr  error
)

// targetModel loads the target model once for the whole test binary.
func targetModel(t *testing.T) *engine.Model {
	t.Helper()
	path := testmodels.Path(t, testmodels.Target)
	modelOnce.Do(func() { model, modelErr = engine.LoadModel(path, engine.ModelOptions{}) })
	if modelErr != nil {
		t.Fatal(modelErr)
	}
	return model
}

func newGreedyGen(t *testing.T, slotContext int) *greedyGen {
	t.Helper()
	m := targetModel(t)
	c, err := m.NewContext(engine.ContextOptions{Threads: 1, SlotContext: slotContext})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &greedyGen{m: m, ctx: c}
}

func (g *greedyGen) Model() *engine.Model { return g.m }

func (g *greedyGen) Generate(ctx context.Context, req textgen.Request, emit func(textgen.Chunk) error) (res textgen.Result, err error) {
	if g.finished != nil {
		defer func() { g.finished <- err }()
	}
	limit := g.ctx.Options().SlotContext
	switch {
	case len(req.Prompt) == 0:
		return res, fmt.Errorf("%w: empty prompt", textgen.ErrInvalidRequest)
	case req.MaxTokens <= 0:
		return res, fmt.Errorf("%w: max tokens %d", textgen.ErrInvalidRequest, req.MaxTokens)
	case len(req.Prompt) >= limit:
		return res, fmt.Errorf("%w: %w: prompt of %d tokens, context %d", textgen.ErrInvalidRequest, engine.ErrContextFull, len(req.Prompt), limit)
	}
	for _, t := range req.Prompt {
		if !g.m.ValidToken(t) {
			return res, fmt.Errorf("%w: token %d", textgen.ErrInvalidRequest, t)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.ctx.Clear(0); err != nil {
		return res, err
	}
	var logits []float32
	bs := g.ctx.Options().BatchSize
	for i := 0; i < len(req.Prompt); i += bs {
		part := req.Prompt[i:min(i+bs, len(req.Prompt))]
		entries := make([]engine.Entry, len(part))
		for j, t := range part {
			entries[j] = engine.Entry{Pos: i + j, Token: t, Logits: i+j == len(req.Prompt)-1}
		}
		rows, err := g.ctx.Decode(ctx, entries)
		if err != nil {
			return res, err
		}
		if len(rows) > 0 {
			logits = rows[0]
		}
	}
	res.FinishReason = textgen.FinishLength
	for len(res.Tokens) < req.MaxTokens {
		if g.failAfter > 0 && len(res.Tokens) == g.failAfter {
			return res, errDeviceBroke
		}
		t := engine.Argmax(logits)
		res.Stats.Rounds++
		if g.m.IsEOG(t) {
			res.FinishReason = textgen.FinishStop
			break
		}
		res.Tokens = append(res.Tokens, t)
		unverified := g.unverifiedFrom > 0 && len(res.Tokens) > g.unverifiedFrom
		if unverified {
			res.Stats.Unverified++
		}
		if g.started != nil && len(res.Tokens) == 1 {
			g.started <- struct{}{}
		}
		c := textgen.Chunk{Tokens: []engine.Token{t}, Unverified: unverified}
		if req.Logprobs {
			c.Logprobs = []textgen.Logprob{textgen.LogprobAt(logits, t, req.TopLogprobs)}
		}
		if err := emit(c); err != nil {
			if errors.Is(err, textgen.ErrStop) {
				res.FinishReason = textgen.FinishStop
				return res, nil
			}
			return res, err
		}
		pos := len(req.Prompt) + len(res.Tokens) - 1
		if len(res.Tokens) == req.MaxTokens || pos+1 >= limit {
			break
		}
		rows, err := g.ctx.Decode(ctx, []engine.Entry{{Pos: pos, Token: t, Logits: true}})
		if err != nil {
			return res, err
		}
		logits = rows[0]
	}
	return res, nil
}
