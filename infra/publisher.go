package infra

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
)

// PublisherConfig configures a Publisher. Zero fields take the defaults.
type PublisherConfig struct {
	// DraftTTL is the per-message TTL (Nats-TTL header) of drafts: a draft
	// nobody consumed in time is removed from the stream and never
	// delivered. The TTL is shortened to the draft's deadline when that is
	// sooner, and never below the server's minimum of 1s. Default 30s.
	DraftTTL time.Duration
	// Keeper, when set, recreates a stream that vanished: a publish that no
	// stream took (no responders, or an ack that never came while the
	// keeper finds the subject's stream gone) has the keeper recreate the
	// stream bound to the subject (StreamKeeper.Ensure) and is sent once
	// more. The roles that manage streams (batcher, verifier) set it.
	// Without one (devices, which may not use the JetStream API) a publish
	// only reports: its error wraps ErrNoStream.
	Keeper *StreamKeeper
}

// DefaultDraftTTL is PublisherConfig.DraftTTL's default.
const DefaultDraftTTL = 30 * time.Second

// Publisher publishes events to JetStream with de-duplication ids and, for
// drafts, a per-message TTL: the one publish path of devices, batchers and
// verifier workers. A publish no stream takes fails in bounded time (the
// client's retries of no responders, about 0.5s; the context's deadline or
// the JetStream default of 5s for an ack) with an error wrapping ErrNoStream,
// or, with a Keeper, recreates the stream and is retried once. Safe for
// concurrent use.
type Publisher struct {
	js  jetstream.JetStream
	cfg PublisherConfig
}

// NewPublisher returns a Publisher on js.
func NewPublisher(js jetstream.JetStream, cfg PublisherConfig) *Publisher {
	if cfg.DraftTTL == 0 {
		cfg.DraftTTL = DefaultDraftTTL
	}
	return &Publisher{js: js, cfg: cfg}
}

// Publish encodes ev (filling its id and time) and publishes it on its
// payload's subject with Nats-Msg-Id set to the payload's MsgID, and a TTL
// for drafts. It returns once the stream has stored it (or recognised it as
// a duplicate: PubAck.Duplicate). opts are added to the publish options.
func (p *Publisher) Publish(ctx context.Context, ev *events.Event, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	m, o, err := p.encode(ev, opts)
	if err != nil {
		return nil, err
	}
	return p.PublishMsg(ctx, m, o...)
}

// encode encodes ev and returns it with its publish options: the message id,
// a TTL for drafts, then opts.
func (p *Publisher) encode(ev *events.Event, opts []jetstream.PublishOpt) (*nats.Msg, []jetstream.PublishOpt, error) {
	m, err := events.Encode(ev)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrEncode, err)
	}
	o := []jetstream.PublishOpt{jetstream.WithMsgID(ev.Data.MsgID())}
	if d, ok := ev.Data.(*events.DraftReady); ok {
		o = append(o, jetstream.WithMsgTTL(p.draftTTL(d)))
	}
	return m, append(o, opts...), nil
}

// ErrEncode wraps the encoder's error when Publish or PublishAsync is given an
// event that does not encode (nothing was sent; sending it again cannot help).
var ErrEncode = errors.New("infra: event does not encode")

// PublishAsync is Publish without waiting: it encodes ev and starts its publish
// with the same message id (and TTL for drafts), and returns the future of the
// stream's ack. The caller bounds its wait on the future (a publish caught by a
// server restart may never be acked), best with Await.
func (p *Publisher) PublishAsync(ev *events.Event, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	m, o, err := p.encode(ev, opts)
	if err != nil {
		return nil, err
	}
	f, err := p.js.PublishMsgAsync(m, o...)
	if err != nil {
		return nil, p.wrap(m.Subject, err)
	}
	return f, nil
}

// PublishMsg publishes an already encoded message.
func (p *Publisher) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := p.send(ctx, m, opts)
	if err != nil && ctx.Err() == nil && p.recreated(ctx, m.Subject, err) {
		ack, err = p.send(ctx, m, opts)
	}
	if err != nil {
		return nil, p.wrap(m.Subject, err)
	}
	p.observe(ack)
	return ack, nil
}

// Retries of a publish that no stream answered, as the JetStream client
// makes them (against a leader election's blip).
const (
	noStreamRetries   = jetstream.DefaultPubRetryAttempts
	noStreamRetryWait = jetstream.DefaultPubRetryWait
)

// send publishes m once it is stored, retrying no responders like the client
// does, but giving up with the no-responders error (not the context's) when
// ctx would end before the next try: a caller whose deadline is shorter than
// the client's retries learns that no stream took the message, not only that
// time ran out.
func (p *Publisher) send(ctx context.Context, m *nats.Msg, opts []jetstream.PublishOpt) (*jetstream.PubAck, error) {
	opts = append(opts[:len(opts):len(opts)], jetstream.WithRetryAttempts(0))
	for try := 0; ; try++ {
		ack, err := p.js.PublishMsg(ctx, m, opts...)
		if !noStream(err) || try == noStreamRetries {
			return ack, err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < noStreamRetryWait {
			return nil, err
		}
		t := time.NewTimer(noStreamRetryWait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
	}
}

// observe tells the Keeper the sequence a stream stored a message at.
func (p *Publisher) observe(ack *jetstream.PubAck) {
	if p.cfg.Keeper != nil && ack != nil {
		p.cfg.Keeper.Observe(ack.Stream, ack.Sequence)
	}
}

// Await waits until the stream has stored the message of every future (from
// PublishAsync), for at most timeout (0: as long as ctx allows), and returns
// the first failure. With a Keeper, a message no stream took, or one still
// unacked at the timeout whose stream the keeper finds gone, is published once
// more (synchronously, within another timeout) after the keeper recreated its
// stream. A message no stream took fails with an error wrapping ErrNoStream.
func (p *Publisher) Await(ctx context.Context, timeout time.Duration, futures ...jetstream.PubAckFuture) error {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	var again []*nats.Msg // messages to publish once more, their streams recreated
	var cause error       // why the first of them failed
	fail := func(m *nats.Msg, err error) error {
		if ctx.Err() == nil && p.recreated(ctx, m.Subject, err) {
			again = append(again, m)
			cause = cmp.Or(cause, err)
			return nil
		}
		return p.wrap(m.Subject, err)
	}
	timedOut := false
	for _, f := range futures {
		if !timedOut {
			select {
			case ack := <-f.Ok():
				p.observe(ack)
				continue
			case err := <-f.Err():
				if err := fail(f.Msg(), err); err != nil {
					return err
				}
				continue
			case <-expired:
				timedOut = true
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Past the timeout, this future and the later ones are stored, failed
		// or still pending: look without waiting.
		select {
		case ack := <-f.Ok():
			p.observe(ack)
		case err := <-f.Err():
			if err := fail(f.Msg(), err); err != nil {
				return err
			}
		default:
			if err := fail(f.Msg(), fmt.Errorf("no ack within %s: %w", timeout, context.DeadlineExceeded)); err != nil {
				return err
			}
		}
	}
	return p.again(ctx, timeout, again, cause)
}

// again publishes msgs once more, within timeout (0: the JetStream default).
func (p *Publisher) again(ctx context.Context, timeout time.Duration, msgs []*nats.Msg, cause error) error {
	if len(msgs) == 0 {
		return nil
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	for _, m := range msgs {
		ack, err := p.send(ctx, m, nil) // the headers carry the id and TTL
		if err != nil {
			return p.wrap(m.Subject, fmt.Errorf("%w (after recreating its stream on %w)", err, cause))
		}
		p.observe(ack)
	}
	return nil
}

// recreated reports whether, err being a publish's failure to subject, the
// Keeper found the subject's stream gone and recreated it (or another process
// did meanwhile), so that the publish is worth sending once more.
func (p *Publisher) recreated(ctx context.Context, subject string, err error) bool {
	k := p.cfg.Keeper
	if k == nil || !(noStream(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) {
		return false
	}
	name, created, kerr := k.EnsureFor(ctx, subject)
	if kerr != nil {
		k.log.Warn("publish failed and its stream could not be recreated", "subject", subject, "stream", name, "err", err, "recreate_err", kerr)
		return false
	}
	// A stream that exists after no responders was just recreated by someone
	// else (a deleted stream's subject has no responders; a stream that
	// exists answers): worth one more try too. An ack timeout on a stream
	// that exists is a slow server, not a missing stream.
	return created || noStream(err)
}

// noStream reports whether err says that no stream answered the publish.
func noStream(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// wrap names the subject in a publish error, and ErrNoStream when no stream
// answered.
func (p *Publisher) wrap(subject string, err error) error {
	if noStream(err) {
		return fmt.Errorf("%w: publish %s: %w", ErrNoStream, subject, err)
	}
	return fmt.Errorf("infra: publish %s: %w", subject, err)
}

func (p *Publisher) draftTTL(d *events.DraftReady) time.Duration {
	ttl := p.cfg.DraftTTL
	if !d.Deadline.IsZero() {
		if until := time.Until(d.Deadline); until < ttl {
			ttl = until
		}
	}
	ttl = ttl.Round(time.Second)
	if ttl < time.Second {
		ttl = time.Second
	}
	return ttl
}
