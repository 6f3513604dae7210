package infra

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sled-project/sled/telemetry"
)

// ErrNoStream is wrapped by the errors of a publish that no stream took: none
// is bound to the subject (the stream was deleted, or never provisioned) or
// none answered (JetStream unavailable). Check with errors.Is.
var ErrNoStream = errors.New("infra: no stream took the message")

// ErrUnknownStream is returned by StreamKeeper.Ensure for a stream whose
// configuration the keeper does not know.
var ErrUnknownStream = errors.New("infra: no known configuration for the stream")

// AdvisoryStreamDeleted is the subject prefix of JetStream's stream deletion
// advisories: <prefix>.<stream>.
const AdvisoryStreamDeleted = "$JS.EVENT.ADVISORY.STREAM.DELETED"

// KeeperConfig configures a StreamKeeper. Zero fields take the defaults.
type KeeperConfig struct {
	// Streams are the configurations the keeper recreates streams from
	// (default: the SLED streams, Topology{}.Streams()). Learn replaces them
	// with what the server reports.
	Streams []jetstream.StreamConfig
	// Logger logs every recreation at Warn (default slog.Default()).
	Logger *slog.Logger
	// Telemetry counts recreations, sled.infra.stream_recreated by stream
	// (default: none).
	Telemetry *telemetry.Telemetry
	// Settle is how long the keeper waits, having found a stream (or a
	// consumer: Consumer.Run) gone, before it recreates it (default
	// DefaultSettle). The server reports a stream deleted, and tells its
	// consumers so, before it has removed the stream's store: a stream
	// recreated within that window loses its new store and never acknowledges
	// a message again.
	Settle time.Duration
}

// DefaultSettle is KeeperConfig.Settle's default: nats-server's own note on
// that window (PR 3039) is "less than 2 secs in most cases"; 1 s lost a
// recreated stream in about 1 run of 20 on a loaded 2-core machine.
const DefaultSettle = 2 * time.Second

// StreamKeeper recreates streams that vanish while the system runs (deleted by
// an operator or a client, or lost with a server's store) from their known
// configurations. The roles that manage streams (batcher, verifier) share one
// among their Publisher and Consumers; devices, which may not use the
// JetStream API, have none and only report (ErrNoStream). Safe for concurrent
// use.
type StreamKeeper struct {
	js     jetstream.JetStream
	log    *slog.Logger
	m      *telemetry.Metrics
	settle time.Duration

	ensure sync.Map // stream name -> *sync.Mutex: one recreation of a stream at a time

	mu      sync.Mutex
	streams map[string]jetstream.StreamConfig
	order   []string // names, in the order given then learned

	floors sync.Map // stream name -> *atomic.Uint64: the highest sequence seen
}

// NewStreamKeeper returns a keeper that recreates streams on js.
func NewStreamKeeper(js jetstream.JetStream, cfg KeeperConfig) *StreamKeeper {
	if cfg.Streams == nil {
		cfg.Streams = Topology{}.Streams()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	k := &StreamKeeper{js: js, log: cfg.Logger, m: cfg.Telemetry.Or().Metrics, settle: cfg.Settle, streams: map[string]jetstream.StreamConfig{}}
	for _, sc := range cfg.Streams {
		k.set(sc)
	}
	return k
}

func (k *StreamKeeper) set(sc jetstream.StreamConfig) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.streams[sc.Name]; !ok {
		k.order = append(k.order, sc.Name)
	}
	k.streams[sc.Name] = sc
}

// Learn reads the server's configuration of each named stream (default: every
// known stream) and keeps it, so that a recreated stream gets what it had (a
// stream provisioned with three replicas comes back with three). A stream the
// server does not have keeps its known configuration; a name not known yet is
// added. The first other error is returned, after trying every name.
func (k *StreamKeeper) Learn(ctx context.Context, names ...string) error {
	if len(names) == 0 {
		k.mu.Lock()
		names = append([]string(nil), k.order...)
		k.mu.Unlock()
	}
	var first error
	for _, name := range names {
		s, err := k.js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			if first == nil {
				first = fmt.Errorf("infra: learn stream %s: %w", name, err)
			}
			continue
		}
		sc := s.CachedInfo().Config
		// The server's own metadata (_nats.*: its version, the API level the
		// stream needs) is set again by whichever server creates it.
		if sc.Metadata != nil {
			sc.Metadata = maps.Clone(sc.Metadata)
			maps.DeleteFunc(sc.Metadata, func(key, _ string) bool { return strings.HasPrefix(key, "_nats.") })
			if len(sc.Metadata) == 0 {
				sc.Metadata = nil
			}
		}
		k.set(sc)
		k.Observe(name, s.CachedInfo().State.LastSeq)
	}
	return first
}

// Observe records that the named stream holds (or held) sequence seq: a
// recreated stream starts above the highest sequence observed, so that an
// acknowledgement still in flight for a message of the vanished stream
// cannot acknowledge a new message that took its sequence. Consumers observe
// every delivery and publishers every ack.
func (k *StreamKeeper) Observe(name string, seq uint64) {
	if seq == 0 {
		return
	}
	v, ok := k.floors.Load(name)
	if !ok {
		v, _ = k.floors.LoadOrStore(name, new(atomic.Uint64))
	}
	f := v.(*atomic.Uint64)
	for {
		cur := f.Load()
		if seq <= cur || f.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// floor is the highest sequence observed of the named stream.
func (k *StreamKeeper) floor(name string) uint64 {
	if v, ok := k.floors.Load(name); ok {
		return v.(*atomic.Uint64).Load()
	}
	return 0
}

// Config returns the known configuration of the named stream.
func (k *StreamKeeper) Config(name string) (jetstream.StreamConfig, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	sc, ok := k.streams[name]
	return sc, ok
}

// StreamFor returns the name of the known stream one of whose subjects
// matches subject (NATS wildcards * and >).
func (k *StreamKeeper) StreamFor(subject string) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, name := range k.order {
		for _, filter := range k.streams[name].Subjects {
			if SubjectMatches(filter, subject) {
				return name, true
			}
		}
	}
	return "", false
}

// Ensure makes sure the named stream exists. When the server does not have
// it, Ensure waits for the deletion to settle (KeeperConfig.Settle), looks
// again, and creates it from its known configuration (its first sequence
// above every one observed), logs the recreation at
// Warn and counts it (sled.infra.stream_recreated, label stream), and reports
// true. A stream that exists is left as it is: Ensure never updates a
// configuration. Several processes may race to recreate a stream; each counts
// the recreation it did.
func (k *StreamKeeper) Ensure(ctx context.Context, name string) (bool, error) {
	sc, ok := k.Config(name)
	if !ok {
		return false, fmt.Errorf("%w %s", ErrUnknownStream, name)
	}
	mu, _ := k.ensure.LoadOrStore(name, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	for settled := false; ; settled = true {
		_, err := k.js.Stream(ctx, name)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return false, fmt.Errorf("infra: stream %s: %w", name, err)
		}
		if settled {
			break
		}
		if err := k.Settle(ctx); err != nil {
			return false, err
		}
	}
	if f := k.floor(name); f >= sc.FirstSeq {
		sc.FirstSeq = f + 1
	}
	if _, err := k.js.CreateStream(ctx, sc); err != nil {
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return false, nil // another process recreated it first
		}
		return false, fmt.Errorf("infra: recreate stream %s: %w", name, err)
	}
	k.log.Warn("stream vanished: recreated it from its known configuration", "stream", name,
		"subjects", sc.Subjects, "replicas", sc.Replicas, "storage", sc.Storage.String(), "first_seq", sc.FirstSeq)
	k.m.StreamRecreated.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(attribute.String("stream", name))))
	return true, nil
}

// Settle waits KeeperConfig.Settle, or until ctx ends (then it returns ctx's
// error): what Ensure waits between finding a stream gone and recreating it.
func (k *StreamKeeper) Settle(ctx context.Context) error {
	t := time.NewTimer(k.settle)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// EnsureFor is Ensure for the known stream bound to subject. It returns the
// stream's name ("" when no known stream is bound to subject).
func (k *StreamKeeper) EnsureFor(ctx context.Context, subject string) (string, bool, error) {
	name, ok := k.StreamFor(subject)
	if !ok {
		return "", false, fmt.Errorf("%w bound to %s", ErrUnknownStream, subject)
	}
	created, err := k.Ensure(ctx, name)
	return name, created, err
}

// Watch recreates a known stream as soon as the server announces its deletion
// (AdvisoryStreamDeleted), until ctx ends or stop is called. Advisories are
// core NATS messages, lost while disconnected: the Publisher and Consumer
// paths recreate streams on their own, Watch only makes it prompt (a publish
// to a subject that core subscribers also hear, like a device's results,
// would otherwise notice only when its ack times out).
func (k *StreamKeeper) Watch(ctx context.Context, nc *nats.Conn) (stop func(), err error) {
	sub, err := nc.Subscribe(AdvisoryStreamDeleted+".*", func(m *nats.Msg) {
		var adv struct {
			Stream string `json:"stream"`
		}
		if json.Unmarshal(m.Data, &adv) != nil || adv.Stream == "" {
			return
		}
		if _, ok := k.Config(adv.Stream); !ok {
			return
		}
		go func() { // not on the connection's dispatch goroutine
			ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if _, err := k.Ensure(ectx, adv.Stream); err != nil && ectx.Err() == nil {
				k.log.Warn("stream deleted: recreating it failed", "stream", adv.Stream, "err", err)
			}
		}()
	})
	if err != nil {
		return nil, fmt.Errorf("infra: subscribe stream advisories: %w", err)
	}
	stop = func() { _ = sub.Unsubscribe() }
	context.AfterFunc(ctx, stop)
	return stop, nil
}

// Select returns the configurations of the named streams of the topology,
// in the order named: e.g. the streams a role uses, for its StreamKeeper.
func (t Topology) Select(names ...string) []jetstream.StreamConfig {
	all := t.Streams()
	var out []jetstream.StreamConfig
	for _, name := range names {
		for _, sc := range all {
			if sc.Name == name {
				out = append(out, sc)
			}
		}
	}
	return out
}

// SubjectMatches reports whether subject matches the NATS subject filter
// (tokens separated by dots; * matches one token, a final > one or more).
func SubjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, ft := range f {
		if ft == ">" {
			return i == len(f)-1 && len(s) > i
		}
		if i >= len(s) || (ft != "*" && ft != s[i]) {
			return false
		}
	}
	return len(f) == len(s)
}
