package services

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testnats"
	"github.com/sled-project/sled/natsauth"
)

// TestRevokedDrafterExits: a device whose credential is revoked is refused by
// every server; its role returns ErrConnectionClosed (so a supervisor restarts
// it with a new credential) instead of serving an API that can never be ready.
func TestRevokedDrafterExits(t *testing.T) {
	ns := testnats.Start(t, false)
	ctx := context.Background()
	dev := ns.Creds(t, "dev-1", natsauth.RoleDevice)
	ready := make(chan string, 1)
	done := make(chan error, 1)
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	go func() {
		done <- RunDrafter(rctx, DrafterRole{
			Conn:  Conn{URL: ns.URL(), Auth: infra.ClientAuth{Creds: dev}},
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
	if err := ns.Auth.Revoke("dev-1"); err != nil {
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
