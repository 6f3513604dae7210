package services

import (
	"context"
	"errors"
	"sync"
	"time"

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

// The fault hooks of a SLED-mode System: its Server's (see Server).

// StartBatcher starts the batcher again after StopBatcher (Server.StartBatcher).
func (s *System) StartBatcher() error {
	if s.server == nil {
		return errNotSLED
	}
	return s.server.StartBatcher()
}

// StopBatcher stops the batcher as a crash would (Server.StopBatcher).
func (s *System) StopBatcher() {
	if s.server != nil {
		s.server.StopBatcher()
	}
}

// StartVerifier starts the verifier worker again after StopVerifier
// (Server.StartVerifier).
func (s *System) StartVerifier() error {
	if s.server == nil {
		return errNotSLED
	}
	return s.server.StartVerifier()
}

// StopVerifier stops the verifier worker as a crash would (Server.StopVerifier).
func (s *System) StopVerifier() {
	if s.server != nil {
		s.server.StopVerifier()
	}
}

// Verifier is the running verifier, or nil.
func (s *System) Verifier() *verifier.Verifier {
	if s.server == nil {
		return nil
	}
	return s.server.Verifier()
}

// RestartNATS restarts the embedded NATS server after down (Server.RestartNATS).
func (s *System) RestartNATS(ctx context.Context, down time.Duration) error {
	if s.server == nil {
		return errNotSLED
	}
	return s.server.RestartNATS(ctx, down)
}

var errNotSLED = errors.New("services: not in SLED mode")
