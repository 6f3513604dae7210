package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/textgen"
)

// params are the validated generation settings of a request.
type params struct {
	dev         int
	maxTokens   int  // resolved by fit
	explicitMax bool // the request gave max_tokens
	temperature float32
	topP        float32
	seed        uint64
	seedOut     int64  // the seed as the response reports it
	sampling    string // textgen.Sampling* when temperature > 0, else ""
	draftTopK   int
	stops       []string
	logprobs    bool
	topLogprobs int
	tpot        time.Duration // latency objective per output token; 0: the device's default
	op          string        // gen_ai.operation.name: "chat" or "text_completion"
}

// settings are the generation settings every endpoint (OpenAI's and Ollama's)
// shares, as the request gave them; nil means absent.
type settings struct {
	model       string
	maxTokens   *int
	maxParam    string // the name of the max-tokens field, for errors
	temperature *float64
	topP        *float64
	stop        StopSequences
	seed        *int64
	n           *int
	logprobs    bool
	topLogprobs int
	topParam    string // the name of the top-logprobs field, for errors
	op          string // gen_ai.operation.name; default "text_completion"
	opts        *RequestOptions
}

// parseParams validates the settings and picks the device.
func (s *Server) parseParams(r *http.Request, in settings) (*params, *APIError) {
	p := &params{op: in.op}
	model, maxTokens, temperature, stop, seed, n := in.model, in.maxTokens, in.temperature, in.stop, in.seed, in.n
	if n != nil && *n != 1 {
		return nil, invalid("n", "n must be 1: one choice per request is supported, got %d", *n)
	}
	maxParam := in.maxParam
	if maxParam == "" {
		maxParam = "max_tokens"
	}
	topP, e := checkTopP(in.topP)
	if e != nil {
		return nil, e
	}
	p.topP = topP
	if e := checkLogprobs(in.topParam, in.logprobs, in.topLogprobs); e != nil {
		return nil, e
	}
	p.logprobs, p.topLogprobs = in.logprobs, in.topLogprobs
	if o := in.opts; o != nil && o.TPOTMs != nil {
		if !(*o.TPOTMs > 0 && *o.TPOTMs <= events.MaxTPOTMs) {
			return nil, invalid("sled.tpot_ms", "sled.tpot_ms must be in (0, %d], got %g", events.MaxTPOTMs, *o.TPOTMs)
		}
		p.tpot = time.Duration(*o.TPOTMs * float64(time.Millisecond))
	}
	if maxTokens != nil {
		switch {
		case *maxTokens <= 0:
			return nil, invalid(maxParam, "%s must be positive, got %d", maxParam, *maxTokens)
		case *maxTokens > s.cfg.MaxTokensLimit:
			return nil, invalid(maxParam, "%s is %d, more than this server's limit of %d", maxParam, *maxTokens, s.cfg.MaxTokensLimit)
		}
		p.maxTokens, p.explicitMax = *maxTokens, true
	}
	if temperature != nil {
		if !(*temperature >= 0 && *temperature <= 2) {
			return nil, invalid("temperature", "temperature must be in [0, 2], got %g", *temperature)
		}
		p.temperature = float32(*temperature)
	}
	if len(stop) > MaxStops {
		return nil, invalid("stop", "at most %d stop sequences are allowed, got %d", MaxStops, len(stop))
	}
	p.stops = stop
	if o := in.opts; o != nil && o.Sampling != nil {
		switch *o.Sampling {
		case textgen.SamplingCoupled, textgen.SamplingTopK, textgen.SamplingPoint:
			p.sampling = *o.Sampling
		default:
			return nil, invalid("sled.sampling", "sled.sampling must be %q, %q or %q, got %q",
				textgen.SamplingCoupled, textgen.SamplingTopK, textgen.SamplingPoint, *o.Sampling)
		}
	}
	if o := in.opts; o != nil && o.DraftTopK != nil {
		if *o.DraftTopK < 1 || *o.DraftTopK > textgen.MaxDraftTopK {
			return nil, invalid("sled.draft_top_k", "sled.draft_top_k must be in [1, %d], got %d", textgen.MaxDraftTopK, *o.DraftTopK)
		}
		p.draftTopK = *o.DraftTopK
	}
	switch {
	case p.temperature <= 0:
		p.sampling = ""
	case p.sampling == "":
		p.sampling = textgen.SamplingCoupled
	}
	switch {
	case seed != nil:
		p.seed, p.seedOut = uint64(*seed), *seed
	case p.temperature > 0:
		// Drawn within int64, so that the seed the response reports is one a
		// client can send back.
		p.seedOut = rand.Int64()
		p.seed = uint64(p.seedOut)
	}
	dev, e := s.pickDevice(r, model)
	if e != nil {
		return nil, e
	}
	p.dev = dev
	return p, nil
}

// fit checks the prompt length against the limits and resolves max_tokens.
func (s *Server) fit(p *params, param string, promptTokens int, m *engine.Model) *APIError {
	tooLong := func(format string, args ...any) *APIError {
		e := invalid(param, format, args...)
		e.Code = CodeContextLengthExceeded
		return e
	}
	if promptTokens == 0 {
		return invalid(param, "the prompt is empty")
	}
	if s.cfg.MaxPromptTokens > 0 && promptTokens > s.cfg.MaxPromptTokens {
		return tooLong("the prompt has %d tokens, more than this server's limit of %d", promptTokens, s.cfg.MaxPromptTokens)
	}
	ctxLen := m.DefaultSlotContext()
	if ctxLen <= 0 {
		if !p.explicitMax {
			p.maxTokens = s.cfg.DefaultMaxTokens
		}
		return nil
	}
	room := ctxLen - promptTokens
	switch {
	case p.explicitMax && p.maxTokens > room:
		return tooLong("this model's context is %d tokens; the prompt has %d and max_tokens asks for %d more", ctxLen, promptTokens, p.maxTokens)
	case room <= 0:
		return tooLong("this model's context is %d tokens and the prompt has %d, leaving no room to generate", ctxLen, promptTokens)
	case !p.explicitMax:
		p.maxTokens = min(s.cfg.DefaultMaxTokens, room)
	}
	return nil
}

// outcome is a finished generation, seen as text.
type outcome struct {
	text     string
	finish   string
	result   textgen.Result
	spans    [][2]int
	logprobs []tokenLogprob // when asked for: every output token's (non-nil)
	first    time.Time      // when the first output came; zero if none did
	sampling string         // Stats.Sampling
	seed     *int64         // Stats.Seed
}

func (o *outcome) usage(promptTokens int) *Usage {
	n := len(o.result.Tokens)
	return &Usage{PromptTokens: promptTokens, CompletionTokens: n, TotalTokens: promptTokens + n}
}

func (o *outcome) stats(device string) *Stats {
	st := o.result.Stats
	return &Stats{
		Device: device, Rounds: st.Rounds, ServerRounds: st.ServerRounds, Drafted: st.Drafted, Accepted: st.Accepted,
		AcceptanceRate: st.AcceptanceRate, Sampling: o.sampling, Seed: o.seed, UnverifiedTokens: st.Unverified,
		Retries: st.Retries, Resyncs: st.Resyncs, UnverifiedSpans: o.spans,
	}
}

// generate runs prompt on device p.dev. onText, if not nil, is called with each run
// of text as soon as it is final (no stop string can claim it any more), and with
// the logprobs of the tokens that run released when they were asked for; an error
// from onText aborts the generation and is returned.
func (s *Server) generate(ctx context.Context, p *params, prompt []engine.Token, onText func(string, []tokenLogprob) error) (*outcome, error) {
	gen := s.devices[p.dev].Generator
	m := gen.Model()
	began := time.Now()
	var first time.Time
	ts := m.NewTextStream()
	ta := newTextAssembler(p.stops)
	var all []tokenLogprob
	if p.logprobs {
		all = []tokenLogprob{}
	}
	flush := func(text string) error {
		lps := ta.takeLogprobs()
		all = append(all, lps...)
		if onText == nil || text == "" && len(lps) == 0 {
			return nil
		}
		return onText(text, lps)
	}
	emit := func(c textgen.Chunk) error {
		if first.IsZero() {
			first = time.Now()
		}
		stopped := false
		for i, t := range c.Tokens {
			if p.logprobs && i < len(c.Logprobs) {
				ta.addLogprob(c.Logprobs[i], m.Piece(t))
			}
			if stopped = ta.add(ts.Add(t), c.Unverified); stopped {
				break
			}
		}
		if err := flush(ta.release()); err != nil {
			return err
		}
		if stopped {
			return textgen.ErrStop
		}
		return nil
	}
	req := textgen.Request{Prompt: prompt, MaxTokens: p.maxTokens, Temperature: p.temperature, TopP: p.topP, Seed: p.seed, TPOT: p.tpot,
		Sampling: p.sampling, DraftTopK: p.draftTopK, Logprobs: p.logprobs, TopLogprobs: p.topLogprobs}
	res, err := gen.Generate(ctx, req, emit)
	if err != nil {
		return nil, err
	}
	finish := res.FinishReason
	if ta.stopped {
		finish = textgen.FinishStop
	} else if ta.add(ts.Flush(), false) {
		finish = textgen.FinishStop
	}
	if err := flush(ta.finish()); err != nil {
		return nil, err
	}
	s.observe(ctx, p, len(prompt), len(res.Tokens), began, first, time.Now())
	o := &outcome{text: ta.text(), finish: finish, result: res, spans: ta.unverifiedSpans(), logprobs: all, first: first, sampling: "greedy"}
	if p.temperature > 0 {
		o.sampling, o.seed = p.sampling, &p.seedOut
	}
	return o, nil
}

// generationError maps an error from Generate to an API error; nil when the
// client has gone and no response is due.
func (s *Server) generationError(r *http.Request, err error) *APIError {
	switch {
	case r.Context().Err() != nil:
		return nil
	case errors.Is(err, textgen.ErrInvalidRequest):
		e := invalid("", "%v", err)
		if errors.Is(err, engine.ErrContextFull) {
			e.Code = CodeContextLengthExceeded
		}
		return e
	case errors.Is(err, textgen.ErrUnavailable):
		return &APIError{StatusCode: http.StatusServiceUnavailable, Type: TypeUnavailable, Code: "unavailable",
			Message: fmt.Sprintf("the device cannot serve now: %v", err)}
	case errors.Is(err, context.DeadlineExceeded):
		return &APIError{StatusCode: http.StatusServiceUnavailable, Type: TypeUnavailable, Code: "timeout",
			Message: fmt.Sprintf("the device did not finish in time: %v", err)}
	default:
		return &APIError{StatusCode: http.StatusInternalServerError, Type: TypeServer,
			Message: fmt.Sprintf("generation failed: %v", err)}
	}
}

// eventStream writes server-sent events. Headers go out with the first event, so
// that an error before any output can still get a proper status.
type eventStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

func newEventStream(w http.ResponseWriter) *eventStream {
	return &eventStream{w: w, rc: http.NewResponseController(w)}
}

func (es *eventStream) start() {
	if es.started {
		return
	}
	h := es.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	es.w.WriteHeader(http.StatusOK)
	es.started = true
}

func (es *eventStream) write(data []byte) error {
	es.start()
	if _, err := fmt.Fprintf(es.w, "data: %s\n\n", data); err != nil {
		return fmt.Errorf("httpapi: writing event: %w", err)
	}
	if err := es.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("httpapi: flushing event: %w", err)
	}
	return nil
}

// send writes v as one event.
func (es *eventStream) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("httpapi: encoding event: %w", err)
	}
	return es.write(b)
}

// done writes the terminating [DONE] event.
func (es *eventStream) done() error { return es.write([]byte("[DONE]")) }

// fail reports e: as the response if nothing was sent yet, else as an error event
// (and no [DONE]).
func (es *eventStream) fail(e *APIError) {
	if !es.started {
		writeError(es.w, e)
		return
	}
	es.send(errorBody{e})
}

func (s *Server) logRequest(r *http.Request, device string, status int, promptTokens int, o *outcome, began time.Time, err error) {
	attrs := []any{"path", r.URL.Path, "device", device, "status", status, "prompt_tokens", promptTokens, "dur", time.Since(began)}
	if o != nil {
		attrs = append(attrs, "completion_tokens", len(o.result.Tokens), "finish", o.finish)
	}
	switch {
	case status >= 500:
		s.log.Error("httpapi: request failed", append(attrs, "err", err)...)
	case err != nil:
		s.log.Info("httpapi: request ended", append(attrs, "err", err)...)
	default:
		s.log.Info("httpapi: request", attrs...)
	}
}

// observe records a finished request's GenAI metrics.
func (s *Server) observe(ctx context.Context, p *params, in, out int, began, first, end time.Time) {
	op := p.op
	if op == "" {
		op = "text_completion"
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(
		attribute.String("gen_ai.operation.name", op), attribute.String("gen_ai.request.model", s.ModelName())))
	if !first.IsZero() {
		s.m.TimeToFirstToken.Record(ctx, first.Sub(began).Seconds(), attrs)
		if out > 1 {
			s.m.TimePerOutputToken.Record(ctx, end.Sub(first).Seconds()/float64(out-1), attrs)
		}
	}
	for _, u := range []struct {
		kind string
		n    int
	}{{"input", in}, {"output", out}} {
		s.m.TokenUsage.Record(ctx, int64(u.n), metric.WithAttributeSet(attribute.NewSet(
			attribute.String("gen_ai.operation.name", op), attribute.String("gen_ai.request.model", s.ModelName()),
			attribute.String("gen_ai.token.type", u.kind))))
	}
}
