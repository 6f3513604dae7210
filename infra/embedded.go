// Package infra runs and provisions SLED's event backbone: an embedded NATS
// server with JetStream, the streams and consumers of the event flow, and the
// Publisher, Consumer and ExpiryWatcher helpers the services build on.
//
// Streams (see [Topology]):
//
//	SLED_DRAFTS   sled.draft.>   limits retention, per-message TTL, dedupe by <session>.<round>
//	SLED_BATCHES  sled.batch.>   work-queue retention, dedupe by batch id
//	SLED_RESULTS  sled.result.>  limits retention (devices may replay after a reconnect)
//	SLED_DLQ      sled.dlq.>     dead-letter copies of rejected and expired messages
package infra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/sled-project/sled/natsauth"
)

// EmbeddedConfig configures an in-process nats-server with JetStream. Zero
// fields take the documented defaults.
type EmbeddedConfig struct {
	// ServerName names the server; unique per cluster node (default
	// "sled-<port>").
	ServerName string
	// Host is the client listen address (default 127.0.0.1).
	Host string
	// Port is the client port (default 4222); -1 picks a free port.
	Port int
	// StoreDir is the JetStream store directory (default
	// $TMPDIR/sled-nats).
	StoreDir string
	// MaxPayload is the largest message the server accepts (default 8 MiB,
	// above events.DefaultBatchBytes).
	MaxPayload int32
	// MaxMemory and MaxStore bound JetStream memory and file storage in bytes
	// (default: the server's, a share of RAM and disk).
	MaxMemory, MaxStore int64

	// ClusterName, when not empty, makes this server one node of a cluster:
	// it listens for routes on ClusterHost:ClusterPort (defaults Host and
	// 6222) and connects to Routes (nats-route://host:port URLs). A
	// JetStream cluster needs at least three nodes for R3 streams.
	ClusterName string
	ClusterHost string
	ClusterPort int
	Routes      []string

	// Trust, when set, turns authentication on (NATS operator mode): every
	// client, route-free leaf or device, must present a credential the trust's
	// operator signed (see package natsauth). Nil: no authentication, which is
	// only fit for a loopback listener.
	Trust *natsauth.Trust
	// TLS, when its files are set, makes the client (and leaf node) listener
	// TLS-only.
	TLS TLSFiles

	// LeafPort, when not 0, listens for leaf nodes (edge sites) on
	// Host:LeafPort (-1: any free port).
	LeafPort int
	// LeafRemotes, when set, makes this server a leaf node of a hub: it dials
	// these nats-leaf:// URLs (one or more nodes of the hub cluster) with
	// LeafCreds and joins the hub's SLED account. A leaf node runs without
	// JetStream: its clients reach the hub's streams through it.
	LeafRemotes []string
	// LeafCreds is the leaf's credential on the hub (natsauth.RoleLeaf);
	// required with LeafRemotes when the hub has auth on.
	LeafCreds string

	// ReadyTimeout bounds the wait for the server to accept clients
	// (default 10s).
	ReadyTimeout time.Duration
	// Logger receives the server's log at Info (notices), Warn and Error;
	// nil keeps the server quiet.
	Logger *slog.Logger
	// Debug also forwards the server's debug log to Logger at Debug.
	Debug bool
}

// Embedded is a running in-process nats-server.
type Embedded struct {
	srv *server.Server
	cfg EmbeddedConfig
}

// DefaultPort is the NATS client port used when EmbeddedConfig.Port is 0.
const DefaultPort = 4222

// StartEmbedded starts a nats-server with JetStream in this process and waits
// until it accepts clients (or ctx ends, or ReadyTimeout passes). Call
// Shutdown to stop it.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Port < 0 {
		cfg.Port = server.RANDOM_PORT
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = filepath.Join(os.TempDir(), "sled-nats")
	}
	if cfg.MaxPayload == 0 {
		cfg.MaxPayload = 8 << 20
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "sled-" + strconv.Itoa(cfg.Port)
		if cfg.Port == server.RANDOM_PORT {
			cfg.ServerName = fmt.Sprintf("sled-%d", time.Now().UnixNano())
		}
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("infra: store dir: %w", err)
	}
	leaf := len(cfg.LeafRemotes) > 0
	opts := &server.Options{
		ServerName:         cfg.ServerName,
		Host:               cfg.Host,
		Port:               cfg.Port,
		JetStream:          !leaf,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxMemory: cfg.MaxMemory,
		JetStreamMaxStore:  cfg.MaxStore,
		MaxPayload:         cfg.MaxPayload,
		NoSigs:             true,
		NoLog:              cfg.Logger == nil,
		Debug:              cfg.Debug,
	}
	if cfg.ClusterName != "" {
		if cfg.ClusterHost == "" {
			cfg.ClusterHost = cfg.Host
		}
		if cfg.ClusterPort == 0 {
			cfg.ClusterPort = 6222
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: cfg.ClusterHost, Port: cfg.ClusterPort}
		if len(cfg.Routes) > 0 {
			opts.Routes = server.RoutesFromStr(strings.Join(cfg.Routes, ","))
		}
	}
	if cfg.Trust != nil {
		cfg.Trust.Apply(opts)
	}
	if cfg.TLS.enabled() {
		tc, err := cfg.TLS.serverConfig()
		if err != nil {
			return nil, err
		}
		opts.TLSConfig, opts.TLSVerify = tc, cfg.TLS.CAFile != "" && cfg.TLS.VerifyClients
	}
	if cfg.LeafPort != 0 {
		port := cfg.LeafPort
		if port < 0 {
			port = server.RANDOM_PORT
		}
		opts.LeafNode.Host, opts.LeafNode.Port = cfg.Host, port
		if cfg.TLS.enabled() {
			opts.LeafNode.TLSConfig = opts.TLSConfig
		}
	}
	if leaf {
		remote := &server.RemoteLeafOpts{Credentials: cfg.LeafCreds}
		if cfg.Trust != nil {
			remote.LocalAccount = cfg.Trust.Account()
		}
		for _, u := range cfg.LeafRemotes {
			pu, err := url.Parse(u)
			if err != nil {
				return nil, fmt.Errorf("infra: leaf remote %q: %w", u, err)
			}
			remote.URLs = append(remote.URLs, pu)
		}
		if cfg.TLS.CAFile != "" {
			tc, err := cfg.TLS.ClientConfig()
			if err != nil {
				return nil, err
			}
			remote.TLS, remote.TLSConfig = true, tc
		}
		opts.LeafNode.Remotes = []*server.RemoteLeafOpts{remote}
		opts.LeafNode.ReconnectInterval = time.Second
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("infra: nats-server options: %w", err)
	}
	if cfg.Logger != nil {
		srv.SetLoggerV2(&slogAdapter{l: cfg.Logger.With("component", "nats-server")}, cfg.Debug, false, false)
	}
	srv.Start()
	ready := make(chan bool, 1)
	go func() { ready <- srv.ReadyForConnections(cfg.ReadyTimeout) }()
	select {
	case ok := <-ready:
		if !ok {
			srv.Shutdown()
			return nil, fmt.Errorf("infra: nats-server not ready after %v", cfg.ReadyTimeout)
		}
	case <-ctx.Done():
		srv.Shutdown()
		return nil, ctx.Err()
	}
	if !leaf && !srv.JetStreamEnabled() {
		srv.Shutdown()
		return nil, errors.New("infra: JetStream did not start")
	}
	return &Embedded{srv: srv, cfg: cfg}, nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Addr is the client listener's address (useful with Port -1).
func (e *Embedded) Addr() net.Addr { return e.srv.Addr() }

// LeafAddr is the leaf node listener's address ("" without LeafPort).
func (e *Embedded) LeafAddr() string {
	if e.cfg.LeafPort == 0 {
		return ""
	}
	v, err := e.srv.Varz(nil)
	if err != nil || v.LeafNode.Port == 0 {
		return ""
	}
	return net.JoinHostPort(e.cfg.Host, strconv.Itoa(v.LeafNode.Port))
}

// Server exposes the underlying server, e.g. for monitoring.
func (e *Embedded) Server() *server.Server { return e.srv }

// Shutdown stops the server and waits until it has stopped. It is safe to
// call more than once.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// slogAdapter sends nats-server logs to slog.
type slogAdapter struct{ l *slog.Logger }

func (a *slogAdapter) Noticef(f string, v ...any) { a.l.Info(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Warnf(f string, v ...any)   { a.l.Warn(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Fatalf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Errorf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Debugf(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Tracef(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
