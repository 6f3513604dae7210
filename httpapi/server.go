// Package httpapi serves SLED devices through an OpenAI-compatible HTTP API, and
// is a client of it.
//
// A Server fronts one or more devices, each a textgen.Generator, and owns
// everything textual: chat templates, tokenization, incremental UTF-8-safe
// detokenization and stop strings. Routes:
//
//	POST /v1/completions        text completion (stream or not)
//	POST /v1/chat/completions   chat completion (stream or not)
//	GET  /v1/models             the served model id
//	GET  /healthz               device names and health
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
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

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
	// ModelName is the model id the API serves. Default: the first device's model
	// file name without its extension.
	ModelName string
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
}

// Server is the HTTP API. It is an http.Handler, safe for concurrent use.
type Server struct {
	cfg     Config
	devices []Device
	byName  map[string]int
	next    atomic.Uint64 // round-robin cursor
	created int64
	log     *slog.Logger
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
	if cfg.ModelName == "" {
		base := filepath.Base(cfg.Devices[0].Generator.Model().Info().Path)
		cfg.ModelName = strings.TrimSuffix(base, filepath.Ext(base))
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
	s.cfg, s.log = cfg, cfg.Logger
	return s
}

// ModelName is the model id the server serves.
func (s *Server) ModelName() string { return s.cfg.ModelName }

type route struct {
	method  string
	handler func(*Server, http.ResponseWriter, *http.Request)
}

var routes = map[string]route{
	"/v1/completions":      {http.MethodPost, (*Server).handleCompletions},
	"/v1/chat/completions": {http.MethodPost, (*Server).handleChat},
	"/v1/models":           {http.MethodGet, (*Server).handleModels},
	"/healthz":             {http.MethodGet, (*Server).handleHealth},
}

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
	rt, ok := routes[strings.TrimSuffix(r.URL.Path, "/")]
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

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	list := ModelList{Object: "list", Data: []ModelObject{{ID: s.cfg.ModelName, Object: "model", Created: s.created, OwnedBy: "sled"}}}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := Health{OK: true, Model: s.cfg.ModelName}
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
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, h)
}

// decodeBody reads r's JSON body into v. The content type is not checked: clients
// that send JSON as text/plain are served too.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) *APIError {
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	dec := json.NewDecoder(body)
	err := dec.Decode(v)
	if err == nil {
		// Nothing but white space may follow the object.
		if _, err2 := dec.Token(); err2 != io.EOF {
			err = errors.New("unexpected data after the JSON object")
			if mb := new(http.MaxBytesError); errors.As(err2, &mb) {
				err = err2
			}
		}
	}
	if err == nil {
		return nil
	}
	if mb := new(http.MaxBytesError); errors.As(err, &mb) {
		return &APIError{StatusCode: http.StatusRequestEntityTooLarge, Type: TypeInvalidRequest, Code: CodeRequestTooLarge,
			Message: fmt.Sprintf("the request body is larger than %d bytes", mb.Limit)}
	}
	if errors.Is(err, io.EOF) {
		return invalid("", "the request body is empty; send a JSON object")
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return invalid(te.Field, "%s: expected %s, got JSON %s", te.Field, te.Type, te.Value)
	}
	return invalid("", "invalid JSON body: %v", err)
}

// pickDevice chooses the device for a request: the one the header names, else the
// one the model field names, else the next one round-robin.
func (s *Server) pickDevice(r *http.Request, model string) (int, *APIError) {
	pin := r.Header.Get(DeviceHeader)
	if model != "" && model != s.cfg.ModelName {
		i, ok := s.byName[model]
		if !ok {
			return 0, &APIError{StatusCode: http.StatusNotFound, Type: TypeInvalidRequest, Param: "model", Code: CodeModelNotFound,
				Message: fmt.Sprintf("the model %q does not exist; this server serves %q", model, s.cfg.ModelName)}
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
