// Package textgen is the contract between SLED's text generators (a device running
// speculative decoding, an edge-only device, the centralized baseline server) and
// their front ends (the OpenAI-compatible HTTP API, the CLI, the benchmarks).
// Generators work in tokens; front ends own text: chat templates, tokenization,
// detokenization and stop strings.
package textgen

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sled-project/sled/engine"
)

// Request is one generation.
type Request struct {
	// Prompt is the tokenized prompt, BOS included when the model wants one. It must
	// be non-empty and every id valid for the generator's model.
	Prompt []engine.Token
	// MaxTokens bounds the generated tokens; > 0.
	MaxTokens int
	// Temperature 0 means greedy decoding (the lossless default); > 0 samples.
	Temperature float32
	// TopP, in (0, 1], truncates sampling to the smallest set of most likely
	// tokens whose probability reaches it (engine.Nucleus). 0 or 1: no truncation.
	// Ignored when greedy.
	TopP float32
	// Seed makes sampling reproducible. With SamplingCoupled (the default) the
	// output is a pure function of the prompt, the sampling settings and the
	// seed, whichever generator (device, draft model, centralized server)
	// produced it, up to near-ties.
	Seed uint64
	// Sampling is the sampling mode at Temperature > 0: SamplingCoupled
	// (empty means it), SamplingTopK or SamplingPoint. Ignored when greedy.
	// Generators that do not speculate sample the target's distribution the
	// same way in every mode but coupled, which they too compute by position.
	Sampling string
	// DraftTopK is the size of the draft distribution a device sends in
	// SamplingTopK (1 to MaxDraftTopK); 0: DefaultDraftTopK.
	DraftTopK int
	// Logprobs asks for each generated token's log-probability under the model
	// that decides the output (for speculative decoding: the target, from its
	// verification logits), in Chunk.Logprobs, and TopLogprobs (0 to
	// MaxTopLogprobs) for that many most likely alternatives at each position.
	Logprobs    bool
	TopLogprobs int
	// TPOT is the request's latency objective per output token; 0: the
	// generator's default. A generator that cannot act on it ignores it
	// (SLED's devices pass it to the verifier's draft budgets and the
	// batcher).
	TPOT time.Duration
}

// MaxTopLogprobs bounds Request.TopLogprobs (OpenAI's limit).
const MaxTopLogprobs = 20

// Sampling modes (Request.Sampling).
const (
	// SamplingCoupled: shared randomness. Each position's token is the
	// Gumbel-max of the deciding model's distribution with noise keyed by the
	// seed and the position (engine.Coupled); a device drafts with the same
	// noise over its own logits and the verifier accepts while its own sample
	// equals the draft. Exact and reproducible by seed.
	SamplingCoupled = "coupled"
	// SamplingTopK: a device samples each draft token from its top-DraftTopK
	// distribution at the request's temperature (renormalised), sends that
	// distribution, and the verifier applies the rejection rule with it. Exact
	// for the distribution sampled; not reproducible across devices.
	SamplingTopK = "topk"
	// SamplingPoint: a device drafts greedily and declares a point mass; the
	// rejection rule then accepts a draft token with the target's probability
	// of it (SLED's sampling before coupled sampling, kept to compare).
	SamplingPoint = "point"
)

// DefaultDraftTopK and MaxDraftTopK bound Request.DraftTopK.
const (
	DefaultDraftTopK = 8
	MaxDraftTopK     = 64
)

// Logprob is one generated token's log-probability (natural log, under the raw
// distribution: temperature 1, no truncation) and the most likely alternatives at
// its position, most likely first.
type Logprob struct {
	Token   engine.Token
	Logprob float32
	Top     []engine.TopLogprob
	// Draft marks a figure of the draft model's, not the target's: a token
	// released unverified (fallback mode), whose Logprob is the draft's own
	// confidence and which has no alternatives.
	Draft bool
}

// Chunk is a run of newly generated tokens, in order.
type Chunk struct {
	Tokens []engine.Token
	// Unverified marks tokens a device released without the target's verification
	// (fallback mode, after repeated verification timeouts). Never set in strict mode.
	Unverified bool
	// Logprobs, when the request asked for them, holds one entry per token of
	// Tokens, in order; nil otherwise.
	Logprobs []Logprob
}

// Stats are the speculative-decoding figures of one generation. Generators that do
// not speculate leave the draft fields zero.
type Stats struct {
	Rounds         int     `json:"rounds"`          // verification rounds completed
	Drafted        int     `json:"drafted"`         // draft tokens sent for verification
	Accepted       int     `json:"accepted"`        // draft tokens the target accepted
	AcceptanceRate float64 `json:"acceptance_rate"` // Accepted / Drafted
	Unverified     int     `json:"unverified"`      // tokens released unverified (fallback)
	Retries        int     `json:"retries"`         // verification requests re-sent after a timeout
	Resyncs        int     `json:"resyncs"`         // full-prefix resends
	// ServerRounds counts the Rounds the verifier ran on the device's behalf
	// (no draft; see events.VerifyResult.ServerNext).
	ServerRounds int `json:"server_rounds,omitempty"`
}

// Finish reasons, as OpenAI names them.
const (
	FinishStop   = "stop"   // the model ended the text (EOS) or a stop condition hit
	FinishLength = "length" // MaxTokens reached
)

// Result is a finished generation.
type Result struct {
	Tokens       []engine.Token // all generated tokens, unverified ones included
	FinishReason string
	Stats        Stats
}

// ErrStop, returned by an emit callback, ends a generation early without error: the
// generator returns the tokens so far with FinishStop.
var ErrStop = errors.New("textgen: stop")

// ErrUnavailable wraps the errors of a generator that cannot serve now, through
// no fault of the request (a device with no live verifier, say); front ends
// answer 503 so that a client or load balancer retries elsewhere or later.
var ErrUnavailable = errors.New("textgen: unavailable")

// ErrInvalidRequest wraps every error about a bad Request (empty prompt, invalid
// token, MaxTokens <= 0, prompt longer than the context).
var ErrInvalidRequest = errors.New("textgen: invalid request")

// Generator produces text for a Request.
//
// Generate calls emit, from the calling goroutine, with each run of new tokens as
// soon as they are final, and returns when the generation ends: EOS (FinishStop),
// MaxTokens (FinishLength), emit returning ErrStop (FinishStop), or an error. An
// error from emit other than ErrStop, or ctx ending, aborts the generation and is
// returned. Generate is safe for concurrent use; a generator may serve requests one
// at a time.
type Generator interface {
	Generate(ctx context.Context, req Request, emit func(Chunk) error) (Result, error)
	// Model is the model whose vocabulary Request and Chunk tokens use.
	Model() *engine.Model
}

// Validate checks req against model and a context of ctxLen positions, returning an
// error wrapping ErrInvalidRequest.
func Validate(model *engine.Model, req Request, ctxLen int) error {
	switch {
	case len(req.Prompt) == 0:
		return fmt.Errorf("%w: empty prompt", ErrInvalidRequest)
	case req.MaxTokens <= 0:
		return fmt.Errorf("%w: max_tokens must be positive, got %d", ErrInvalidRequest, req.MaxTokens)
	case req.Temperature < 0:
		return fmt.Errorf("%w: negative temperature %v", ErrInvalidRequest, req.Temperature)
	case !(req.TopP >= 0 && req.TopP <= 1):
		return fmt.Errorf("%w: top_p must be in [0, 1], got %v", ErrInvalidRequest, req.TopP)
	case req.TopLogprobs < 0 || req.TopLogprobs > MaxTopLogprobs:
		return fmt.Errorf("%w: top_logprobs must be in [0, %d], got %d", ErrInvalidRequest, MaxTopLogprobs, req.TopLogprobs)
	case req.Sampling != "" && req.Sampling != SamplingCoupled && req.Sampling != SamplingTopK && req.Sampling != SamplingPoint:
		return fmt.Errorf("%w: sampling mode %q is not %q, %q or %q", ErrInvalidRequest, req.Sampling, SamplingCoupled, SamplingTopK, SamplingPoint)
	case req.DraftTopK < 0 || req.DraftTopK > MaxDraftTopK:
		return fmt.Errorf("%w: draft top_k must be in [1, %d], got %d", ErrInvalidRequest, MaxDraftTopK, req.DraftTopK)
	case req.TopLogprobs > 0 && !req.Logprobs:
		return fmt.Errorf("%w: top_logprobs needs logprobs", ErrInvalidRequest)
	case len(req.Prompt) >= ctxLen:
		return fmt.Errorf("%w: prompt of %d tokens does not fit the context of %d", ErrInvalidRequest, len(req.Prompt), ctxLen)
	}
	for i, t := range req.Prompt {
		if !model.ValidToken(t) {
			return fmt.Errorf("%w: prompt token %d at %d is outside the vocabulary of %d", ErrInvalidRequest, t, i, model.VocabSize())
		}
	}
	return nil
}

// Coupled reports whether req samples by shared randomness: Temperature > 0 in
// SamplingCoupled (the default mode).
func (req Request) Coupled() bool {
	return req.Temperature > 0 && (req.Sampling == "" || req.Sampling == SamplingCoupled)
}

// LogprobAt is the Logprob of token t chosen from the logits row, with top
// alternatives: what a generator that owns the deciding model's logits puts in
// Chunk.Logprobs.
func LogprobAt(row []float32, t engine.Token, top int) Logprob {
	lp, alts := engine.Logprobs(row, t, top)
	return Logprob{Token: t, Logprob: min(lp, 0), Top: alts}
}
