// Package services runs SLED's roles as processes: it loads models, connects to NATS
// (or embeds a server), provisions streams, wires the role's packages together, and
// shuts them down in order. Start composes every role in one process (`sled up`).
package services

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/infra"
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
	// Drafts are the draft model files, one per device, reused round-robin when
	// Devices is larger. Required for sled and edge modes.
	Drafts []string
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
	// DeviceThreads is each simulated device's llama.cpp thread count. Default 1:
	// simulated devices share this machine's cores with the server, and the
	// verifier's threads default to at most the cores the devices leave (at least 1).
	DeviceThreads int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Telemetry receives every role's spans and metrics (see
	// infra.SetupTelemetry; the caller shuts it down after Close). Default:
	// none.
	Telemetry *infra.Telemetry
}

// System is a running `sled up`.
type System struct {
	cfg    UpConfig
	NATS   *infra.Embedded // nil with an external server
	URL    string          // NATS URL
	Conn   *nats.Conn
	JS     jetstream.JetStream
	Target *engine.Model
	Models map[string]*engine.Model // every loaded model by path

	Batcher     *batcher.Batcher
	Central     *centralized.Server
	Devices     []*drafter.Device
	Edges       []*drafter.Edge
	Generators  []httpapi.Device // what the API serves, in device order
	API         *httpapi.Server
	HTTPAddr    string               // the API's address when serving
	natsCfg     infra.EmbeddedConfig // the embedded server's settings, port resolved
	batcherMu   sync.Mutex
	stopBatcher context.CancelFunc
	batcherDone chan struct{}
	verifierMu  sync.Mutex
	worker      *verifier.Worker
	stopWorker  context.CancelFunc
	workerDone  chan struct{}
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	httpSrv     *http.Server
	expiry      *infra.ExpiryWatcher
	closeOnce   sync.Once
	ownStoreDir string
}

// Start runs the whole system in this process and returns once it serves. Close
// stops it.
func Start(ctx context.Context, cfg UpConfig) (s *System, err error) {
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
	if cfg.Devices <= 0 {
		cfg.Devices = max(len(cfg.Drafts), 1)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s = &System{cfg: cfg, cancel: cancel, Models: map[string]*engine.Model{}}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	if err := s.loadModels(); err != nil {
		return s, err
	}
	if s.cfg.Verifier.Threads <= 0 && s.Target != nil {
		// The target's own default, but in SLED mode only the cores the simulated
		// devices leave: llama.cpp's threads synchronise after every operation, and
		// oversubscribed cores make every pass crawl (see engine.Model.DefaultThreads).
		s.cfg.Verifier.Threads = s.Target.DefaultThreads()
		if cfg.Mode == ModeSLED {
			s.cfg.Verifier.Threads = max(1, min(s.cfg.Verifier.Threads, engine.DefaultThreads()-cfg.Devices*cfg.DeviceThreads))
		}
	}
	if cfg.Mode == ModeSLED {
		if err := s.startNATS(ctx); err != nil {
			return s, err
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
	if m := s.Models[path]; m != nil {
		return m, nil
	}
	m, err := engine.LoadModel(path, engine.ModelOptions{})
	if err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	s.Models[path] = m
	return m, nil
}

func (s *System) loadModels() error {
	if s.cfg.Target != "" {
		t, err := s.model(s.cfg.Target)
		if err != nil {
			return err
		}
		s.Target = t
	}
	for _, p := range s.cfg.Drafts {
		m, err := s.model(p)
		if err != nil {
			return err
		}
		if s.Target != nil && s.cfg.Mode == ModeSLED {
			if err := s.Target.CheckCompatible(m); err != nil {
				return fmt.Errorf("services: %w", err)
			}
		}
	}
	return nil
}

func (s *System) startNATS(ctx context.Context) error {
	s.URL = s.cfg.NATSURL
	if s.URL == "" {
		nc := s.cfg.NATS
		if nc.Port == 0 {
			nc.Port = -1
		}
		if nc.StoreDir == "" {
			dir, err := os.MkdirTemp("", "sled-nats-")
			if err != nil {
				return err
			}
			nc.StoreDir, s.ownStoreDir = dir, dir
		}
		if nc.Logger == nil {
			nc.Logger = s.cfg.Logger
		}
		emb, err := infra.StartEmbedded(ctx, nc)
		if err != nil {
			return fmt.Errorf("services: %w", err)
		}
		s.NATS, s.URL = emb, emb.ClientURL()
		if a, ok := emb.Addr().(*net.TCPAddr); ok {
			nc.Port = a.Port
		}
		s.natsCfg = nc
	}
	var err error
	s.Conn, s.JS, err = infra.Connect(ctx, s.URL, "sled-up")
	if err != nil {
		return fmt.Errorf("services: %w", err)
	}
	if err := infra.ProvisionTopology(ctx, s.JS, infra.Topology{}); err != nil {
		return fmt.Errorf("services: %w", err)
	}
	s.expiry, err = infra.WatchExpiries(ctx, s.Conn, s.JS, infra.ExpiryConfig{Logger: s.cfg.Logger})
	if err != nil {
		return fmt.Errorf("services: %w", err)
	}
	return nil
}

// spawn runs f in a goroutine that Close waits for.
func (s *System) spawn(f func()) {
	s.wg.Add(1)
	go func() { defer s.wg.Done(); f() }()
}

func deviceName(i int, path string) string {
	base := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	var b strings.Builder
	for _, r := range base {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			b.WriteRune(r)
		}
	}
	name := fmt.Sprintf("device-%d-%s", i+1, b.String())
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

func (s *System) startSLED(ctx, runCtx context.Context) error {
	if err := s.StartBatcher(); err != nil {
		return err
	}
	if err := s.StartVerifier(); err != nil {
		return err
	}
	for i := range s.cfg.Devices {
		path := s.cfg.Drafts[i%len(s.cfg.Drafts)]
		d, err := drafter.New(ctx, s.Models[path], s.Conn, s.JS, drafter.Config{
			DeviceID: deviceName(i, path), Pool: s.cfg.Pool, Draft: s.cfg.Draft, Retry: s.cfg.Retry,
			NoAsync: s.cfg.NoAsync, Threads: s.cfg.DeviceThreads,
			MaxContext: min(s.Models[path].DefaultSlotContext(), s.Target.DefaultSlotContext()),
			Logger:     s.cfg.Logger, Telemetry: s.cfg.Telemetry,
		})
		if err != nil {
			return err
		}
		s.Devices = append(s.Devices, d)
		s.Generators = append(s.Generators, httpapi.Device{Name: d.ID(), Generator: d})
	}
	return nil
}

// StartBatcher starts the batcher (again, after StopBatcher): a fresh one on the
// same durable consumer, as a crashed batcher's replacement would be.
func (s *System) StartBatcher() error {
	s.batcherMu.Lock()
	defer s.batcherMu.Unlock()
	if s.stopBatcher != nil {
		return errors.New("services: batcher already running")
	}
	b, err := batcher.New(s.Conn, s.JS, batcher.Config{Pool: s.cfg.Pool, Policy: s.cfg.Batch, VocabSize: s.Target.VocabSize(), Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry})
	if err != nil {
		return err
	}
	bctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.Batcher, s.stopBatcher, s.batcherDone = b, stop, done
	go func() { defer close(done); _ = b.Run(bctx) }()
	return nil
}

// StopBatcher stops the batcher as a crash would: drafts it held unacknowledged
// are redelivered to the next one.
func (s *System) StopBatcher() {
	s.batcherMu.Lock()
	defer s.batcherMu.Unlock()
	if s.stopBatcher == nil {
		return
	}
	s.stopBatcher()
	<-s.batcherDone
	s.stopBatcher = nil
}

// RestartNATS shuts the embedded NATS server down and starts it again on the same
// port and store, after down has passed: every client sees its server vanish and
// reconnects. It fails with an external server.
func (s *System) RestartNATS(ctx context.Context, down time.Duration) error {
	if s.NATS == nil {
		return errors.New("services: no embedded NATS server to restart")
	}
	s.NATS.Shutdown()
	time.Sleep(down)
	emb, err := infra.StartEmbedded(ctx, s.natsCfg)
	if err != nil {
		return fmt.Errorf("services: restart NATS: %w", err)
	}
	s.NATS = emb
	return nil
}

// StartVerifier starts the verifier worker (again, after StopVerifier): a fresh
// verifier with empty KV slots under the configured worker name, as after a crash.
func (s *System) StartVerifier() error {
	s.verifierMu.Lock()
	defer s.verifierMu.Unlock()
	if s.worker != nil {
		return errors.New("services: verifier already running")
	}
	v, err := verifier.New(s.Target, s.cfg.Verifier)
	if err != nil {
		return err
	}
	w, err := verifier.NewWorker(v, s.Conn, s.JS, verifier.WorkerConfig{Pool: s.cfg.Pool, Name: s.cfg.WorkerName, Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry})
	if err != nil {
		v.Close()
		return err
	}
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.worker, s.stopWorker, s.workerDone = w, stop, done
	go func() {
		defer close(done)
		_ = w.Run(wctx)
		v.Close()
	}()
	return nil
}

// StopVerifier stops the verifier worker and frees its verifier, as a crash would
// (batches in flight are redelivered once a worker returns).
func (s *System) StopVerifier() {
	s.verifierMu.Lock()
	defer s.verifierMu.Unlock()
	if s.worker == nil {
		return
	}
	s.stopWorker()
	<-s.workerDone
	s.worker = nil
}

// Verifier is the running verifier, or nil.
func (s *System) Verifier() *verifier.Verifier {
	s.verifierMu.Lock()
	defer s.verifierMu.Unlock()
	if s.worker == nil {
		return nil
	}
	return s.worker.Verifier()
}

func (s *System) startCentralized(runCtx context.Context) error {
	c, err := centralized.New(s.Target, centralized.Config{Slots: s.cfg.Verifier.Slots, SlotContext: s.cfg.Verifier.SlotContext, Threads: s.cfg.Verifier.Threads})
	if err != nil {
		return err
	}
	s.Central = c
	s.spawn(func() { _ = c.Run(runCtx) })
	// Every "device" forwards its requests to the one server.
	for i := range s.cfg.Devices {
		s.Generators = append(s.Generators, httpapi.Device{Name: fmt.Sprintf("device-%d-central", i+1), Generator: c})
	}
	return nil
}

func (s *System) startEdge() error {
	for i := range s.cfg.Devices {
		path := s.cfg.Drafts[i%len(s.cfg.Drafts)]
		e, err := drafter.NewEdge(s.Models[path], s.cfg.DeviceThreads, 0)
		if err != nil {
			return err
		}
		s.Edges = append(s.Edges, e)
		s.Generators = append(s.Generators, httpapi.Device{Name: deviceName(i, path), Generator: e})
	}
	return nil
}

func (s *System) serveHTTP(runCtx context.Context) error {
	name := ""
	if s.Target != nil {
		name = strings.TrimSuffix(filepath.Base(s.cfg.Target), filepath.Ext(s.cfg.Target))
	}
	s.API = httpapi.New(httpapi.Config{Devices: s.Generators, ModelName: name, Logger: s.cfg.Logger})
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("services: listen %s: %w", s.cfg.HTTPAddr, err)
	}
	s.HTTPAddr = ln.Addr().String()
	s.httpSrv = &http.Server{Handler: s.API, ReadHeaderTimeout: 10 * time.Second}
	s.spawn(func() {
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("http", "err", err)
		}
	})
	return nil
}

// Summarize writes a line per device every interval, until ctx ends: tokens/s
// and acceptance over the interval, for devices that produced tokens in it
// (an idle system prints nothing). Only SLED-mode devices report.
func (s *System) Summarize(ctx context.Context, every time.Duration, w io.Writer) {
	if len(s.Devices) == 0 || every <= 0 {
		return
	}
	last := make([]drafter.Activity, len(s.Devices))
	for i, d := range s.Devices {
		last[i] = d.Activity()
	}
	t := time.NewTicker(every)
	defer t.Stop()
	prev := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			el := now.Sub(prev).Seconds()
			prev = now
			for i, d := range s.Devices {
				a := d.Activity()
				if line := summaryLine(d.ID(), last[i], a, el); line != "" {
					fmt.Fprintln(w, line)
				}
				last[i] = a
			}
		}
	}
}

// summaryLine describes the activity between two snapshots taken el seconds
// apart, or returns "" when there was none.
func summaryLine(device string, from, to drafter.Activity, el float64) string {
	tokens := to.Tokens - from.Tokens
	if tokens == 0 || el <= 0 {
		return ""
	}
	rounds, drafted, accepted := to.Rounds-from.Rounds, to.Drafted-from.Drafted, to.Accepted-from.Accepted
	line := fmt.Sprintf("%s: %.1f tok/s, %d rounds", device, float64(tokens)/el, rounds)
	if drafted > 0 {
		line += fmt.Sprintf(", acceptance %.0f%% (%d/%d), %.2f accepted/round", 100*float64(accepted)/float64(drafted), accepted, drafted, float64(accepted)/float64(max(rounds, 1)))
	}
	if u := to.Unverified - from.Unverified; u > 0 {
		line += fmt.Sprintf(", %d unverified", u)
	}
	return line
}

// Generator returns device i's generator.
func (s *System) Generator(i int) textgen.Generator { return s.Generators[i].Generator }

// Close stops everything: HTTP, devices, batcher, verifier, NATS, models.
func (s *System) Close() error {
	s.closeOnce.Do(func() {
		if s.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.httpSrv.Shutdown(ctx)
			cancel()
		}
		for _, d := range s.Devices {
			d.Close()
		}
		for _, e := range s.Edges {
			e.Close()
		}
		s.StopVerifier()
		s.StopBatcher()
		s.cancel()
		s.wg.Wait()
		if s.Central != nil {
			s.Central.Close()
		}
		if s.expiry != nil {
			s.expiry.Stop()
		}
		if s.Conn != nil {
			s.Conn.Close()
		}
		if s.NATS != nil {
			s.NATS.Shutdown()
		}
		if s.ownStoreDir != "" {
			os.RemoveAll(s.ownStoreDir)
		}
		for _, m := range s.Models {
			m.Close()
		}
	})
	return nil
}
