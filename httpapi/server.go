// Package httpapi serves SLED devices through an OpenAI-compatible HTTP API, and
// is a client of it.
//
// A Server fronts one or more devices, each a textgen.Generator, and owns
// everything textual: chat templates, tokenization, incremental UTF-8-safe
// detokenization and stop strings. Routes:
//
//	POST /v1/completions        text completion (stream or not)
//	POST /v1/chat/completions   chat completion (stream or not)
//	GET  /v1/models             the served model id and the devices serving it
//	GET  /v1/models/{id}        the same, for one id (the model's or a device's)
//	GET  /healthz, /health, /readyz
//	                            readiness: 200 when every device can serve, else 503
//	POST /api/generate, /api/chat; GET /api/tags, /api/ps, /api/version; POST /api/show
//	                            Ollama's API (see ollama.go)
//
// Requests are spread over the devices round-robin, or pinned to one with the
// X-SLED-Device header (or by naming a device as the model). Responses have
// OpenAI's shapes plus a "sled" object (Stats). Errors have OpenAI's error body.
//
// Unlike OpenAI, an absent temperature means 0, greedy decoding: greedy
// speculative decoding is lossless, so by default a device's text is exactly what
// the target model alone would write.
package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/telemetry"
	"github.com/sled-project/sled/textgen"
)

// DeviceHeader pins a request to the named device.
const DeviceHeader = "X-SLED-Device"

// Defaults of Config.
const (
	DefaultMaxTokensLimit   = 4096
	DefaultDefaultMaxTokens = 256
	DefaultMaxBodyBytes     = 1 << 20
	// MaxStops is the most stop strings one request may give (OpenAI's limit).
	MaxStops = 4
)

// Device is a named generator.
type Device struct {
	Name      string
	Generator textgen.Generator
	// Model is the id of the device's own model (its draft), as /v1/models
	// lists it. Default: the model's ID (engine.ModelID).
	Model string
}

// TargetNamer may be implemented by a device's Generator whose output is decided
// by another model (a speculative device: the target that verifies its drafts).
// TargetModel returns that model's id, or "" while it is not known (a standalone
// device learns it from the verifiers' heartbeats).
type TargetNamer interface {
	TargetModel() string
}

// HealthChecker may be implemented by a device's Generator to report its health in
// GET /healthz. A nil error means healthy. Generators that do not implement it are
// reported healthy.
type HealthChecker interface {
	Health(ctx context.Context) error
}

// Config configures a Server. Zero fields take the documented defaults.
type Config struct {
	// Devices serve the requests; at least one is required, with unique non-empty
	// names. Their generators should share one vocabulary: the prompt is tokenized
	// with the chosen device's model.
	Devices []Device
	// ModelName is the model id the API serves. Default: the target model's id as
	// the first device that knows it reports it (TargetNamer), else the first
	// device's model's ID (engine.ModelID).
	ModelName string
	// Target describes the target model, for Ollama's /api/tags, /api/show and
	// /api/ps (size, family, quantization). Optional: a standalone device, which
	// does not load the target, describes its own model instead.
	Target *engine.Info
	// ModelDigest is the target's Ollama digest ("sha256:..."), when it was
	// loaded from an Ollama model store. Optional.
	ModelDigest string
	// MaxPromptTokens bounds a prompt's tokens. Default: no bound beyond the model's
	// context (its training context length minus max_tokens).
	MaxPromptTokens int
	// MaxTokensLimit bounds max_tokens. Default DefaultMaxTokensLimit.
	MaxTokensLimit int
	// DefaultMaxTokens is used when a request gives no max_tokens, cut to what the
	// context leaves after the prompt. Default DefaultDefaultMaxTokens.
	DefaultMaxTokens int
	// MaxBodyBytes bounds a request body; larger bodies get 413. Default
	// DefaultMaxBodyBytes (1 MiB).
	MaxBodyBytes int64
	// Logger receives one line per request and every server error. Default
	// slog.Default().
	Logger *slog.Logger
	// APIKeys, when not empty, are the bearer keys a request must present
	// (Authorization: Bearer KEY, as OpenAI clients send; Ollama clients take
	// headers too): others get a 401. Readiness (/health, /healthz, /readyz)
	// stays open for load balancers. Default: no keys, no authentication.
	APIKeys []string
	// Telemetry receives the GenAI metrics of each request (time to first
	// token, time per output token, token usage). Default: none.
	Telemetry *telemetry.Telemetry
}

// Server is the HTTP API. It is an http.Handler, safe for concurrent use.
type Server struct {
	cfg     Config
	devices []Device
	byName  map[string]int
	next    atomic.Uint64 // round-robin cursor
	created int64
	log     *slog.Logger
	m       *telemetry.Metrics
}

// New returns a Server for cfg. It panics if cfg has no devices, a device without a
// name or generator, or two devices with one name: those are programming errors.
func New(cfg Config) *Server {
	if len(cfg.Devices) == 0 {
		panic("httpapi: Config.Devices is empty")
	}
	s := &Server{devices: cfg.Devices, byName: make(map[string]int), created: time.Now().Unix()}
	for i, d := range cfg.Devices {
		if d.Name == "" || d.Generator == nil {
			panic(fmt.Sprintf("httpapi: device %d has no name or no generator", i))
		}
		if _, dup := s.byName[d.Name]; dup {
			panic(fmt.Sprintf("httpapi: two devices named %q", d.Name))
		}
		s.byName[d.Name] = i
	}
	if cfg.MaxTokensLimit <= 0 {
		cfg.MaxTokensLimit = DefaultMaxTokensLimit
	}
	if cfg.DefaultMaxTokens <= 0 {
		cfg.DefaultMaxTokens = DefaultDefaultMaxTokens
	}
	cfg.DefaultMaxTokens = min(cfg.DefaultMaxTokens, cfg.MaxTokensLimit)
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s.cfg, s.log, s.m = cfg, cfg.Logger, cfg.Telemetry.Or().Metrics
	return s
}

// ModelName is the model id the server serves (see Config.ModelName).
func (s *Server) ModelName() string {
	if s.cfg.ModelName != "" {
		return s.cfg.ModelName
	}
	for _, d := range s.devices {
		if tn, ok := d.Generator.(TargetNamer); ok {
			if id := tn.TargetModel(); id != "" {
				return id
			}
		}
	}
	return s.devices[0].Generator.Model().ID()
}

type route struct {
	method  string
	handler func(*Server, http.ResponseWriter, *http.Request)
}

var routes = map[string]route{
	"/v1/completions":      {http.MethodPost, (*Server).handleCompletions},
	"/v1/chat/completions": {http.MethodPost, (*Server).handleChat},
	"/v1/models":           {http.MethodGet, (*Server).handleModels},
	"/healthz":             {http.MethodGet, (*Server).handleHealth},
	"/health":              {http.MethodGet, (*Server).handleHealth},
	"/readyz":              {http.MethodGet, (*Server).handleHealth},
	// Ollama's API (ollama.go).
	"/api/generate": {http.MethodPost, (*Server).handleOllamaGenerate},
	"/api/chat":     {http.MethodPost, (*Server).handleOllamaChat},
	"/api/tags":     {http.MethodGet, (*Server).handleOllamaTags},
	"/api/show":     {http.MethodPost, (*Server).handleOllamaShow},
	"/api/ps":       {http.MethodGet, (*Server).handleOllamaPS},
	"/api/version":  {http.MethodGet, (*Server).handleOllamaVersion},
}

// openRoutes need no API key: readiness probes.
var openRoutes = map[string]bool{"/health": true, "/healthz": true, "/readyz": true}

// authorized reports whether r carries one of the API keys, compared in constant
// time.
func (s *Server) authorized(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	key, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return false
	}
	good := 0
	for _, k := range s.cfg.APIKeys {
		good |= subtle.ConstantTimeCompare([]byte(key), []byte(k))
	}
	return good == 1
}

// modelRoute serves GET /v1/models/{id}.
var modelRoute = route{http.MethodGet, (*Server).handleModel}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("httpapi: panic serving request", "path", r.URL.Path, "panic", v)
			// Best effort: if the response has started this write is dropped.
			writeError(w, &APIError{StatusCode: http.StatusInternalServerError, Type: TypeServer, Message: "internal error"})
		}
	}()
	path := strings.TrimSuffix(r.URL.Path, "/")
	if len(s.cfg.APIKeys) > 0 && !openRoutes[path] && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sled"`)
		writeError(w, &APIError{StatusCode: http.StatusUnauthorized, Type: TypeInvalidRequest, Code: CodeInvalidAPIKey,
			Message: "missing or wrong API key: send Authorization: Bearer KEY"})
		return
	}
	rt, ok := routes[path]
	if !ok && strings.HasPrefix(path, "/v1/models/") {
		rt, ok = modelRoute, true
	}
	if !ok {
		writeError(w, &APIError{StatusCode: http.StatusNotFound, Type: TypeInvalidRequest, Code: CodeNotFound,
			Message: fmt.Sprintf("unknown route %s %s", r.Method, r.URL.Path)})
		return
	}
	if r.Method != rt.method && !(rt.method == http.MethodGet && r.Method == http.MethodHead) {
		w.Header().Set("Allow", rt.method)
		writeError(w, &APIError{StatusCode: http.StatusMethodNotAllowed, Type: TypeInvalidRequest, Code: CodeMethodNotAllowed,
			Message: fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, r.URL.Path, rt.method)})
		return
	}
	rt.handler(s, w, r)
}

func (s *Server) modelObject() ModelObject {
	o := ModelObject{ID: s.ModelName(), Object: "model", Created: s.created, OwnedBy: "sled", SLED: &ModelDevices{}}
	for _, d := range s.devices {
		_, spec := d.Generator.(TargetNamer)
		model := d.Model
		if model == "" {
			model = d.Generator.Model().ID()
		}
		o.SLED.Devices = append(o.SLED.Devices, ModelDevice{Name: d.Name, Model: model, Speculative: spec})
	}
	return o
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, ModelList{Object: "list", Data: []ModelObject{s.modelObject()}})
}

// handleModel serves GET /v1/models/{id}: the served model, by its id or by the
// name of one of its devices (which the model field also takes).
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(strings.TrimSuffix(r.URL.Path, "/"), "/v1/models/")
	if _, dev := s.byName[id]; id != s.ModelName() && id != s.ModelName()+":latest" && !dev {
		writeError(w, &APIError{StatusCode: http.StatusNotFound, Type: TypeInvalidRequest, Param: "model", Code: CodeModelNotFound,
			Message: fmt.Sprintf("the model %q does not exist; this server serves %q", id, s.ModelName())})
		return
	}
	writeJSON(w, http.StatusOK, s.modelObject())
}

// handleHealth serves /healthz, /health and /readyz: 200 when every device can
// serve (a speculative device needs a live verifier), else 503, so that a load
// balancer sends no request that would wait for a verifier that is not there.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := Health{OK: true, Status: "ok", Model: s.ModelName()}
	for _, d := range s.devices {
		dh := DeviceHealth{Name: d.Name, OK: true}
		if hc, ok := d.Generator.(HealthChecker); ok {
			if err := hc.Health(r.Context()); err != nil {
				dh.OK, dh.Error, h.OK = false, err.Error(), false
			}
		}
		h.Devices = append(h.Devices, dh)
	}
	status := http.StatusOK
	if !h.OK {
		status, h.Status = http.StatusServiceUnavailable, "unavailable"
	}
	writeJSON(w, status, h)
}

// readBody reads r's body, bounded by Config.MaxBodyBytes, and checks that it is
// UTF-8 (JSON's encoding: Go's decoder would turn bad bytes into U+FFFD and
// generate from a prompt the client never sent).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *APIError) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if mb := new(http.MaxBytesError); errors.As(err, &mb) {
		return nil, &APIError{StatusCode: http.StatusRequestEntityTooLarge, Type: TypeInvalidRequest, Code: CodeRequestTooLarge,
			Message: fmt.Sprintf("the request body is larger than %d bytes", mb.Limit)}
	}
	if err != nil {
		return nil, invalid("", "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, invalid("", "the request body is empty; send a JSON object")
	}
	if !utf8.Valid(body) {
		at := 0
		for at < len(body) {
			r, n := utf8.DecodeRune(body[at:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			at += n
		}
		return nil, &APIError{StatusCode: http.StatusBadRequest, Type: TypeInvalidRequest, Code: CodeInvalidUTF8,
			Message: fmt.Sprintf("the request body is not valid UTF-8 (bad byte 0x%02x at offset %d)", body[at], at)}
	}
	if at := loneSurrogate(body); at >= 0 {
		return nil, &APIError{StatusCode: http.StatusBadRequest, Type: TypeInvalidRequest, Code: CodeInvalidUTF8,
			Message: fmt.Sprintf("the request body holds an unpaired UTF-16 surrogate escape at offset %d (%s): no character", at, body[at:at+6])}
	}
	return body, nil
}

// decodeBody reads r's JSON body into v and refuses any field that rules do not
// serve (checkFields); nil rules check no fields. The content type is not
// checked: clients that send JSON as text/plain are served too.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any, rules map[string]fieldRule) *APIError {
	body, e := s.readBody(w, r)
	if e != nil {
		return e
	}
	return decodeJSON(body, v, rules)
}

// decodeJSON unmarshals body into v and checks its fields against rules (nil:
// none), as every route's body is read.
func decodeJSON(body []byte, v any, rules map[string]fieldRule) *APIError {
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return invalid(te.Field, "%s: expected %s, got JSON %s", te.Field, te.Type, te.Value)
		}
		return invalid("", "invalid JSON body: %v", err)
	}
	if rules != nil {
		return checkFields(body, rules)
	}
	return nil
}

// pickDevice chooses the device for a request: the one the header names, else the
// one the model field names, else the next one round-robin.
func (s *Server) pickDevice(r *http.Request, model string) (int, *APIError) {
	pin := r.Header.Get(DeviceHeader)
	if name := s.ModelName(); model != "" && model != name && model != name+":latest" {
		i, ok := s.byName[model]
		if !ok {
			return 0, &APIError{StatusCode: http.StatusNotFound, Type: TypeInvalidRequest, Param: "model", Code: CodeModelNotFound,
				Message: fmt.Sprintf("the model %q does not exist; this server serves %q", model, s.ModelName())}
		}
		if pin != "" && pin != model {
			return 0, invalid("model", "the model names device %q but the %s header names %q", model, DeviceHeader, pin)
		}
		return i, nil
	}
	if pin != "" {
		i, ok := s.byName[pin]
		if !ok {
			return 0, &APIError{StatusCode: http.StatusNotFound, Type: TypeInvalidRequest, Code: CodeDeviceNotFound,
				Message: fmt.Sprintf("no device named %q (%s header)", pin, DeviceHeader)}
		}
		return i, nil
	}
	return int((s.next.Add(1) - 1) % uint64(len(s.devices))), nil
}

func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
