// Package services runs SLED's roles as processes: it loads models, connects to NATS
// (or embeds a server), provisions streams, wires the role's packages together, and
// shuts them down in order. Start composes every role in one process (`sled up`).
package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/centralized"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/natsauth"
	"github.com/sled-project/sled/telemetry"
	"github.com/sled-project/sled/textgen"
	"github.com/sled-project/sled/verifier"
)

// Modes of Start.
const (
	ModeSLED        = "sled"        // devices draft, the server verifies (default)
	ModeCentralized = "centralized" // the server generates every token (baseline)
	ModeEdge        = "edge"        // devices generate alone with their draft models (baseline)
)

// UpConfig configures Start. Zero fields take the documented defaults.
type UpConfig struct {
	// Mode is ModeSLED (default), ModeCentralized or ModeEdge.
	Mode string
	// Target is the target model file. Required for sled and centralized modes.
	Target string
	// ModelName is the id the API serves the target under. Default
	// engine.ModelID(Target); a model from an Ollama store is served under its
	// Ollama name (ModelRef.ID).
	ModelName string
	// ModelDigest is the target's digest when it came from an Ollama store
	// (Ollama's /api/tags reports it). Optional.
	ModelDigest string
	// Drafts are the draft model files, one per device, reused round-robin when
	// Devices is larger. Required for sled and edge modes.
	Drafts []string
	// APIKeys, when set, are the bearer keys the HTTP API wants
	// (httpapi.Config.APIKeys). Default: none, no authentication.
	APIKeys []string
	// VerifierTimeout: a strict device with no verifier heartbeat for this long
	// refuses new requests and ends those in flight with a 503. Default
	// drafter.DefaultVerifierTimeout.
	VerifierTimeout time.Duration
	// DraftNames are the ids the drafts are known by (ModelRef.ID: an Ollama
	// name for a model from an Ollama store), parallel to Drafts; they name the
	// devices and their metrics' draft_model. Default: the files' names.
	DraftNames []string
	// Devices is the number of simulated devices. Default len(Drafts), at least 1.
	Devices int
	// HTTPAddr is the API listen address; "" serves no HTTP (tests may use
	// System.Generators directly). Use "127.0.0.1:0" for a free port.
	HTTPAddr string
	// NATSURL connects to an external NATS server instead of starting one.
	NATSURL string
	// NATS configures the embedded server (default: a free port on 127.0.0.1, a
	// fresh store directory under the temporary directory).
	NATS infra.EmbeddedConfig
	// AuthDir, when set, turns NATS authentication on (SLED mode): the NATS
	// authority in AuthDir (natsauth.Init: made on first use, reused after)
	// signs a credential for every role and device, written there as
	// <id>.creds, and each device connects with its own. Default: no
	// authentication, fit only for a loopback listener.
	AuthDir string
	// Pool is the verification pool. Default events.DefaultPool.
	Pool string
	// Batch is the batch policy.
	Batch batcher.Policy
	// Verifier sizes the verifier.
	Verifier verifier.Config
	// WorkerName names the verifier worker. Default "worker-1".
	WorkerName string
	// Draft and Retry are every device's drafting and retry policies.
	Draft drafter.DraftPolicy
	Retry drafter.RetryPolicy
	// NoAsync turns off asynchronous drafting on every device.
	NoAsync bool
	// Budget is the verifier's goodput policy (draft budgets; Budget.Static:
	// the paper's fixed length).
	Budget goodput.Policy
	// TPOT is every device's default latency objective per output token (0:
	// none; drafter.Config.TPOT).
	TPOT time.Duration
	// ServerRounds is every device's drafter.Config.ServerRounds (0: its
	// default; negative: every round is the device's own).
	ServerRounds int
	// CrossVocab lets a draft model whose tokenizer is not the target's draft
	// across vocabularies (drafter.Config.TargetVocab: the device maps its
	// draft text onto the target's tokens). Without it such a draft is
	// refused at start, as a likely mistake.
	CrossVocab bool
	// UnifiedKV gives ModeCentralized's server one KV cache for every request
	// instead of a stream per slot (centralized.Config.UnifiedKV); other modes
	// ignore it (`sled up` refuses --unified-kv without --mode centralized).
	// Default off: the streams' attention reads only each request's own cells
	// (on the smollm-135m shape at 16 clients unified gave 573 tokens/s against
	// 746), and the server keeps its busy streams consecutive, so a pass is one
	// micro-batch as in the unified cache (docs/benchmarks.md, "Busy slots kept
	// consecutive").
	UnifiedKV bool
	// DeviceThreads is each simulated device's llama.cpp thread count. Default 1:
	// simulated devices share this machine's cores with the server, and the
	// verifier's threads default to at most the cores the devices leave (at least 1).
	DeviceThreads int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Telemetry receives every role's spans and metrics (see
	// telemetry.Setup; the caller shuts it down after Close). Default:
	// none.
	Telemetry *telemetry.Telemetry
}

// System is a running `sled up`. Its methods are safe for concurrent use; the
// roles a test may stop and start again (StopBatcher, StartVerifier, ...) are
// read under their locks.
type System struct {
	cfg        UpConfig
	server     *Server // SLED mode only
	target     *engine.Model
	models     map[string]*engine.Model // every loaded model by path
	central    *centralized.Server
	devices    []*drafter.Device
	edges      []*drafter.Edge
	generators []httpapi.Device // what the API serves, in device order
	conns      []*nats.Conn     // the devices' own connections (auth on)
	api        *httpapi.Server
	httpAddr   string // the API's address when serving

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	httpSrv   *http.Server
	closeOnce sync.Once
}

// Server is the SLED-mode server side (NATS, batcher, verifier worker), or nil.
func (s *System) Server() *Server { return s.server }

// URL is the NATS server's client URL ("" outside SLED mode).
func (s *System) URL() string {
	if s.server == nil {
		return ""
	}
	return s.server.URL()
}

// Conn is a NATS connection of the system (nil outside SLED mode).
func (s *System) Conn() *nats.Conn {
	if s.server == nil {
		return nil
	}
	return s.server.Conn()
}

// JS is the JetStream context of Conn (nil outside SLED mode).
func (s *System) JS() jetstream.JetStream {
	if s.server == nil {
		return nil
	}
	return s.server.JS()
}

// Target is the target model (nil in edge mode).
func (s *System) Target() *engine.Model { return s.target }

// Model is the loaded model of a file given in UpConfig, or nil.
func (s *System) Model(path string) *engine.Model { return s.models[path] }

// Devices are the SLED-mode devices, in device order.
func (s *System) Devices() []*drafter.Device { return s.devices }

// Generators are what the API serves, in device order.
func (s *System) Generators() []httpapi.Device { return s.generators }

// HTTPAddr is the API's listen address, "" when it does not serve HTTP.
func (s *System) HTTPAddr() string { return s.httpAddr }

// Batcher is the running batcher, or nil (after StopBatcher, or outside SLED
// mode).
func (s *System) Batcher() *batcher.Batcher {
	if s.server == nil {
		return nil
	}
	return s.server.Batcher()
}

// withDefaults fills zero fields with the documented defaults; it is
// idempotent.
func (cfg UpConfig) withDefaults() UpConfig {
	if cfg.Mode == "" {
		cfg.Mode = ModeSLED
	}
	if cfg.Pool == "" {
		cfg.Pool = events.DefaultPool
	}
	if cfg.WorkerName == "" {
		cfg.WorkerName = "worker-1"
	}
	if cfg.DeviceThreads <= 0 {
		cfg.DeviceThreads = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Devices <= 0 {
		cfg.Devices = max(len(cfg.Drafts), 1)
	}
	return cfg
}

// Start runs the whole system in this process and returns once it serves. Close
// stops it.
func Start(ctx context.Context, cfg UpConfig) (s *System, err error) {
	cfg = cfg.withDefaults()
	switch cfg.Mode {
	case ModeSLED, ModeEdge:
		if len(cfg.Drafts) == 0 {
			return nil, fmt.Errorf("services: mode %s needs at least one draft model", cfg.Mode)
		}
	case ModeCentralized:
	default:
		return nil, fmt.Errorf("services: unknown mode %q (want sled, centralized or edge)", cfg.Mode)
	}
	if cfg.Mode != ModeEdge && cfg.Target == "" {
		return nil, fmt.Errorf("services: mode %s needs a target model", cfg.Mode)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s = &System{cfg: cfg, cancel: cancel, models: map[string]*engine.Model{}}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	if err := s.loadModels(); err != nil {
		return s, err
	}
	if s.cfg.Verifier.Threads <= 0 && s.target != nil {
		// The target's own default, but in SLED mode only the cores the simulated
		// devices leave: llama.cpp's threads synchronise after every operation, and
		// oversubscribed cores make every pass crawl (see engine.Model.DefaultThreads).
		s.cfg.Verifier.Threads = s.target.DefaultThreads()
		if cfg.Mode == ModeSLED {
			s.cfg.Verifier.Threads = max(1, min(s.cfg.Verifier.Threads, engine.DefaultThreads()-cfg.Devices*cfg.DeviceThreads))
		}
	}
	switch cfg.Mode {
	case ModeSLED:
		err = s.startSLED(ctx, runCtx)
	case ModeCentralized:
		err = s.startCentralized(runCtx)
	case ModeEdge:
		err = s.startEdge()
	}
	if err != nil {
		return s, err
	}
	if cfg.HTTPAddr != "" {
		if err := s.serveHTTP(runCtx); err != nil {
			return s, err
		}
	}
	return s, nil
}

func (s *System) model(path string) (*engine.Model, error) {
	if m := s.models[path]; m != nil {
		return m, nil
	}
	m, err := engine.LoadModel(path, engine.ModelOptions{})
	if err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	s.models[path] = m
	return m, nil
}

func (s *System) loadModels() error {
	if s.cfg.Target != "" {
		t, err := s.model(s.cfg.Target)
		if err != nil {
			return err
		}
		s.target = t
	}
	for _, p := range s.cfg.Drafts {
		m, err := s.model(p)
		if err != nil {
			return err
		}
		if s.target != nil && s.cfg.Mode == ModeSLED && !s.cfg.CrossVocab {
			if err := s.target.CheckCompatible(m); err != nil {
				return fmt.Errorf("services: %w (a draft with another tokenizer can draft across vocabularies: sled up --cross-vocab; a device process: --target-vocab FILE)", err)
			}
		}
	}
	return nil
}

// spawn runs f in a goroutine that Close waits for.
func (s *System) spawn(f func()) {
	s.wg.Add(1)
	go func() { defer s.wg.Done(); f() }()
}

func deviceName(i int, model string) string {
	var b strings.Builder
	for _, r := range model {
		switch {
		case r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ':' || r == '/':
			b.WriteRune('-') // qwen2.5-coder:0.5b -> qwen25-coder-05b
		}
	}
	name := fmt.Sprintf("device-%d-%s", i+1, b.String())
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

func (s *System) startSLED(ctx, runCtx context.Context) error {
	var auth *natsauth.Authority
	if s.cfg.AuthDir != "" {
		a, err := natsauth.Init(s.cfg.AuthDir)
		if err != nil {
			return fmt.Errorf("services: %w", err)
		}
		auth = a
	}
	srv, err := StartServer(ctx, ServerConfig{
		Target: s.target, Pool: s.cfg.Pool, WorkerName: s.cfg.WorkerName, ModelName: s.modelName(), Batch: s.cfg.Batch, Verifier: s.cfg.Verifier, Budget: s.cfg.Budget,
		NATSURL: s.cfg.NATSURL, NATS: s.cfg.NATS, Auth: auth, Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry,
	})
	if err != nil {
		return err
	}
	s.server = srv
	for i := range s.cfg.Devices {
		path, id := s.draft(i)
		name := deviceName(i, id)
		nc, js := srv.Conn(), srv.JS()
		if auth != nil {
			// Each device under its own credential, as on a real fleet.
			if nc, js, err = srv.Dial(ctx, natsauth.Identity{ID: name, Role: natsauth.RoleDevice, Pool: s.cfg.Pool}, "sled-device-"+name); err != nil {
				return err
			}
			s.conns = append(s.conns, nc)
		}
		d, err := drafter.New(ctx, s.models[path], nc, js, drafter.Config{
			DeviceID: name, ModelName: id, Pool: s.cfg.Pool, Draft: s.cfg.Draft, Retry: s.cfg.Retry,
			VerifierTimeout: s.cfg.VerifierTimeout,
			NoAsync:         s.cfg.NoAsync, Threads: s.cfg.DeviceThreads, TPOT: s.cfg.TPOT, ServerRounds: s.cfg.ServerRounds,
			MaxContext: min(s.models[path].DefaultSlotContext(), s.target.DefaultSlotContext()),
			Logger:     s.cfg.Logger, Telemetry: s.cfg.Telemetry,
			TargetVocab: s.targetVocab(),
		})
		if err != nil {
			return err
		}
		s.devices = append(s.devices, d)
		s.generators = append(s.generators, httpapi.Device{Name: d.ID(), Generator: d, Model: id})
	}
	// Start returns a system that is ready: every device has heard the
	// verifier (its first heartbeat goes out as it starts).
	for _, d := range s.devices {
		if err := d.WaitVerifier(ctx); err != nil {
			s.cfg.Logger.Warn("device has no verifier yet", "device", d.ID(), "err", err)
		}
	}
	return nil
}

// targetVocab is what devices map cross-vocabulary drafts onto: the target,
// when CrossVocab allows them.
func (s *System) targetVocab() *engine.Model {
	if s.cfg.CrossVocab {
		return s.target
	}
	return nil
}

func (s *System) startCentralized(runCtx context.Context) error {
	c, err := centralized.New(s.target, centralized.Config{Slots: s.cfg.Verifier.Slots, SlotContext: s.cfg.Verifier.SlotContext, Threads: s.cfg.Verifier.Threads, UnifiedKV: s.cfg.UnifiedKV})
	if err != nil {
		return err
	}
	s.central = c
	s.spawn(func() { _ = c.Run(runCtx) })
	// Every "device" forwards its requests to the one server.
	for i := range s.cfg.Devices {
		s.generators = append(s.generators, httpapi.Device{Name: fmt.Sprintf("device-%d-central", i+1), Generator: c})
	}
	return nil
}

func (s *System) startEdge() error {
	for i := range s.cfg.Devices {
		path, id := s.draft(i)
		e, err := drafter.NewEdge(s.models[path], s.cfg.DeviceThreads, 0)
		if err != nil {
			return err
		}
		s.edges = append(s.edges, e)
		s.generators = append(s.generators, httpapi.Device{Name: deviceName(i, id), Generator: e, Model: id})
	}
	return nil
}

// draft is device i's draft file and the id it is known by.
func (s *System) draft(i int) (path, id string) {
	j := i % len(s.cfg.Drafts)
	path = s.cfg.Drafts[j]
	if j < len(s.cfg.DraftNames) && s.cfg.DraftNames[j] != "" {
		return path, s.cfg.DraftNames[j]
	}
	return path, engine.ModelID(path)
}

// modelName is the id the target is served under.
func (s *System) modelName() string {
	if s.cfg.ModelName != "" {
		return s.cfg.ModelName
	}
	return engine.ModelID(s.cfg.Target)
}

func (s *System) serveHTTP(runCtx context.Context) error {
	cfg := httpapi.Config{Devices: s.generators, Logger: s.cfg.Logger, ModelDigest: s.cfg.ModelDigest, Telemetry: s.cfg.Telemetry, APIKeys: s.cfg.APIKeys}
	if s.target != nil {
		info := s.target.Info()
		cfg.ModelName, cfg.Target = s.modelName(), &info
	}
	s.api = httpapi.New(cfg)
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("services: listen %s: %w", s.cfg.HTTPAddr, err)
	}
	s.httpAddr = ln.Addr().String()
	s.httpSrv = &http.Server{Handler: s.api, ReadHeaderTimeout: 10 * time.Second}
	s.spawn(func() {
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("http", "err", err)
		}
	})
	return nil
}

// Generator returns device i's generator.
func (s *System) Generator(i int) textgen.Generator { return s.generators[i].Generator }

// Close stops everything: HTTP, devices, batcher, verifier, NATS, models.
func (s *System) Close() error {
	s.closeOnce.Do(func() {
		if s.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.httpSrv.Shutdown(ctx)
			cancel()
		}
		for _, d := range s.devices {
			d.Close()
		}
		for _, e := range s.edges {
			e.Close()
		}
		for _, c := range s.conns {
			c.Close()
		}
		if s.server != nil {
			s.server.Close()
		}
		s.cancel()
		s.wg.Wait()
		if s.central != nil {
			s.central.Close()
		}
		for _, m := range s.models {
			m.Close()
		}
	})
	return nil
}
