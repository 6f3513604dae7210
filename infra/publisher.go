package infra

import (
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
}

// DefaultDraftTTL is PublisherConfig.DraftTTL's default.
const DefaultDraftTTL = 30 * time.Second

// Publisher publishes events to JetStream with de-duplication ids and, for
// drafts, a per-message TTL: the one publish path of devices, batchers and
// verifier workers. Safe for concurrent use.
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
// server restart may never be acked).
func (p *Publisher) PublishAsync(ev *events.Event, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	m, o, err := p.encode(ev, opts)
	if err != nil {
		return nil, err
	}
	f, err := p.js.PublishMsgAsync(m, o...)
	if err != nil {
		return nil, fmt.Errorf("infra: publish %s: %w", m.Subject, err)
	}
	return f, nil
}

// PublishMsg publishes an already encoded message.
func (p *Publisher) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := p.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return nil, fmt.Errorf("infra: publish %s: %w", m.Subject, err)
	}
	return ack, nil
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
