package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/natsauth"
	"github.com/sled-project/sled/telemetry"
	"github.com/sled-project/sled/verifier"
)

// ServerConfig configures StartServer. Zero fields take the documented defaults.
type ServerConfig struct {
	// Target is the target model. Required.
	Target *engine.Model
	// Pool is the verification pool. Default events.DefaultPool.
	Pool string
	// WorkerName names the verifier worker. Default "worker-1".
	WorkerName string
	// Workers is the number of verifier workers (default 1): the first is
	// WorkerName, the others WorkerName-2, WorkerName-3, ..., each with its own
	// verifier (KV slots, threads per Verifier) on the one target model and its
	// own connection. The fault hooks act on the first only.
	Workers int
	// ModelName is the id the target is served under, announced in the worker's
	// heartbeats. Default: the target file's name without its extension.
	ModelName string
	// Batch is the batcher's policy (batcher's defaults).
	Batch batcher.Policy
	// Verifier configures the worker's verifier (verifier's defaults).
	Verifier verifier.Config
	// Budget is every worker's goodput policy (verifier.WorkerConfig.Budget):
	// draft budgets by default, Budget.Static for the paper's fixed length.
	Budget goodput.Policy
	// GatherMax is every worker's wait bound for the rounds it expects back
	// (verifier.WorkerConfig.GatherMax; default there, negative: never wait).
	GatherMax time.Duration
	// NATSURL connects to an external NATS server instead of starting one.
	NATSURL string
	// NATS configures the embedded server (a free port and a temporary store
	// by default).
	NATS infra.EmbeddedConfig
	// Auth, when set, turns NATS authentication on: the embedded server trusts
	// the authority, and every role (and every device Dial connects) gets its
	// own credential from it, written to CredsDir as <id>.creds (kept and
	// reused when it is already there). With an external server (NATSURL) the
	// server must already trust the same authority. Default: none.
	Auth *natsauth.Authority
	// CredsDir is where credentials are written. Default: Auth.Dir().
	CredsDir string
	// ClientTLS is what this process's own connections check the NATS server
	// with (its CA; a client certificate for mutual TLS). Default: the
	// embedded server's CA file (NATS.TLS.CAFile), if any.
	ClientTLS infra.TLSFiles
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Telemetry receives spans and metrics (default none).
	Telemetry *telemetry.Telemetry
}

func (c ServerConfig) withDefaults() ServerConfig {
	if c.Auth != nil && c.CredsDir == "" {
		c.CredsDir = c.Auth.Dir()
	}
	if c.ClientTLS == (infra.TLSFiles{}) {
		c.ClientTLS = infra.TLSFiles{CAFile: c.NATS.TLS.CAFile}
	}
	if c.Pool == "" {
		c.Pool = events.DefaultPool
	}
	if c.WorkerName == "" {
		c.WorkerName = "worker-1"
	}
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Server is the server side of SLED in one process: a NATS server (embedded,
// or the one at NATSURL) with the streams provisioned, the batcher and one
// verifier worker, each on its own connection. `sled up` and `sled bench` run
// it; the fault hooks (StopBatcher, StartVerifier, RestartNATS, ...) stop a
// part as a crash would and start its replacement. Safe for concurrent use.
type Server struct {
	cfg         ServerConfig
	natsCfg     infra.EmbeddedConfig // the embedded server's settings, port resolved
	url         string
	conn        *nats.Conn // the caller's (admin with auth on), and the batcher's without
	js          jetstream.JetStream
	bconn       *nats.Conn // the batcher's
	bjs         jetstream.JetStream
	wconn       *nats.Conn // the verifier worker's
	wjs         jetstream.JetStream
	expiry      *infra.ExpiryWatcher
	ownStoreDir string

	batcherRole, verifierRole runner
	extra                     []*runner // workers 2..Workers
	stopWatch                 context.CancelFunc
	mu                        sync.Mutex
	emb                       *infra.Embedded // nil with an external server
	batcher                   *batcher.Batcher
	worker                    *verifier.Worker
	closeOnce                 sync.Once
}

// StartServer starts a Server and returns once its batcher and worker run.
// Close stops it.
func StartServer(ctx context.Context, cfg ServerConfig) (s *Server, err error) {
	cfg = cfg.withDefaults()
	if cfg.Target == nil {
		return nil, errors.New("services: a server needs a target model")
	}
	s = &Server{cfg: cfg}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	s.url = cfg.NATSURL
	if s.url == "" {
		nc := cfg.NATS
		if nc.Port == 0 {
			nc.Port = -1
		}
		if nc.StoreDir == "" {
			dir, err := os.MkdirTemp("", "sled-nats-")
			if err != nil {
				return s, err
			}
			nc.StoreDir, s.ownStoreDir = dir, dir
		}
		if nc.Logger == nil {
			nc.Logger = cfg.Logger
		}
		if cfg.Auth != nil && nc.Trust == nil {
			t, err := natsauth.LoadTrust(cfg.Auth.Dir())
			if err != nil {
				return s, fmt.Errorf("services: %w", err)
			}
			nc.Trust = t
		}
		emb, err := infra.StartEmbedded(ctx, nc)
		if err != nil {
			return s, fmt.Errorf("services: %w", err)
		}
		if nc.Trust != nil {
			// Revocations (`sled creds revoke` on the authority) apply
			// without a restart.
			wctx, stop := context.WithCancel(context.Background())
			s.stopWatch = stop
			go nc.Trust.Watch(wctx, func() *server.Server {
				s.mu.Lock()
				defer s.mu.Unlock()
				if s.emb == nil {
					return nil
				}
				return s.emb.Server()
			}, 0, cfg.Logger)
		}
		s.emb, s.url = emb, emb.ClientURL()
		if a, ok := emb.Addr().(*net.TCPAddr); ok {
			nc.Port = a.Port
		}
		s.natsCfg = nc
	}
	if s.conn, s.js, err = s.Dial(ctx, natsauth.Identity{ID: "sled-admin", Role: natsauth.RoleAdmin, Pool: cfg.Pool}, "sled-server"); err != nil {
		return s, err
	}
	if err := infra.ProvisionTopology(ctx, s.js, infra.Topology{}); err != nil {
		return s, fmt.Errorf("services: %w", err)
	}
	s.bconn, s.bjs = s.conn, s.js
	if cfg.Auth != nil {
		if s.bconn, s.bjs, err = s.Dial(ctx, natsauth.Identity{ID: "batcher-" + cfg.Pool, Role: natsauth.RoleBatcher, Pool: cfg.Pool}, "sled-batcher-"+cfg.Pool); err != nil {
			return s, err
		}
	}
	if s.wconn, s.wjs, err = s.Dial(ctx, natsauth.Identity{ID: cfg.WorkerName, Role: natsauth.RoleVerifier, Pool: cfg.Pool}, "sled-verifier-"+cfg.WorkerName); err != nil {
		return s, err
	}
	if s.expiry, err = infra.WatchExpiries(ctx, s.conn, s.js, infra.ExpiryConfig{Logger: cfg.Logger}); err != nil {
		return s, fmt.Errorf("services: %w", err)
	}
	if err := s.StartBatcher(); err != nil {
		return s, err
	}
	if err := s.StartVerifier(); err != nil {
		return s, err
	}
	for i := 2; i <= cfg.Workers; i++ {
		if err := s.startExtraWorker(ctx, fmt.Sprintf("%s-%d", cfg.WorkerName, i)); err != nil {
			return s, err
		}
	}
	return s, nil
}

// startExtraWorker runs one more verifier worker named name until Close.
func (s *Server) startExtraWorker(ctx context.Context, name string) error {
	nc, js, err := s.Dial(ctx, natsauth.Identity{ID: name, Role: natsauth.RoleVerifier, Pool: s.cfg.Pool}, "sled-verifier-"+name)
	if err != nil {
		return err
	}
	v, err := verifier.New(s.cfg.Target, s.cfg.Verifier)
	if err != nil {
		nc.Close()
		return err
	}
	w, err := verifier.NewWorker(v, nc, js, verifier.WorkerConfig{Pool: s.cfg.Pool, Name: name, Model: s.cfg.ModelName, Budget: s.cfg.Budget, GatherMax: s.cfg.GatherMax, Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry})
	if err != nil {
		v.Close()
		nc.Close()
		return err
	}
	r := &runner{}
	if err := r.start(func(ctx context.Context) { _ = w.Run(ctx); v.Close(); nc.Close() }); err != nil {
		v.Close()
		nc.Close()
		return fmt.Errorf("services: verifier %s %w", name, err)
	}
	s.mu.Lock()
	s.extra = append(s.extra, r)
	s.mu.Unlock()
	return nil
}

// Dial connects to the server's NATS as id: with Auth, under a credential
// issued for id (CredsDir/<id>.creds, reused when it names the same role and
// pool), else anonymously; over TLS when ClientTLS says so. The caller closes
// the connection. Devices of `sled up` connect this way when auth is on.
func (s *Server) Dial(ctx context.Context, id natsauth.Identity, name string) (*nats.Conn, jetstream.JetStream, error) {
	auth := infra.ClientAuth{TLS: s.cfg.ClientTLS}
	if s.cfg.Auth != nil {
		path, err := s.Creds(id)
		if err != nil {
			return nil, nil, err
		}
		auth.Creds = path
	}
	opts, err := auth.Options()
	if err != nil {
		return nil, nil, fmt.Errorf("services: %w", err)
	}
	nc, js, err := infra.Connect(ctx, s.url, name, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("services: %w", err)
	}
	return nc, js, nil
}

// Creds returns the path of id's credential in CredsDir, issuing it when
// there is none for id's role and pool yet. It fails without Auth.
func (s *Server) Creds(id natsauth.Identity) (string, error) {
	if s.cfg.Auth == nil {
		return "", errors.New("services: no NATS authority (auth is off)")
	}
	if id.Pool == "" {
		id.Pool = s.cfg.Pool
	}
	path := filepath.Join(s.cfg.CredsDir, id.ID+".creds")
	if err := os.MkdirAll(s.cfg.CredsDir, 0o700); err != nil {
		return "", fmt.Errorf("services: %w", err)
	}
	if _, err := s.cfg.Auth.EnsureFile(id, path); err != nil {
		return "", fmt.Errorf("services: %w", err)
	}
	return path, nil
}

// URL is the NATS server's client URL.
func (s *Server) URL() string { return s.url }

// Conn is a connection to the NATS server the caller may use (the batcher's).
func (s *Server) Conn() *nats.Conn { return s.conn }

// JS is Conn's JetStream context.
func (s *Server) JS() jetstream.JetStream { return s.js }

// Batcher is the running batcher, or nil (after StopBatcher).
func (s *Server) Batcher() *batcher.Batcher {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batcher
}

// Verifier is the running worker's verifier, or nil (after StopVerifier).
func (s *Server) Verifier() *verifier.Verifier {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.worker == nil {
		return nil
	}
	return s.worker.Verifier()
}

// StartBatcher starts the batcher (again, after StopBatcher): a fresh one on the
// same durable consumer, as a crashed batcher's replacement would be.
func (s *Server) StartBatcher() error {
	b, err := batcher.New(s.bconn, s.bjs, batcher.Config{Pool: s.cfg.Pool, Policy: s.cfg.Batch, VocabSize: s.cfg.Target.VocabSize(), Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry})
	if err != nil {
		return err
	}
	if err := s.batcherRole.start(func(ctx context.Context) { _ = b.Run(ctx) }); err != nil {
		return fmt.Errorf("services: batcher %w", err)
	}
	s.mu.Lock()
	s.batcher = b
	s.mu.Unlock()
	return nil
}

// StopBatcher stops the batcher as a crash would: drafts it held unacknowledged
// are redelivered to the next one.
func (s *Server) StopBatcher() {
	s.batcherRole.halt()
	s.mu.Lock()
	s.batcher = nil
	s.mu.Unlock()
}

// StartVerifier starts the verifier worker (again, after StopVerifier): a fresh
// verifier with empty KV slots under the configured worker name, as after a crash.
func (s *Server) StartVerifier() error {
	v, err := verifier.New(s.cfg.Target, s.cfg.Verifier)
	if err != nil {
		return err
	}
	w, err := verifier.NewWorker(v, s.wconn, s.wjs, verifier.WorkerConfig{Pool: s.cfg.Pool, Name: s.cfg.WorkerName, Model: s.cfg.ModelName, Budget: s.cfg.Budget, GatherMax: s.cfg.GatherMax, Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry})
	if err != nil {
		v.Close()
		return err
	}
	err = s.verifierRole.start(func(ctx context.Context) {
		_ = w.Run(ctx)
		s.mu.Lock()
		if s.worker == w {
			s.worker = nil
		}
		s.mu.Unlock()
		v.Close()
	})
	if err != nil {
		v.Close()
		return fmt.Errorf("services: verifier %w", err)
	}
	s.mu.Lock()
	s.worker = w
	s.mu.Unlock()
	return nil
}

// StopVerifier stops the verifier worker and frees its verifier, as a crash would
// (batches in flight are redelivered once a worker returns).
func (s *Server) StopVerifier() { s.verifierRole.halt() }

// RestartNATS shuts the embedded NATS server down and starts it again on the same
// port and store, after down has passed: every client sees its server vanish and
// reconnects. It fails with an external server.
func (s *Server) RestartNATS(ctx context.Context, down time.Duration) error {
	s.mu.Lock()
	emb := s.emb
	s.mu.Unlock()
	if emb == nil {
		return errors.New("services: no embedded NATS server to restart")
	}
	emb.Shutdown()
	time.Sleep(down)
	emb, err := infra.StartEmbedded(ctx, s.natsCfg)
	if err != nil {
		return fmt.Errorf("services: restart NATS: %w", err)
	}
	s.mu.Lock()
	s.emb = emb
	s.mu.Unlock()
	return nil
}

// Close stops the worker, the batcher and the NATS server it started.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		extra := s.extra
		s.mu.Unlock()
		for _, r := range extra {
			r.halt()
		}
		s.StopVerifier()
		s.StopBatcher()
		if s.expiry != nil {
			s.expiry.Stop()
		}
		for _, c := range []*nats.Conn{s.wconn, s.bconn, s.conn} {
			if c != nil {
				c.Close()
			}
		}
		s.mu.Lock()
		emb := s.emb
		s.mu.Unlock()
		if s.stopWatch != nil {
			s.stopWatch()
		}
		if emb != nil {
			emb.Shutdown()
		}
		if s.ownStoreDir != "" {
			os.RemoveAll(s.ownStoreDir)
		}
	})
	return nil
}
