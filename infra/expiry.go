package infra

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
)

// AdvisoryMaxDeliveries is the subject prefix of JetStream's MaxDeliver
// advisories: <prefix>.<stream>.<consumer>.
const AdvisoryMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"

// ExpiryConfig configures an ExpiryWatcher. Zero fields take the defaults.
type ExpiryConfig struct {
	// Streams whose exhausted messages are answered (default SLED_DRAFTS
	// and SLED_BATCHES).
	Streams []string
	// Queue is the queue group of the advisory subscription, so several
	// watchers answer each advisory once (default "sled-expiry").
	Queue string
	// Source is the ce-source of the expired results (default
	// "/sled/expiry").
	Source string
	// Timeout bounds the handling of one advisory (default 5s).
	Timeout time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// ExpiryWatcher turns MaxDeliver advisories into "expired" results: for each
// message of a watched stream that ran out of deliveries it fetches the
// message by stream sequence, publishes an expired error result to every
// device it addresses (a draft's device, or each draft's device of a batch)
// and copies the message to sled.dlq.expired.
//
// Advisories are core NATS messages: one raised while no watcher is
// subscribed is lost, so run a watcher in every process that runs consumers
// (the queue group keeps answers single).
type ExpiryWatcher struct {
	sub *nats.Subscription
	js  jetstream.JetStream
	pub *Publisher
	cfg ExpiryConfig
}

// WatchExpiries subscribes to MaxDeliver advisories on nc and answers them
// until Stop or until ctx ends.
func WatchExpiries(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg ExpiryConfig) (*ExpiryWatcher, error) {
	if len(cfg.Streams) == 0 {
		cfg.Streams = []string{StreamDrafts, StreamBatches}
	}
	if cfg.Queue == "" {
		cfg.Queue = "sled-expiry"
	}
	if cfg.Source == "" {
		cfg.Source = "/sled/expiry"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &ExpiryWatcher{js: js, pub: NewPublisher(js, PublisherConfig{}), cfg: cfg}
	sub, err := nc.QueueSubscribe(AdvisoryMaxDeliveries+".>", cfg.Queue, func(m *nats.Msg) {
		hctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
		if err := w.handle(hctx, m.Data); err != nil {
			cfg.Logger.Error("expiry advisory", "subject", m.Subject, "err", err)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("infra: subscribe advisories: %w", err)
	}
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("infra: subscribe advisories: %w", err)
	}
	w.sub = sub
	context.AfterFunc(ctx, w.Stop)
	return w, nil
}

// Stop unsubscribes. Safe to call more than once.
func (w *ExpiryWatcher) Stop() { _ = w.sub.Unsubscribe() }

type maxDeliverAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

func (w *ExpiryWatcher) handle(ctx context.Context, data []byte) error {
	var adv maxDeliverAdvisory
	if err := json.Unmarshal(data, &adv); err != nil {
		return fmt.Errorf("advisory: %w", err)
	}
	if !slices.Contains(w.cfg.Streams, adv.Stream) {
		return nil
	}
	st, err := w.js.Stream(ctx, adv.Stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", adv.Stream, err)
	}
	raw, err := st.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		return fmt.Errorf("get %s #%d: %w", adv.Stream, adv.StreamSeq, err)
	}
	cause := fmt.Errorf("not processed after %d deliveries (stream %s, consumer %s)", adv.Deliveries, adv.Stream, adv.Consumer)
	if err := DeadLetter(ctx, w.pub, "expired", cause, raw.Subject, raw.Header, raw.Data, adv.Stream, adv.StreamSeq); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	for _, a := range events.AddressOf(raw.Subject, raw.Data) {
		r := events.ErrorResult(a, events.StatusExpired, nil)
		r.Error = cause.Error()
		if _, err := w.pub.Publish(ctx, events.New(w.cfg.Source, r)); err != nil {
			return fmt.Errorf("expired result to %s: %w", a.DeviceID, err)
		}
	}
	return nil
}
