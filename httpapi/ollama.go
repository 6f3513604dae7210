package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/sled-project/sled/engine"
)

// Ollama's API, so that an Ollama client (the ollama Python and JavaScript
// packages, Open WebUI, editors' plugins) works against a SLED device unchanged:
//
//	POST /api/generate   a completion: NDJSON stream by default, "stream": false for one object
//	POST /api/chat       a chat turn, the same way
//	GET  /api/tags       the served model
//	POST /api/show       its details
//	GET  /api/ps         the loaded models (SLED keeps them loaded)
//	GET  /api/version    OllamaVersion
//
// Generation is the same as the OpenAI routes' (one text path: templates, stop
// strings, UTF-8-safe streaming, logprobs from the target), with two of
// Ollama's rules: a prompt is put through the model's chat template unless
// "raw" is true, and errors are {"error": "..."}. Unlike Ollama, decoding is
// greedy unless options.temperature says otherwise (the lossless default, as on
// the OpenAI routes). The final object of a generation carries the
// speculative-decoding figures in an extra "sled" field.

// OllamaVersion is what GET /api/version reports: the Ollama release whose API
// these routes follow. Clients (Open WebUI among them) parse it as a dotted
// number to decide which features the server has.
const OllamaVersion = "0.24.0"

// OllamaOptions are the "options" of a generate or chat request that SLED
// honours. Others are refused by name (ollamaOptionFields).
type OllamaOptions struct {
	Temperature *float64      `json:"temperature,omitempty"`
	TopP        *float64      `json:"top_p,omitempty"`
	Seed        *int64        `json:"seed,omitempty"`
	NumPredict  *int          `json:"num_predict,omitempty"` // -1: no limit but the context's
	Stop        StopSequences `json:"stop,omitempty"`
	// NumCtx bounds prompt plus output (at most the device's context).
	NumCtx *int `json:"num_ctx,omitempty"`
}

// OllamaGenerateRequest is the body of POST /api/generate.
type OllamaGenerateRequest struct {
	Model       string         `json:"model"`
	Prompt      string         `json:"prompt"`
	System      string         `json:"system,omitempty"`
	Raw         bool           `json:"raw,omitempty"`
	Stream      *bool          `json:"stream,omitempty"` // default true
	Options     *OllamaOptions `json:"options,omitempty"`
	KeepAlive   any            `json:"keep_alive,omitempty"` // accepted: models stay loaded
	Logprobs    bool           `json:"logprobs,omitempty"`
	TopLogprobs int            `json:"top_logprobs,omitempty"`
}

// OllamaChatRequest is the body of POST /api/chat.
type OllamaChatRequest struct {
	Model       string          `json:"model"`
	Messages    []OllamaMessage `json:"messages"`
	Stream      *bool           `json:"stream,omitempty"`
	Options     *OllamaOptions  `json:"options,omitempty"`
	KeepAlive   any             `json:"keep_alive,omitempty"`
	Logprobs    bool            `json:"logprobs,omitempty"`
	TopLogprobs int             `json:"top_logprobs,omitempty"`
}

// OllamaMessage is a chat message.
type OllamaMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// OllamaLogprob is a token's log-probability with its alternatives.
type OllamaLogprob struct {
	Token       string               `json:"token"`
	Logprob     float64              `json:"logprob"`
	TopLogprobs []OllamaTokenLogprob `json:"top_logprobs,omitempty"`
}

// OllamaTokenLogprob is an alternative token.
type OllamaTokenLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
}

// OllamaResponse is one object of a generate or chat response: a streamed piece
// (Done false) or the final object, which has the figures. Response is set for
// generate, Message for chat. Durations are in nanoseconds.
type OllamaResponse struct {
	Model              string          `json:"model"`
	CreatedAt          time.Time       `json:"created_at"`
	Response           *string         `json:"response,omitempty"`
	Message            *OllamaMessage  `json:"message,omitempty"`
	Done               bool            `json:"done"`
	DoneReason         string          `json:"done_reason,omitempty"`
	Context            []int32         `json:"context,omitempty"`
	TotalDuration      int64           `json:"total_duration,omitempty"`
	LoadDuration       int64           `json:"load_duration,omitempty"`
	PromptEvalCount    int             `json:"prompt_eval_count,omitempty"`
	PromptEvalDuration int64           `json:"prompt_eval_duration,omitempty"`
	EvalCount          int             `json:"eval_count,omitempty"`
	EvalDuration       int64           `json:"eval_duration,omitempty"`
	Logprobs           []OllamaLogprob `json:"logprobs,omitempty"`
	SLED               *Stats          `json:"sled,omitempty"`
}

// OllamaModelDetails is Ollama's "details" object.
type OllamaModelDetails struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

// OllamaModel is one model of GET /api/tags and GET /api/ps.
type OllamaModel struct {
	Name       string             `json:"name"`
	Model      string             `json:"model"`
	ModifiedAt time.Time          `json:"modified_at"`
	Size       uint64             `json:"size"`
	Digest     string             `json:"digest"`
	Details    OllamaModelDetails `json:"details"`
	// For /api/ps: SLED never unloads a model while it serves.
	ExpiresAt     *time.Time `json:"expires_at,omitempty"`
	SizeVRAM      *uint64    `json:"size_vram,omitempty"`
	ContextLength int        `json:"context_length,omitempty"`
	// SLED lists the devices serving the model.
	SLED *ModelDevices `json:"sled,omitempty"`
}

// OllamaShowResponse is the body of POST /api/show.
type OllamaShowResponse struct {
	Modelfile    string             `json:"modelfile"`
	Parameters   string             `json:"parameters"`
	Template     string             `json:"template"`
	Details      OllamaModelDetails `json:"details"`
	ModelInfo    map[string]any     `json:"model_info"`
	Capabilities []string           `json:"capabilities"`
	ModifiedAt   time.Time          `json:"modified_at"`
	SLED         *ModelDevices      `json:"sled,omitempty"`
}

// ollamaError writes Ollama's error shape.
func ollamaError(w http.ResponseWriter, e *APIError) {
	writeJSON(w, e.StatusCode, map[string]string{"error": e.Message})
}

var ollamaGenerateFields = map[string]fieldRule{
	"model": honoured, "prompt": honoured, "system": honoured, "raw": honoured, "stream": honoured,
	"options": honoured, "keep_alive": honoured, "logprobs": honoured, "top_logprobs": honoured,
	"format": neutral(`""`), "images": neutral("[]"), "suffix": neutral(`""`), "template": neutral(`""`),
	"context": neutral("[]"), "think": neutral("false"),
}

var ollamaChatFields = map[string]fieldRule{
	"model": honoured, "messages": honoured, "stream": honoured, "options": honoured, "keep_alive": honoured,
	"logprobs": honoured, "top_logprobs": honoured,
	"format": neutral(`""`), "tools": neutral("[]"), "think": neutral("false"),
}

// ollamaOptionFields are the options Ollama knows. Load-time options (num_gpu,
// num_thread, use_mmap, ...) are the server's to set, so a request cannot.
var ollamaOptionFields = map[string]fieldRule{
	"temperature": honoured, "top_p": honoured, "seed": honoured, "num_predict": honoured, "stop": honoured,
	"num_ctx": honoured,
	"top_k":   neutral("0"), "min_p": neutral("0"), "typical_p": neutral("1"), "tfs_z": neutral("1"),
	"repeat_penalty": neutral("1"), "presence_penalty": neutral("0"), "frequency_penalty": neutral("0"),
	"mirostat": neutral("0"),
	// These only tune penalties and context shifting, which SLED does not do.
	"repeat_last_n": honoured, "penalize_newline": honoured, "num_keep": honoured,
	"mirostat_tau": honoured, "mirostat_eta": honoured,
}

// decodeOllama reads an Ollama request: its fields and its options checked by
// name, the error in Ollama's shape.
func (s *Server) decodeOllama(w http.ResponseWriter, r *http.Request, v any, rules map[string]fieldRule) bool {
	body, e := s.readBody(w, r)
	if e == nil {
		e = decodeJSON(body, v, rules)
	}
	if e == nil {
		var raw struct {
			Options json.RawMessage `json:"options"`
		}
		if json.Unmarshal(body, &raw) == nil && len(raw.Options) > 0 && string(raw.Options) != "null" {
			if e = checkFields(raw.Options, ollamaOptionFields); e != nil {
				e.Message = "options: " + e.Message
				e.Param = "options." + e.Param
			}
		}
	}
	if e != nil {
		ollamaError(w, e)
		return false
	}
	return true
}

// ollamaSettings maps Ollama's options onto the shared settings.
func ollamaSettings(model string, o *OllamaOptions, logprobs bool, top int) settings {
	in := settings{model: model, maxParam: "options.num_predict", logprobs: logprobs, topLogprobs: top, topParam: "top_logprobs"}
	if o != nil {
		in.temperature, in.topP, in.seed, in.stop = o.Temperature, o.TopP, o.Seed, o.Stop
		if o.NumPredict != nil && *o.NumPredict > 0 {
			in.maxTokens = o.NumPredict
		}
	}
	return in
}

// ollamaParams validates an Ollama request's settings and resolves its length
// limits for a prompt of promptTokens on the chosen device.
func (s *Server) ollamaParams(r *http.Request, in settings, o *OllamaOptions) (*params, *APIError) {
	if o != nil {
		if n := o.NumPredict; n != nil && (*n == 0 || *n < -2) {
			return nil, invalid("options.num_predict", "options.num_predict must be positive, -1 (no limit) or -2 (fill the context), got %d", *n)
		}
		if n := o.NumCtx; n != nil && *n <= 0 {
			return nil, invalid("options.num_ctx", "options.num_ctx must be positive, got %d", *n)
		}
	}
	return s.parseParams(r, in)
}

// fitOllama is fit with Ollama's num_predict -1/-2 (as long as the context
// allows) and num_ctx (a tighter context).
func (s *Server) fitOllama(p *params, o *OllamaOptions, promptTokens int, m *engine.Model) *APIError {
	if o != nil && o.NumCtx != nil {
		ctx := m.DefaultSlotContext()
		if ctx > 0 && *o.NumCtx > ctx {
			return invalid("options.num_ctx", "options.num_ctx is %d, more than this device's context of %d", *o.NumCtx, ctx)
		}
		room := *o.NumCtx - promptTokens
		if room <= 0 {
			e := invalid("options.num_ctx", "the prompt has %d tokens, options.num_ctx %d leaves no room to generate", promptTokens, *o.NumCtx)
			e.Code = CodeContextLengthExceeded
			return e
		}
		if !p.explicitMax || p.maxTokens > room {
			p.maxTokens, p.explicitMax = min(room, s.cfg.MaxTokensLimit), true
		}
	}
	if o != nil && o.NumPredict != nil && *o.NumPredict < 0 && !p.explicitMax {
		if ctx := m.DefaultSlotContext(); ctx > promptTokens {
			p.maxTokens, p.explicitMax = min(ctx-promptTokens, s.cfg.MaxTokensLimit), true
		}
	}
	return s.fit(p, "prompt", promptTokens, m)
}

// ollamaName is the served model's name as Ollama spells names: with a tag.
func (s *Server) ollamaName() string {
	n := s.ModelName()
	if !strings.Contains(n, ":") {
		n += ":latest"
	}
	return n
}

func (s *Server) handleOllamaGenerate(w http.ResponseWriter, r *http.Request) {
	var req OllamaGenerateRequest
	if !s.decodeOllama(w, r, &req, ollamaGenerateFields) {
		return
	}
	p, e := s.ollamaParams(r, ollamaSettings(req.Model, req.Options, req.Logprobs, req.TopLogprobs), req.Options)
	if e != nil {
		ollamaError(w, e)
		return
	}
	m := s.devices[p.dev].Generator.Model()
	var prompt []engine.Token
	var err error
	if req.Raw {
		prompt, err = m.Tokenize(req.Prompt, true)
	} else {
		var msgs []engine.ChatMessage
		if req.System != "" {
			msgs = append(msgs, engine.ChatMessage{Role: "system", Content: req.System})
		}
		prompt, err = chatPrompt(m, append(msgs, engine.ChatMessage{Role: "user", Content: req.Prompt}))
	}
	if err != nil {
		ollamaError(w, &APIError{StatusCode: http.StatusInternalServerError, Type: TypeServer, Message: fmt.Sprintf("tokenizing the prompt: %v", err)})
		return
	}
	s.serveOllama(w, r, p, req.Options, prompt, req.Stream, false)
}

func (s *Server) handleOllamaChat(w http.ResponseWriter, r *http.Request) {
	var req OllamaChatRequest
	if !s.decodeOllama(w, r, &req, ollamaChatFields) {
		return
	}
	msgs := make([]engine.ChatMessage, len(req.Messages))
	for i, msg := range req.Messages {
		msgs[i] = engine.ChatMessage{Role: msg.Role, Content: msg.Content}
	}
	if e := checkMessages(msgs); e != nil {
		ollamaError(w, e)
		return
	}
	in := ollamaSettings(req.Model, req.Options, req.Logprobs, req.TopLogprobs)
	in.op = "chat"
	p, e := s.ollamaParams(r, in, req.Options)
	if e != nil {
		ollamaError(w, e)
		return
	}
	prompt, err := chatPrompt(s.devices[p.dev].Generator.Model(), msgs)
	if err != nil {
		ollamaError(w, &APIError{StatusCode: http.StatusInternalServerError, Type: TypeServer, Message: fmt.Sprintf("tokenizing the conversation: %v", err)})
		return
	}
	s.serveOllama(w, r, p, req.Options, prompt, req.Stream, true)
}

// serveOllama generates prompt and writes Ollama's response: NDJSON unless stream
// is false; chat selects the message shape.
func (s *Server) serveOllama(w http.ResponseWriter, r *http.Request, p *params, o *OllamaOptions, prompt []engine.Token, stream *bool, chat bool) {
	began := time.Now()
	dev := s.devices[p.dev]
	m := dev.Generator.Model()
	if e := s.fitOllama(p, o, len(prompt), m); e != nil {
		ollamaError(w, e)
		return
	}
	name := s.ollamaName()
	piece := func(text string, lps []tokenLogprob) *OllamaResponse {
		o := &OllamaResponse{Model: name, CreatedAt: time.Now().UTC()}
		if chat {
			o.Message = &OllamaMessage{Role: "assistant", Content: text}
		} else {
			o.Response = &text
		}
		if p.logprobs {
			o.Logprobs = ollamaLogprobs(m, lps)
		}
		return o
	}
	final := func(out *outcome) *OllamaResponse {
		o := piece("", nil)
		end, first := time.Now(), out.first
		if first.IsZero() {
			first = end
		}
		o.Done, o.DoneReason = true, out.finish
		o.TotalDuration = end.Sub(began).Nanoseconds()
		o.PromptEvalCount, o.PromptEvalDuration = len(prompt), first.Sub(began).Nanoseconds()
		o.EvalCount, o.EvalDuration = len(out.result.Tokens), end.Sub(first).Nanoseconds()
		o.SLED = out.stats(dev.Name)
		if !chat {
			o.Context = append(append([]int32(nil), prompt...), out.result.Tokens...)
		}
		return o
	}
	if stream != nil && !*stream {
		out, err := s.generate(r.Context(), p, prompt, nil)
		if err != nil {
			s.failOllama(w, r, nil, dev.Name, len(prompt), began, err)
			return
		}
		resp := final(out)
		if chat {
			resp.Message.Content = out.text
		} else {
			resp.Response = &out.text
		}
		if p.logprobs {
			resp.Logprobs = ollamaLogprobs(m, out.logprobs)
		}
		writeJSON(w, http.StatusOK, resp)
		s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, nil)
		return
	}
	ns := &ndjsonStream{w: w, rc: http.NewResponseController(w)}
	out, err := s.generate(r.Context(), p, prompt, func(text string, lps []tokenLogprob) error {
		return ns.send(piece(text, lps))
	})
	if err != nil {
		s.failOllama(w, r, ns, dev.Name, len(prompt), began, err)
		return
	}
	err = ns.send(final(out))
	s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, err)
}

func (s *Server) failOllama(w http.ResponseWriter, r *http.Request, ns *ndjsonStream, device string, promptTokens int, began time.Time, err error) {
	e := s.generationError(r, err)
	if e == nil {
		s.logRequest(r, device, 499, promptTokens, nil, began, err)
		return
	}
	if ns != nil && ns.started {
		ns.send(map[string]string{"error": e.Message})
	} else {
		ollamaError(w, e)
	}
	s.logRequest(r, device, e.StatusCode, promptTokens, nil, began, err)
}

func ollamaLogprobs(m *engine.Model, lps []tokenLogprob) []OllamaLogprob {
	out := make([]OllamaLogprob, len(lps))
	for i, lp := range lps {
		out[i] = OllamaLogprob{Token: string(lp.piece), Logprob: float64(lp.Logprob.Logprob)}
		for _, a := range lp.Top {
			out[i].TopLogprobs = append(out[i].TopLogprobs, OllamaTokenLogprob{Token: string(m.Piece(a.Token)), Logprob: float64(a.Logprob)})
		}
	}
	return out
}

// ndjsonStream writes newline-delimited JSON, flushing each object. The status
// (200) goes out with the first object, so an error before any can still get its
// own.
type ndjsonStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

func (ns *ndjsonStream) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("httpapi: encoding object: %w", err)
	}
	if !ns.started {
		ns.w.Header().Set("Content-Type", "application/x-ndjson")
		ns.w.WriteHeader(http.StatusOK)
		ns.started = true
	}
	if _, err := ns.w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("httpapi: writing object: %w", err)
	}
	if err := ns.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("httpapi: flushing object: %w", err)
	}
	return nil
}

// ollamaModel describes the served model for /api/tags and /api/ps.
func (s *Server) ollamaModel() OllamaModel {
	info := s.targetInfo()
	mo := s.modelObject()
	om := OllamaModel{
		Name: s.ollamaName(), Model: s.ollamaName(), ModifiedAt: time.Unix(s.created, 0).UTC(),
		Size: info.SizeBytes, Digest: s.cfg.ModelDigest, Details: ollamaDetails(info), SLED: mo.SLED,
	}
	if st, err := os.Stat(info.Path); err == nil {
		om.Size = uint64(st.Size()) // the file's, as Ollama reports it
	}
	return om
}

// targetInfo is the served model's description: Config.Target, else (a
// standalone device, which does not load the target) the first device's model's.
func (s *Server) targetInfo() engine.Info {
	if s.cfg.Target != nil {
		return *s.cfg.Target
	}
	return s.devices[0].Generator.Model().Info()
}

// ollamaDetails reads family and quantization off llama.cpp's one-line
// description ("qwen2 1.5B Q4_K - Medium").
func ollamaDetails(info engine.Info) OllamaModelDetails {
	d := OllamaModelDetails{Format: "gguf", Families: []string{}}
	f := strings.Fields(info.Description)
	if len(f) > 0 {
		d.Family, d.Families = f[0], []string{f[0]}
	}
	if len(f) > 2 {
		d.QuantizationLevel = quantName(strings.Join(f[2:], " "))
	}
	switch p := float64(info.Params); {
	case p >= 1e9:
		d.ParameterSize = fmt.Sprintf("%.1fB", p/1e9)
	case p >= 1e6:
		d.ParameterSize = fmt.Sprintf("%.0fM", p/1e6)
	case p > 0:
		d.ParameterSize = fmt.Sprintf("%.0fK", p/1e3)
	}
	return d
}

func (s *Server) handleOllamaTags(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]OllamaModel{"models": {s.ollamaModel()}})
}

func (s *Server) handleOllamaPS(w http.ResponseWriter, r *http.Request) {
	om := s.ollamaModel()
	never := time.Date(2318, 1, 1, 0, 0, 0, 0, time.UTC) // Ollama's "never unloaded"
	var vram uint64
	om.ExpiresAt, om.SizeVRAM = &never, &vram
	om.ContextLength = s.devices[0].Generator.Model().DefaultSlotContext()
	writeJSON(w, http.StatusOK, map[string][]OllamaModel{"models": {om}})
}

func (s *Server) handleOllamaVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"version": OllamaVersion})
}

func (s *Server) handleOllamaShow(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model   string `json:"model"`
		Name    string `json:"name"` // older clients
		Verbose bool   `json:"verbose"`
	}
	if !s.decodeOllama(w, r, &req, map[string]fieldRule{"model": honoured, "name": honoured, "verbose": honoured}) {
		return
	}
	name := req.Model
	if name == "" {
		name = req.Name
	}
	if _, dev := s.byName[name]; name != s.ModelName() && name != s.ollamaName() && !dev {
		ollamaError(w, &APIError{StatusCode: http.StatusNotFound, Message: fmt.Sprintf("model '%s' not found", name)})
		return
	}
	info := s.targetInfo()
	d := ollamaDetails(info)
	ctx := s.devices[0].Generator.Model().DefaultSlotContext()
	resp := OllamaShowResponse{
		Modelfile:  fmt.Sprintf("# Served by SLED: speculative decoding on %d device(s)\nFROM %s\n", len(s.devices), s.ModelName()),
		Template:   info.ChatTemplate,
		Details:    d,
		ModifiedAt: time.Unix(s.created, 0).UTC(),
		ModelInfo: map[string]any{
			"general.architecture":       d.Family,
			"general.parameter_count":    info.Params,
			"general.file_type":          d.QuantizationLevel,
			d.Family + ".context_length": ctx,
		},
		Capabilities: []string{"completion"},
		SLED:         s.modelObject().SLED,
	}
	writeJSON(w, http.StatusOK, resp)
}

// quantName turns llama.cpp's file type name ("Q4_K - Medium", "all F32",
// "Q8_0") into Ollama's ("Q4_K_M", "F32", "Q8_0").
func quantName(ftype string) string {
	ftype = strings.TrimPrefix(strings.TrimSpace(ftype), "all ")
	base, size, ok := strings.Cut(ftype, " - ")
	if !ok || size == "" {
		return strings.TrimSpace(ftype)
	}
	return strings.TrimSpace(base) + "_" + strings.ToUpper(size[:1])
}
