package infra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/telemetry"
)

// ErrPermanent marks a handler error that retrying cannot fix. Wrap it with
// Permanent (or %w); see Handler.
var ErrPermanent = errors.New("infra: permanent error")

// ErrDetached, returned by a Handler, hands the message's ack to the handler:
// the Consumer does nothing more with it, and the handler (or whatever it
// handed the message to) must Ack, Nak or Term it before AckWait runs out,
// calling InProgress to extend. The batcher uses this to ack drafts only once
// their batch is published.
var ErrDetached = errors.New("infra: handler owns the ack")

type permanentError struct{ err error }

func (e permanentError) Error() string        { return e.err.Error() }
func (e permanentError) Unwrap() []error      { return []error{ErrPermanent, e.err} }
func (e permanentError) Is(target error) bool { return target == ErrPermanent }

// Permanent wraps err so that errors.Is(err, ErrPermanent) holds and the
// original error stays reachable (so events.Reason still sees it).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// Handler handles one decoded event. It must not Ack, Nak or Term msg
// itself unless it returns ErrDetached; msg is given for its metadata and
// InProgress. The return value decides the message's fate:
//
//   - nil: Ack.
//   - an error wrapping ErrPermanent: Term, a copy to the dead-letter stream
//     (sled.dlq.<reason>) and an "invalid" error result to every device the
//     event addresses.
//   - ErrDetached: nothing; the handler owns the ack.
//   - any other error: Nak with ConsumerConfig.NakDelay, so the message is
//     redelivered until MaxDeliver (then the ExpiryWatcher answers
//     "expired").
//
// Messages that fail to decode never reach the handler: they are treated as
// permanent errors.
type Handler func(ctx context.Context, ev *events.Event, msg jetstream.Msg) error

// ConsumerConfig configures a durable pull consumer and how Consumer runs
// it. Zero fields take the defaults.
type ConsumerConfig struct {
	// Stream and Durable name the stream and the durable consumer
	// (required). Several processes running the same Durable share its
	// messages: each message goes to one of them.
	Stream  string
	Durable string
	// FilterSubjects selects subjects of the stream (default all). On the
	// work-queue batches stream, filters of different consumers must not
	// overlap.
	FilterSubjects []string
	// AckWait is how long a delivered message may stay unacknowledged before
	// it is redelivered, e.g. to another worker when one crashed (default
	// 30s).
	AckWait time.Duration
	// MaxDeliver bounds deliveries per message (default 5); the last one
	// running out raises the advisory ExpiryWatcher turns into an "expired"
	// result.
	MaxDeliver int
	// BackOff, if set, are the redelivery delays after each unacknowledged
	// delivery, replacing AckWait for redelivery timing (at most MaxDeliver
	// entries).
	BackOff []time.Duration
	// MaxAckPending bounds messages delivered but not yet acked (default
	// 1024).
	MaxAckPending int
	// NakDelay delays redelivery after a transient handler error (default
	// 250ms).
	NakDelay time.Duration
	// PullBatch is how many messages a pull request asks for (default 64).
	PullBatch int
	// Decoder decodes and validates messages (default: a zero Decoder).
	Decoder *events.Decoder
	// Source is the ce-source of the error results the consumer publishes
	// (default "/sled/consumer/<Durable>").
	Source string
	// Logger logs rejected messages and handler errors (default
	// slog.Default()).
	Logger *slog.Logger
	// Telemetry counts rejected events, redeliveries and recreations
	// (default: none).
	Telemetry *telemetry.Telemetry

	// Keeper recreates the stream when it vanishes, and the streams the
	// consumer's dead letters and error results go to (default: one of its
	// own, knowing the SLED streams and, as the server reports it when
	// NewConsumer runs, Stream). See Run.
	Keeper *StreamKeeper
	// RecoverWait and RecoverMaxWait bound the backoff between attempts to
	// recover a lost stream or consumer: the first attempt is immediate, the
	// next waits RecoverWait, doubling up to RecoverMaxWait (defaults 100ms
	// and 5s).
	RecoverWait, RecoverMaxWait time.Duration
}

// Consumer defaults.
const (
	DefaultAckWait       = 30 * time.Second
	DefaultMaxDeliver    = 5
	DefaultMaxAckPending = 1024
	DefaultNakDelay      = 250 * time.Millisecond
	DefaultPullBatch     = 64
	DefaultRecoverWait   = 100 * time.Millisecond
	DefaultRecoverMax    = 5 * time.Second
)

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	if c.NakDelay == 0 {
		c.NakDelay = DefaultNakDelay
	}
	if c.PullBatch == 0 {
		c.PullBatch = DefaultPullBatch
	}
	if c.Decoder == nil {
		c.Decoder = &events.Decoder{}
	}
	if c.Source == "" {
		c.Source = "/sled/consumer/" + c.Durable
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RecoverWait <= 0 {
		c.RecoverWait = DefaultRecoverWait
	}
	if c.RecoverMaxWait <= 0 {
		c.RecoverMaxWait = DefaultRecoverMax
	}
	c.RecoverMaxWait = max(c.RecoverMaxWait, c.RecoverWait)
	return c
}

// JetStreamConfig is the durable consumer configuration c provisions:
// explicit ack, deliver all, pull.
func (c ConsumerConfig) JetStreamConfig() jetstream.ConsumerConfig {
	c = c.withDefaults()
	return jetstream.ConsumerConfig{
		Durable:        c.Durable,
		FilterSubjects: c.FilterSubjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckWait:        c.AckWait,
		MaxDeliver:     c.MaxDeliver,
		BackOff:        c.BackOff,
		MaxAckPending:  c.MaxAckPending,
	}
}

// Consumer runs a Handler over a durable JetStream consumer with explicit
// ack/nak/term, rejecting bad input without stopping, and recreating its
// stream and durable consumer when they vanish.
type Consumer struct {
	js     jetstream.JetStream
	cfg    ConsumerConfig
	keeper *StreamKeeper
	pub    *Publisher
	m      *telemetry.Metrics
	attrs  metric.MeasurementOption // consumer=<Durable>

	mu   sync.Mutex
	cons jetstream.Consumer
}

// NewConsumer creates the durable consumer, or updates it to cfg. A stream
// that does not exist but that the Keeper knows is created first.
func NewConsumer(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig) (*Consumer, error) {
	if cfg.Stream == "" || cfg.Durable == "" {
		return nil, errors.New("infra: consumer needs Stream and Durable")
	}
	cfg = cfg.withDefaults()
	keeper := cfg.Keeper
	if keeper == nil {
		keeper = NewStreamKeeper(js, KeeperConfig{Logger: cfg.Logger, Telemetry: cfg.Telemetry})
	}
	if err := keeper.Learn(ctx, cfg.Stream); err != nil {
		cfg.Logger.Debug("learn stream configuration", "stream", cfg.Stream, "err", err)
	}
	c := &Consumer{
		js: js, cfg: cfg, keeper: keeper, pub: NewPublisher(js, PublisherConfig{Keeper: keeper}),
		m:     cfg.Telemetry.Or().Metrics,
		attrs: metric.WithAttributeSet(attribute.NewSet(attribute.String("consumer", cfg.Durable))),
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Stream, cfg.JetStreamConfig())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, kerr := keeper.Ensure(ctx, cfg.Stream); kerr == nil {
			cons, err = js.CreateOrUpdateConsumer(ctx, cfg.Stream, cfg.JetStreamConfig())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("infra: consumer %s/%s: %w", cfg.Stream, cfg.Durable, err)
	}
	c.cons = cons
	return c, nil
}

// JetStream returns the underlying consumer (e.g. for Info or Fetch); after a
// recovery, the recreated one.
func (c *Consumer) JetStream() jetstream.Consumer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cons
}

// Run delivers messages to h, one at a time in delivery order, until ctx
// ends; then it stops pulling, waits for the handler in flight and returns
// ctx's error. A handler panic is not recovered.
//
// A stream or durable consumer that vanishes while Run runs (deleted by an
// operator or a client, or lost with a server's store) is never waited on:
// Run notices (the server's "consumer deleted" status to the pending pull; or
// a missed heartbeat or no responders to a pull, confirmed by looking the
// consumer up), recreates the stream from its known configuration through the
// Keeper, recreates the durable consumer (both once the deletion has settled:
// KeeperConfig.Settle), logs each recreation at Warn, counts it
// (sled.infra.stream_recreated, sled.infra.consumer_recreated) and goes on
// consuming. Messages the stream held are lost with it; the devices resend
// theirs when their round times out. Failed attempts are retried with backoff
// (RecoverWait to RecoverMaxWait), each logged at Warn. Run returns an error
// only when the NATS connection is closed.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	attempt := 0 // recovery attempts since consumption last held
	for {
		began := time.Now()
		lost := c.consume(ctx, h)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c.js.Conn().IsClosed() {
			return fmt.Errorf("infra: consume %s: %w", c.cfg.Durable, nats.ErrConnectionClosed)
		}
		if time.Since(began) > c.cfg.RecoverMaxWait {
			attempt = 0
		}
		for {
			if attempt > 0 {
				wait := min(c.cfg.RecoverWait<<min(attempt-1, 16), c.cfg.RecoverMaxWait)
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			attempt++
			err := c.recover(ctx, lost)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if c.js.Conn().IsClosed() {
				return fmt.Errorf("infra: consume %s: %w", c.cfg.Durable, nats.ErrConnectionClosed)
			}
			c.cfg.Logger.Warn("consumer lost; recovering it failed, retrying", "stream", c.cfg.Stream, "consumer", c.cfg.Durable,
				"cause", lost, "err", err, "attempt", attempt)
		}
	}
}

// errConsumeEnded is consume's answer when the pull subscription ended by
// itself (a terminal status from the server, or a closed connection).
var errConsumeEnded = errors.New("infra: consumption ended")

// Pull request expiry and idle heartbeat of every Consumer.
const (
	pullExpiry    = 5 * time.Second
	pullHeartbeat = time.Second
)

// consume runs one pull subscription until ctx ends or the consumer is lost,
// and returns why it stopped.
func (c *Consumer) consume(ctx context.Context, h Handler) error {
	lost := make(chan error, 1)    // the consumer is gone
	suspect := make(chan error, 1) // the consumer may be gone: look it up
	signal := func(ch chan error, err error) {
		select {
		case ch <- err:
		default:
		}
	}
	cc, err := c.JetStream().Consume(func(m jetstream.Msg) { c.handle(ctx, m, h) },
		jetstream.PullMaxMessages(c.cfg.PullBatch),
		// Short pull requests with frequent idle heartbeats: a pull request
		// held by a node that died (or a consumer whose leader moved) is
		// noticed after two missed heartbeats, 2 s, not nats.go's default
		// 30 s (a 30 s stall in TestClusterChaos when the node leading a
		// stream was killed).
		jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullHeartbeat),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			switch {
			case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
				errors.Is(err, jetstream.ErrStreamNotFound):
				signal(lost, err)
			case errors.Is(err, jetstream.ErrNoHeartbeat), errors.Is(err, nats.ErrNoResponders):
				if ctx.Err() == nil {
					signal(suspect, err)
				}
			}
			if !errors.Is(err, jetstream.ErrNoHeartbeat) || ctx.Err() == nil {
				c.cfg.Logger.Debug("consume", "consumer", c.cfg.Durable, "err", err)
			}
		}))
	if err != nil {
		return fmt.Errorf("infra: consume %s: %w", c.cfg.Durable, err)
	}
	closed := cc.Closed()
	stop := func() { cc.Stop(); <-closed }
	for {
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case err := <-lost:
			stop()
			return err
		case <-closed:
			select {
			case err := <-lost:
				return err
			default:
				return errConsumeEnded
			}
		case err := <-suspect:
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, lerr := c.js.Consumer(lctx, c.cfg.Stream, c.cfg.Durable)
			cancel()
			if errors.Is(lerr, jetstream.ErrConsumerNotFound) || errors.Is(lerr, jetstream.ErrStreamNotFound) {
				stop()
				return fmt.Errorf("%w (noticed by %w)", lerr, err)
			}
			// No responders: the pull request found no consumer leader (a
			// freshly created R3 consumer electing one, a leader lost with its
			// node) and is gone. nats.go pulls again only after two missed
			// heartbeats (30 s), so a batcher or worker would sit idle that
			// long with the consumer there: pull again now (Run resumes).
			if errors.Is(err, nats.ErrNoResponders) {
				stop()
				return err
			}
		}
	}
}

// recover recreates what is missing of the stream and the durable consumer
// after consume stopped for cause.
func (c *Consumer) recover(ctx context.Context, cause error) error {
	log := c.cfg.Logger.With("stream", c.cfg.Stream, "consumer", c.cfg.Durable)
	_, err := c.js.Consumer(ctx, c.cfg.Stream, c.cfg.Durable)
	switch {
	case err == nil:
		// The consumer is there (recreated by a process sharing it, or the
		// subscription ended for another reason): consume again.
		log.Info("consumption stopped; resuming", "cause", cause)
		return nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if _, err := c.keeper.Ensure(ctx, c.cfg.Stream); err != nil {
			return err
		}
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		// As for streams (KeeperConfig.Settle): the server removes a deleted
		// consumer, and its store, after it has told its subscribers.
		if err := c.keeper.Settle(ctx); err != nil {
			return err
		}
	default:
		return fmt.Errorf("infra: look up consumer %s/%s: %w", c.cfg.Stream, c.cfg.Durable, err)
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, c.cfg.Stream, c.cfg.JetStreamConfig())
	if err != nil {
		return fmt.Errorf("infra: recreate consumer %s/%s: %w", c.cfg.Stream, c.cfg.Durable, err)
	}
	c.mu.Lock()
	c.cons = cons
	c.mu.Unlock()
	log.Warn("consumer vanished: recreated it", "cause", cause)
	c.m.ConsumerRecreated.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(
		attribute.String("stream", c.cfg.Stream), attribute.String("consumer", c.cfg.Durable))))
	return nil
}

func (c *Consumer) handle(ctx context.Context, m jetstream.Msg, h Handler) {
	log := c.cfg.Logger
	if md, err := m.Metadata(); err == nil {
		c.keeper.Observe(md.Stream, md.Sequence.Stream)
		if md.NumDelivered > 1 {
			c.m.Redeliveries.Add(ctx, 1, c.attrs)
		}
	}
	ev, err := c.cfg.Decoder.DecodeFrom(m)
	if err != nil {
		c.reject(ctx, m, nil, err)
		return
	}
	err = h(ctx, ev, m)
	switch {
	case err == nil:
		if err := m.Ack(); err != nil {
			log.Warn("ack", "consumer", c.cfg.Durable, "subject", m.Subject(), "err", err)
		}
	case errors.Is(err, ErrDetached):
	case errors.Is(err, ErrPermanent):
		c.reject(ctx, m, ev, err)
	default:
		log.Info("handler failed, will retry", "consumer", c.cfg.Durable, "subject", m.Subject(), "err", err)
		if err := m.NakWithDelay(c.cfg.NakDelay); err != nil {
			log.Warn("nak", "consumer", c.cfg.Durable, "err", err)
		}
	}
}

// reject dead-letters m, answers its senders with an "invalid" result and
// terminates it. The dead-letter copy and results are de-duplicated, so a
// redelivery after a crash between the steps repeats nothing.
func (c *Consumer) reject(ctx context.Context, m jetstream.Msg, ev *events.Event, cause error) {
	reason := events.Reason(cause)
	c.m.Rejected.Add(ctx, 1, metric.WithAttributes(attribute.String("consumer", c.cfg.Durable), attribute.String("reason", reason)))
	log := c.cfg.Logger.With("consumer", c.cfg.Durable, "subject", m.Subject(), "reason", reason)
	log.Warn("rejecting message", "err", cause)
	var stream string
	var seq uint64
	if md, err := m.Metadata(); err == nil {
		stream, seq = md.Stream, md.Sequence.Stream
	}
	if err := DeadLetter(ctx, c.pub, reason, cause, m.Subject(), m.Headers(), m.Data(), stream, seq); err != nil {
		log.Error("dead letter failed; retrying later", "err", err)
		_ = m.NakWithDelay(c.cfg.NakDelay)
		return
	}
	var addrs []events.Address
	if ev != nil {
		addrs = addressesOf(ev)
	} else {
		addrs = events.AddressOf(m.Subject(), m.Data())
	}
	for _, a := range addrs {
		r := events.ErrorResult(a, events.StatusInvalid, cause)
		if _, err := c.pub.Publish(ctx, events.New(c.cfg.Source, r)); err != nil {
			log.Error("error result", "device", a.DeviceID, "err", err)
		}
	}
	if err := m.TermWithReason(reason); err != nil {
		log.Warn("term", "err", err)
	}
}

func addressesOf(ev *events.Event) []events.Address {
	switch p := ev.Data.(type) {
	case *events.DraftReady:
		return []events.Address{{DeviceID: p.DeviceID, SessionID: p.SessionID, Round: p.Round}}
	case *events.VerifyBatch:
		out := make([]events.Address, len(p.Drafts))
		for i, d := range p.Drafts {
			out[i] = events.Address{DeviceID: d.DeviceID, SessionID: d.SessionID, Round: d.Round}
		}
		return out
	}
	return nil
}

// Dead-letter headers added to the original headers of a dead-lettered
// message.
const (
	HeaderDLQReason  = "Sled-Dlq-Reason"
	HeaderDLQError   = "Sled-Dlq-Error"
	HeaderDLQSubject = "Sled-Dlq-Subject"
	HeaderDLQStream  = "Sled-Dlq-Stream"
	HeaderDLQSeq     = "Sled-Dlq-Seq"
)

// DeadLetter copies a message to sled.dlq.<reason> with its original headers
// and data plus the Sled-Dlq-* headers. When stream and seq are known the
// copy is de-duplicated by them.
func DeadLetter(ctx context.Context, p *Publisher, reason string, cause error, subject string, h nats.Header, data []byte, stream string, seq uint64) error {
	if !events.ValidID(reason) {
		reason = "internal"
	}
	m := nats.NewMsg(events.DLQSubject(reason))
	for k, vs := range h {
		if k == jetstream.MsgIDHeader || k == jetstream.MsgTTLHeader || k == "Nats-Expected-Stream" {
			continue
		}
		m.Header[k] = append([]string(nil), vs...)
	}
	m.Header.Set(HeaderDLQReason, reason)
	if cause != nil {
		msg := cause.Error()
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		m.Header.Set(HeaderDLQError, msg)
	}
	m.Header.Set(HeaderDLQSubject, subject)
	var opts []jetstream.PublishOpt
	if stream != "" {
		m.Header.Set(HeaderDLQStream, stream)
		m.Header.Set(HeaderDLQSeq, strconv.FormatUint(seq, 10))
		opts = append(opts, jetstream.WithMsgID("dlq."+stream+"."+strconv.FormatUint(seq, 10)))
	}
	m.Data = data
	_, err := p.PublishMsg(ctx, m, opts...)
	return err
}
