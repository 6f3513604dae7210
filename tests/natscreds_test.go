package tests

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/natsauth"
)

// TestNATSCredsWithPython: a device credential from the authority works with
// another language's NATS client (nats-py, pinned in pyclients/requirements.txt)
// under the same permissions: its own drafts stored through JetStream, every
// other subject refused (tests/pyclients/natscreds.py holds the assertions).
func TestNATSCredsWithPython(t *testing.T) {
	py := pythonClients(t)
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
	admin, dev := filepath.Join(dir, "admin.creds"), filepath.Join(dir, "dev-py.creds")
	if err := a.IssueFile(natsauth.Identity{ID: "admin", Role: natsauth.RoleAdmin}, admin); err != nil {
		t.Fatal(err)
	}
	if err := a.IssueFile(natsauth.Identity{ID: "dev-py", Role: natsauth.RoleDevice}, dev); err != nil {
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
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, py, "pyclients/natscreds.py", srv.ClientURL(), dev, "dev-py", "dev-other").CombinedOutput()
	t.Logf("natscreds.py:\n%s", out)
	if err != nil || !strings.Contains(string(out), "\nok\n") {
		t.Fatalf("nats-py with a SLED credential: %v", err)
	}
	// What it stored is on its own subject only.
	st, err := js.Stream(ctx, infra.StreamDrafts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(ctx, events.DraftSubject(events.DefaultPool, "dev-py")); err != nil {
		t.Fatalf("the Python device's draft is not in SLED_DRAFTS: %v", err)
	}
	if _, err := st.GetLastMsgForSubject(ctx, events.DraftSubject(events.DefaultPool, "dev-other")); err == nil {
		t.Fatal("a draft on another device's subject was stored")
	}
}
