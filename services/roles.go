package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/telemetry"
	"github.com/sled-project/sled/verifier"
)

// Standalone roles, each connecting to a NATS URL: what `sled verifier`, `sled
// batcher` and `sled drafter` run on separate hosts. Each provisions the streams it
// needs (idempotent) and returns when ctx ends.

// Conn is a role's NATS connection settings.
type Conn struct {
	// URL of the NATS server. Default nats://127.0.0.1:4222.
	URL string
	// Name of the connection, as the server shows it.
	Name string
	// Replicas of provisioned streams (3 on a three-node cluster). Default 1.
	Replicas int
	// Auth is the role's credential and TLS settings. Default: anonymous,
	// plain text.
	Auth infra.ClientAuth
	// ProvisionWait bounds the retries of provisioning at start, while a
	// cluster has no JetStream leader yet (each attempt waits up to 3 s).
	// Default 1 minute.
	ProvisionWait time.Duration
}

// ErrConnectionClosed is returned by a role whose NATS connection closed for
// good (the client gave up: e.g. its credential was revoked and every server
// refuses it), so a supervisor restarts it rather than leave it unready.
var ErrConnectionClosed = errors.New("services: NATS connection closed")

// untilClosed returns a context that ends when ctx does or when nc closes for
// good, with ErrConnectionClosed (and the connection's last error) as its cause.
func untilClosed(ctx context.Context, nc *nats.Conn) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithCancelCause(ctx)
	nc.SetClosedHandler(func(c *nats.Conn) {
		cancel(fmt.Errorf("%w: %v", ErrConnectionClosed, c.LastError()))
	})
	if nc.IsClosed() {
		cancel(fmt.Errorf("%w: %v", ErrConnectionClosed, nc.LastError()))
	}
	return cctx, func() { cancel(context.Canceled) }
}

// roleResult is what a role returns after its loop ended with err under ctx
// (from untilClosed): the connection's closing when that ended it, else err
// without context.Canceled.
func roleResult(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrConnectionClosed) {
		return cause
	}
	return ignoreCanceled(err)
}

// dial connects and, for a service (provision true) or an anonymous device,
// provisions the streams. A device with a credential may not touch the
// JetStream API: it relies on the services to have made the streams.
func (c Conn) dial(ctx context.Context, fallbackName string, provision bool) (*nats.Conn, jetstream.JetStream, error) {
	if c.URL == "" {
		c.URL = nats.DefaultURL
	}
	if c.Name == "" {
		c.Name = fallbackName
	}
	opts, err := c.Auth.Options()
	if err != nil {
		return nil, nil, err
	}
	nc, js, err := infra.Connect(ctx, c.URL, c.Name, opts...)
	if err != nil {
		return nil, nil, err
	}
	if !provision && c.Auth.Creds != "" {
		return nc, js, nil
	}
	wait := c.ProvisionWait
	if wait <= 0 {
		wait = time.Minute
	}
	deadline := time.Now().Add(wait)
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := infra.ProvisionTopology(actx, js, infra.Topology{Replicas: c.Replicas})
		cancel()
		if err == nil {
			return nc, js, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) || errors.Is(err, nats.ErrPermissionViolation) {
			nc.Close()
			return nil, nil, err
		}
		slog.Info("provisioning streams: retrying (no JetStream leader yet?)", "err", err)
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// VerifierRole configures RunVerifier.
type VerifierRole struct {
	Conn   Conn
	Target string // target model file (required)
	Pool   string
	Name   string // worker name (required)
	// ModelName is the id the target is served under (announced in heartbeats,
	// which devices name the model by). Default: the target file's name without
	// its extension.
	ModelName string
	Verifier  verifier.Config
	// Budget is the worker's goodput policy (verifier.WorkerConfig.Budget).
	Budget goodput.Policy
	Logger *slog.Logger
	// Telemetry receives spans and metrics (default none).
	Telemetry *telemetry.Telemetry
}

// RunVerifier runs one verifier worker until ctx ends.
func RunVerifier(ctx context.Context, r VerifierRole) error {
	m, err := engine.LoadModel(r.Target, engine.ModelOptions{})
	if err != nil {
		return err
	}
	defer m.Close()
	nc, js, err := r.Conn.dial(ctx, "sled-verifier-"+r.Name, true)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := untilClosed(ctx, nc)
	defer stop()
	ew, err := infra.WatchExpiries(ctx, nc, js, infra.ExpiryConfig{Logger: r.Logger})
	if err != nil {
		return err
	}
	defer ew.Stop()
	v, err := verifier.New(m, r.Verifier)
	if err != nil {
		return err
	}
	defer v.Close()
	w, err := verifier.NewWorker(v, nc, js, verifier.WorkerConfig{Pool: r.Pool, Name: r.Name, Model: r.ModelName, Budget: r.Budget, Logger: r.Logger, Telemetry: r.Telemetry})
	if err != nil {
		return err
	}
	return roleResult(ctx, w.Run(ctx))
}

// BatcherRole configures RunBatcher.
type BatcherRole struct {
	Conn Conn
	// Batcher configures the batcher, Telemetry included.
	Batcher batcher.Config
}

// RunBatcher runs a batcher until ctx ends.
func RunBatcher(ctx context.Context, r BatcherRole) error {
	nc, js, err := r.Conn.dial(ctx, "sled-batcher", true)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := untilClosed(ctx, nc)
	defer stop()
	b, err := batcher.New(nc, js, r.Batcher)
	if err != nil {
		return err
	}
	return roleResult(ctx, b.Run(ctx))
}

// DrafterRole configures RunDrafter.
type DrafterRole struct {
	Conn  Conn
	Draft string // draft model file (required)
	// TargetVocab, when set, is a model file with the target's tokenizer
	// (the target itself, or any file that shares its vocabulary), loaded
	// vocabulary-only: a draft with another tokenizer then drafts across
	// vocabularies (drafter.Config.TargetVocab).
	TargetVocab string
	// Device configures the device, Telemetry included.
	Device   drafter.Config
	HTTPAddr string // device API address (default 127.0.0.1:8080)
	// APIKeys, when set, are the bearer keys the API wants (httpapi.Config).
	APIKeys []string
	// Ready, if set, is called with the API's address once it serves.
	Ready  func(addr string)
	Logger *slog.Logger
}

// RunDrafter runs one device with its HTTP API until ctx ends.
func RunDrafter(ctx context.Context, r DrafterRole) error {
	m, err := engine.LoadModel(r.Draft, engine.ModelOptions{})
	if err != nil {
		return err
	}
	defer m.Close()
	if r.TargetVocab != "" {
		tv, err := engine.LoadModel(r.TargetVocab, engine.ModelOptions{VocabOnly: true})
		if err != nil {
			return fmt.Errorf("services: target vocabulary: %w", err)
		}
		defer tv.Close()
		r.Device.TargetVocab = tv
	}
	nc, js, err := r.Conn.dial(ctx, "sled-device-"+r.Device.DeviceID, false)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := untilClosed(ctx, nc)
	defer stop()
	d, err := drafter.New(ctx, m, nc, js, r.Device)
	if err != nil {
		return err
	}
	defer d.Close()
	if r.HTTPAddr == "" {
		r.HTTPAddr = "127.0.0.1:8080"
	}
	api := httpapi.New(httpapi.Config{Devices: []httpapi.Device{{Name: d.ID(), Generator: d, Model: d.Config().ModelName}}, APIKeys: r.APIKeys, Logger: r.Logger, Telemetry: r.Device.Telemetry})
	return roleResult(ctx, serve(ctx, r.HTTPAddr, api, r.Ready))
}

// serve runs h on addr until ctx ends, then shuts it down gracefully.
func serve(ctx context.Context, addr string, h http.Handler, ready func(string)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("services: listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if ready != nil {
		ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
