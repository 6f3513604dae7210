package tests

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testnats"
	"github.com/sled-project/sled/natsauth"
)

// TestNATSCredsWithPython: a device credential from the authority works with
// another language's NATS client (nats-py, pinned in pyclients/requirements.txt)
// under the same permissions: its own drafts stored through JetStream, every
// other subject refused (tests/pyclients/natscreds.py holds the assertions).
func TestNATSCredsWithPython(t *testing.T) {
	py := pythonClients(t)
	ns := testnats.Start(t, false)
	ctx := context.Background()
	dev, js := ns.Creds(t, "dev-py", natsauth.RoleDevice), ns.JS
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, py, "pyclients/natscreds.py", ns.URL(), dev, "dev-py", "dev-other").CombinedOutput()
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
