package verifier

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/infra"
)

// WorkerConfig configures RunWorker. Zero fields take the documented defaults.
type WorkerConfig struct {
	// Pool whose batches the worker verifies. Default "default".
	Pool string
	// Name identifies the worker: batches for sessions it holds arrive on
	// sled.batch.<pool>.<name>, and a restarted worker with the same name picks up
	// what its predecessor left. Required; a valid id.
	Name string
	// Heartbeat is the interval of liveness reports to batchers. Default 500ms.
	Heartbeat time.Duration
	// AckWait: a batch not acknowledged within it (a crashed worker) is delivered
	// again. Default 30s.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one batch. Default 5.
	MaxDeliver int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Worker feeds a Verifier with the batches of one pool from JetStream and
// publishes each verdict on its device's result subject. A batch is acknowledged
// only after all of its results are stored, so a crash mid-batch means the batch
// is verified again (verification is idempotent per round: see Verifier.Verify).
type Worker struct {
	v      *Verifier
	cfg    WorkerConfig
	nc     *nats.Conn
	js     jetstream.JetStream
	source string

	mu      sync.Mutex
	batches uint64
	skipped uint64 // drafts past their deadline, left unanswered
}

// NewWorker creates a worker; Run runs it.
func NewWorker(v *Verifier, nc *nats.Conn, js jetstream.JetStream, cfg WorkerConfig) (*Worker, error) {
	if cfg.Pool == "" {
		cfg.Pool = "default"
	}
	if !events.ValidID(cfg.Pool) || !events.ValidID(cfg.Name) {
		return nil, fmt.Errorf("verifier: invalid pool %q or worker name %q", cfg.Pool, cfg.Name)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 500 * time.Millisecond
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("worker", cfg.Name)
	return &Worker{v: v, cfg: cfg, nc: nc, js: js, source: "/sled/verifier/" + cfg.Pool + "/" + cfg.Name}, nil
}

// Verifier is the worker's verifier.
func (w *Worker) Verifier() *Verifier { return w.v }

// Batches is the number of batches verified.
func (w *Worker) Batches() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.batches
}

// Run verifies batches until ctx ends. It consumes two durable consumers: the
// worker's own subject (sticky sessions) and the pool's shared subject (batches
// routed while no worker was known alive).
func (w *Worker) Run(ctx context.Context) error {
	dec := &events.Decoder{VocabSize: w.v.model.VocabSize()}
	mk := func(durable, subject string) (*infra.Consumer, error) {
		return infra.NewConsumer(ctx, w.js, infra.ConsumerConfig{
			Stream: infra.StreamBatches, Durable: durable, FilterSubjects: []string{subject},
			AckWait: w.cfg.AckWait, MaxDeliver: w.cfg.MaxDeliver, PullBatch: 4,
			Decoder: dec, Source: w.source, Logger: w.cfg.Logger,
		})
	}
	own, err := mk("verifier-"+w.cfg.Pool+"-"+w.cfg.Name, events.BatchSubject(w.cfg.Pool, w.cfg.Name))
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	shared, err := mk("verifier-"+w.cfg.Pool, events.BatchSubject(w.cfg.Pool, ""))
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	w.heartbeat() // announce at once, so batchers route to this worker
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for _, c := range []*infra.Consumer{own, shared} {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- c.Run(ctx, w.handle) }()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(w.cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			case <-t.C:
				w.heartbeat()
			}
		}
	}()
	wg.Wait()
	return <-errs
}

func (w *Worker) heartbeat() {
	cfg := w.v.Config()
	data, _ := json.Marshal(events.Heartbeat{Worker: w.cfg.Name, Pool: w.cfg.Pool, Sessions: w.v.Sessions(), Slots: cfg.Slots, Time: time.Now()})
	if err := w.nc.Publish(events.HeartbeatSubject(w.cfg.Pool, w.cfg.Name), data); err != nil {
		w.cfg.Logger.Debug("heartbeat", "err", err)
	}
}

// handle verifies one batch and publishes its results.
func (w *Worker) handle(ctx context.Context, ev *events.Event, msg jetstream.Msg) error {
	b, ok := ev.Data.(*events.VerifyBatch)
	if !ok {
		return infra.Permanent(fmt.Errorf("%w: %s on a batch subject", events.ErrInvalid, ev.Type()))
	}
	now := time.Now()
	drafts := b.Drafts[:0:0]
	for _, d := range b.Drafts {
		if !d.Deadline.IsZero() && now.After(d.Deadline) {
			w.mu.Lock()
			w.skipped++
			w.mu.Unlock()
			continue // the device has already resent these tokens in a newer round
		}
		drafts = append(drafts, d)
	}
	results, err := w.v.Verify(ctx, drafts)
	if err != nil {
		return err
	}
	batchMs := float64(now.Sub(b.CreatedAt).Microseconds()) / 1000
	futures := make([]jetstream.PubAckFuture, 0, len(results))
	for i := range results {
		r := &results[i]
		r.BatchID = b.BatchID
		r.ServerTiming.BatchMs = batchMs
		r.ServerTiming.TotalMs = float64(time.Since(b.CreatedAt).Microseconds())/1000 + r.ServerTiming.QueueMs
		m, err := events.Encode(events.New(w.source, r))
		if err != nil {
			w.cfg.Logger.Error("encode result", "err", err)
			continue
		}
		f, err := w.js.PublishMsgAsync(m, jetstream.WithMsgID(r.MsgID()))
		if err != nil {
			return fmt.Errorf("verifier: publish result: %w", err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("verifier: result not stored: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.mu.Lock()
	w.batches++
	w.mu.Unlock()
	return nil
}
