package services

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/verifier"
)

// runner runs one role's goroutine that can be stopped, as a crash would stop
// it, and started again. Safe for concurrent use.
type runner struct {
	mu   sync.Mutex
	stop context.CancelFunc
	done chan struct{}
}

// start runs run in a goroutine with a context that stop cancels. It fails if
// the role is running.
func (r *runner) start(run func(ctx context.Context)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop != nil {
		return errors.New("already running")
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.stop, r.done = stop, done
	go func() { defer close(done); run(ctx) }()
	return nil
}

// halt cancels the role and waits for its goroutine; a no-op when it is not
// running.
func (r *runner) halt() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop == nil {
		return
	}
	r.stop()
	<-r.done
	r.stop, r.done = nil, nil
}

// The roles of SLED mode, and the faults tests inject into them: each can be
// stopped as a crash would stop it and started again as its replacement.

// StartBatcher starts the batcher (again, after StopBatcher): a fresh one on the
// same durable consumer, as a crashed batcher's replacement would be.
func (s *System) StartBatcher() error {
	b, err := batcher.New(s.conn, s.js, batcher.Config{Pool: s.cfg.Pool, Policy: s.cfg.Batch, VocabSize: s.target.VocabSize(), Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry})
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
func (s *System) StopBatcher() {
	s.batcherRole.halt()
	s.mu.Lock()
	s.batcher = nil
	s.mu.Unlock()
}

// StartVerifier starts the verifier worker (again, after StopVerifier): a fresh
// verifier with empty KV slots under the configured worker name, as after a crash.
func (s *System) StartVerifier() error {
	v, err := verifier.New(s.target, s.cfg.Verifier)
	if err != nil {
		return err
	}
	w, err := verifier.NewWorker(v, s.conn, s.js, verifier.WorkerConfig{Pool: s.cfg.Pool, Name: s.cfg.WorkerName, Logger: s.cfg.Logger, Telemetry: s.cfg.Telemetry})
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
func (s *System) StopVerifier() { s.verifierRole.halt() }

// Verifier is the running verifier, or nil.
func (s *System) Verifier() *verifier.Verifier {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.worker == nil {
		return nil
	}
	return s.worker.Verifier()
}

// RestartNATS shuts the embedded NATS server down and starts it again on the same
// port and store, after down has passed: every client sees its server vanish and
// reconnects. It fails with an external server.
func (s *System) RestartNATS(ctx context.Context, down time.Duration) error {
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
