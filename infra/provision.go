package infra

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
)

// Stream names.
const (
	StreamDrafts  = "SLED_DRAFTS"
	StreamBatches = "SLED_BATCHES"
	StreamResults = "SLED_RESULTS"
	StreamDLQ     = "SLED_DLQ"
)

// Topology describes the SLED streams. Zero fields take the defaults.
type Topology struct {
	// Replicas per stream (default 1; 3 on a three-node cluster).
	Replicas int
	// Storage of every stream (default file storage).
	Storage jetstream.StorageType
	// DuplicateWindow is how long SLED_DRAFTS, SLED_BATCHES and SLED_RESULTS
	// remember a Nats-Msg-Id for dedupe (default 30s). It covers every retry
	// of a publish (seconds apart) and outlives a draft's deadline; each id
	// remembered costs the server memory (a soak's heap profile: 32 MB of
	// dedupe entries at about 800 events/s with 2 min, so about 8 MB with
	// 30 s), so longer windows cost RAM under load.
	// A draft resent after it, if one still arrived, is dropped as stale or
	// superseded by the batcher.
	DuplicateWindow time.Duration
	// DLQDuplicateWindow is SLED_DLQ's (default 2m): a redelivered rejected
	// message is dead-lettered once.
	DLQDuplicateWindow time.Duration
	// DraftMaxAge bounds how long drafts stay in SLED_DRAFTS (default 2m);
	// each draft also carries a shorter per-message TTL (see Publisher).
	DraftMaxAge time.Duration
	// BatchMaxAge bounds unconsumed batches (default 2m).
	BatchMaxAge time.Duration
	// ResultMaxAge bounds how long results can be replayed (default 5m).
	ResultMaxAge time.Duration
	// DLQMaxAge and DLQMaxBytes bound the dead-letter stream (defaults 24h
	// and 256 MiB; oldest dropped first).
	DLQMaxAge   time.Duration
	DLQMaxBytes int64
}

func (t Topology) withDefaults() Topology {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if t.Replicas == 0 {
		t.Replicas = 1
	}
	def(&t.DuplicateWindow, 30*time.Second)
	def(&t.DLQDuplicateWindow, 2*time.Minute)
	def(&t.DraftMaxAge, 2*time.Minute)
	def(&t.BatchMaxAge, 2*time.Minute)
	def(&t.ResultMaxAge, 5*time.Minute)
	def(&t.DLQMaxAge, 24*time.Hour)
	if t.DLQMaxBytes == 0 {
		t.DLQMaxBytes = 256 << 20
	}
	return t
}

// Streams returns the stream configurations of the topology.
func (t Topology) Streams() []jetstream.StreamConfig {
	t = t.withDefaults()
	return []jetstream.StreamConfig{
		{
			Name: StreamDrafts, Description: "SLED draft.ready events, by pool and device",
			Subjects: []string{events.SubjectDrafts}, Retention: jetstream.LimitsPolicy,
			MaxAge: t.DraftMaxAge, Duplicates: t.DuplicateWindow, AllowMsgTTL: true,
			Storage: t.Storage, Replicas: t.Replicas, Discard: jetstream.DiscardOld,
		},
		{
			Name: StreamBatches, Description: "SLED verify.batch events, by pool and worker",
			Subjects: []string{events.SubjectBatches}, Retention: jetstream.WorkQueuePolicy,
			MaxAge: t.BatchMaxAge, Duplicates: t.DuplicateWindow,
			Storage: t.Storage, Replicas: t.Replicas, Discard: jetstream.DiscardOld,
		},
		{
			Name: StreamResults, Description: "SLED verify.result events, by device",
			Subjects: []string{events.SubjectResults}, Retention: jetstream.LimitsPolicy,
			MaxAge: t.ResultMaxAge, Duplicates: t.DuplicateWindow,
			Storage: t.Storage, Replicas: t.Replicas, Discard: jetstream.DiscardOld,
		},
		{
			Name: StreamDLQ, Description: "SLED dead letters: rejected or expired messages, by reason",
			Subjects: []string{events.SubjectDLQ}, Retention: jetstream.LimitsPolicy,
			MaxAge: t.DLQMaxAge, MaxBytes: t.DLQMaxBytes, Duplicates: t.DLQDuplicateWindow,
			Storage: t.Storage, Replicas: t.Replicas, Discard: jetstream.DiscardOld,
		},
	}
}

// Provision creates each stream, or updates it to the given configuration
// when it exists. It is idempotent: running it again with the same
// configuration changes nothing. A change the server refuses (e.g. storage
// type, or turning AllowMsgTTL off) is returned as an error.
func Provision(ctx context.Context, js jetstream.JetStream, streams ...jetstream.StreamConfig) error {
	for _, sc := range streams {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("infra: provision stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// ProvisionTopology provisions the streams of t.
func ProvisionTopology(ctx context.Context, js jetstream.JetStream, t Topology) error {
	return Provision(ctx, js, t.Streams()...)
}

// PublishAsyncTimeout bounds how long an asynchronous JetStream publish of a
// Connect connection waits for its ack.
const PublishAsyncTimeout = 30 * time.Second

// Connect dials a NATS server (embedded or external) for a SLED service and
// returns the connection and its JetStream context. It reconnects forever
// with a short wait, as devices on flaky links need; pass opts to override.
func Connect(ctx context.Context, url, name string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	all := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				slog.Warn("nats disconnected", "name", name, "err", err)
			}
		}),
	}, opts...)
	type res struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := nats.Connect(url, all...)
		ch <- res{nc, err}
	}()
	var r res
	select {
	case r = <-ch:
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, nil, ctx.Err()
	}
	if r.err != nil {
		return nil, nil, fmt.Errorf("infra: connect %s: %w", url, r.err)
	}
	// An async publish whose ack never comes (its stream vanished) fails after
	// PublishAsyncTimeout instead of staying pending for good.
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncTimeout(PublishAsyncTimeout))
	if err != nil {
		r.nc.Close()
		return nil, nil, fmt.Errorf("infra: jetstream: %w", err)
	}
	return r.nc, js, nil
}
