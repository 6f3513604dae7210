// Package testnats starts a real embedded NATS server with SLED's
// authentication on (and optionally TLS), for tests.
package testnats

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testcert"
	"github.com/sled-project/sled/natsauth"
)

// Secured is a running server in operator mode with the SLED streams
// provisioned (in memory) by an admin connection.
type Secured struct {
	Auth   *natsauth.Authority
	Server *infra.Embedded
	// TLS is what a client checks the server with (the test CA), when TLS is on.
	TLS infra.TLSFiles
	// Dir is the test's directory: credentials from Creds are written there.
	Dir string
	// Admin and JS are the admin connection and its JetStream context.
	Admin *nats.Conn
	JS    jetstream.JetStream
}

// Start starts a Secured server (TLS-only with a CA made for the test when
// withTLS) that rereads the authority's account.jwt every 100 ms, so
// revocations apply quickly. Everything stops when the test ends.
func Start(t testing.TB, withTLS bool) *Secured {
	t.Helper()
	dir := t.TempDir()
	a, err := natsauth.Init(filepath.Join(dir, "auth"))
	if err != nil {
		t.Fatal(err)
	}
	trust, err := natsauth.LoadTrust(a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := infra.EmbeddedConfig{Port: -1, StoreDir: filepath.Join(dir, "js"), Trust: trust}
	s := &Secured{Auth: a, Dir: dir}
	if withTLS {
		f, err := testcert.Make(dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = infra.TLSFiles{CAFile: f.CA, CertFile: f.Cert, KeyFile: f.Key}
		s.TLS = infra.TLSFiles{CAFile: f.CA}
	}
	srv, err := infra.StartEmbedded(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	s.Server = srv
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	go trust.Watch(ctx, srv.Server, 100*time.Millisecond, nil)
	s.Admin, s.JS = s.Connect(t, "admin", natsauth.RoleAdmin)
	if err := infra.ProvisionTopology(context.Background(), s.JS, infra.Topology{Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	return s
}

// URL is the server's client URL.
func (s *Secured) URL() string { return s.Server.ClientURL() }

// Creds issues a new credential for id in role (default pool) and returns its
// file, Dir/<id>.creds.
func (s *Secured) Creds(t testing.TB, id string, role natsauth.Role) string {
	t.Helper()
	path := filepath.Join(s.Dir, id+".creds")
	if err := s.Auth.IssueFile(natsauth.Identity{ID: id, Role: role}, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// Connect connects under a new credential for id (no reconnects: a refusal
// closes it); opts are added last. The connection closes when the test ends.
func (s *Secured) Connect(t testing.TB, id string, role natsauth.Role, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	all, err := infra.ClientAuth{Creds: s.Creds(t, id, role), TLS: s.TLS}.Options()
	if err != nil {
		t.Fatal(err)
	}
	nc, js, err := infra.Connect(context.Background(), s.URL(), id, append(append(all, nats.MaxReconnects(0)), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, js
}
