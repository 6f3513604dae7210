package services

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/natsauth"
)

// TestRevokedDrafterExits: a device whose credential is revoked is refused by
// every server; its role returns ErrConnectionClosed (so a supervisor restarts
// it with a new credential) instead of serving an API that can never be ready.
func TestRevokedDrafterExits(t *testing.T) {
	dir := t.TempDir()
	a, err := natsauth.Init(filepath.Join(dir, "auth"))
	if err != nil {
		t.Fatal(err)
	}
	trust, err := natsauth.LoadTrust(a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	srv, err := infra.StartEmbedded(ctx, infra.EmbeddedConfig{Port: -1, StoreDir: filepath.Join(dir, "js"), Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go trust.Watch(wctx, srv.Server, 100*time.Millisecond, nil)
	admin := filepath.Join(dir, "admin.creds")
	dev := filepath.Join(dir, "dev-1.creds")
	if err := a.IssueFile(natsauth.Identity{ID: "admin", Role: natsauth.RoleAdmin}, admin); err != nil {
		t.Fatal(err)
	}
	if err := a.IssueFile(natsauth.Identity{ID: "dev-1", Role: natsauth.RoleDevice}, dev); err != nil {
		t.Fatal(err)
	}
	opts, _ := infra.ClientAuth{Creds: admin}.Options()
	nc, js, err := infra.Connect(ctx, srv.ClientURL(), "admin", opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := infra.ProvisionTopology(ctx, js, infra.Topology{Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	done := make(chan error, 1)
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	go func() {
		done <- RunDrafter(rctx, DrafterRole{
			Conn:  Conn{URL: srv.ClientURL(), Auth: infra.ClientAuth{Creds: dev}},
			Draft: testmodels.Path(t, testmodels.Draft4L), HTTPAddr: "127.0.0.1:0",
			Device: drafter.Config{DeviceID: "dev-1"}, Ready: func(addr string) { ready <- addr },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("drafter ended before serving: %v", err)
	}
	revoked := time.Now()
	if err := a.Revoke("dev-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrConnectionClosed) {
			t.Fatalf("revoked drafter returned %v, want ErrConnectionClosed", err)
		}
		t.Logf("revoked drafter exited after %s: %v", time.Since(revoked).Round(time.Millisecond), err)
	case <-time.After(20 * time.Second):
		t.Fatal("revoked drafter still running after 20 s")
	}
}
