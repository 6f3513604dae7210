package tests

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testcert"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/natsauth"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/telemetry"
)

// TestAuthEndToEnd runs `sled up` with NATS auth and TLS on: every role and
// device under its own credential. A rogue device with a valid credential of its
// own forges results for the others and publishes drafts in another device's
// name all through the run; the forged results reach nobody, its drafts are
// rejected as an identity mismatch (an error result to it alone, and
// sled_events_rejected_total{reason="identity"}), and every output is still the
// target's.
func TestAuthEndToEnd(t *testing.T) {
	ps := prompts[:4]
	want := reference(t, ps)

	dir := t.TempDir()
	certs, err := testcert.Make(dir)
	if err != nil {
		t.Fatal(err)
	}
	authDir := filepath.Join(dir, "auth")
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Config{MetricsAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(ctx)
	s := start(t, services.UpConfig{
		Drafts:  []string{testmodels.Path(t, testmodels.Draft4L)},
		Devices: 2, AuthDir: authDir, Telemetry: tel,
		NATS: infra.EmbeddedConfig{TLS: infra.TLSFiles{CAFile: certs.CA, CertFile: certs.Cert, KeyFile: certs.Key}},
	})
	victim := s.Devices()[0].ID()
	for _, id := range []string{victim, s.Devices()[1].ID(), "batcher-default", "worker-1", "sled-admin"} {
		if _, err := os.Stat(filepath.Join(authDir, id+".creds")); err != nil {
			t.Fatalf("credential of %s: %v", id, err)
		}
	}

	// Without the CA or a credential nobody gets in.
	if nc, err := nats.Connect(s.URL(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("anonymous plain-text client connected")
	}
	if nc, err := nats.Connect(s.URL(), nats.RootCAs(certs.CA), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("anonymous TLS client connected")
	}

	// The rogue device: a credential of its own, from the same authority.
	a, err := natsauth.Open(authDir)
	if err != nil {
		t.Fatal(err)
	}
	rogueCreds := filepath.Join(dir, "rogue.creds")
	if err := a.IssueFile(natsauth.Identity{ID: "rogue", Role: natsauth.RoleDevice}, rogueCreds); err != nil {
		t.Fatal(err)
	}
	var violations atomic.Int64
	opts, err := infra.ClientAuth{Creds: rogueCreds, TLS: infra.TLSFiles{CAFile: certs.CA}}.Options()
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) { violations.Add(1) }))
	rogue, rjs, err := infra.Connect(ctx, s.URL(), "rogue", opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	answers := make(chan *nats.Msg, 64)
	if _, err := rogue.ChanSubscribe(events.ResultSubject("rogue"), answers); err != nil {
		t.Fatal(err)
	}
	_ = rogue.Flush()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pub := infra.NewPublisher(rjs, infra.PublisherConfig{})
		// The attack starts with the run (a run of the tiny pair can end
		// within the first interval) and goes on every 50 ms until it ends.
		for i := 0; ; i++ {
			if i > 0 {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
			// A forged verdict for the victim: denied by the server.
			forged := &events.VerifyResult{DeviceID: victim, SessionID: "s1", Round: uint64(i + 1), Status: events.StatusOK, Accepted: 5, Token: 1, BatchID: "forged", BatchSize: 1}
			if m, err := events.Encode(events.New("/sled/verifier/default/worker-1", forged)); err == nil {
				_ = rogue.PublishMsg(m)
			}
			// A draft in the victim's name on the rogue's own subject: stored,
			// then rejected by the batcher.
			prefix := []int32{1, 2}
			d := &events.DraftReady{
				DeviceID: victim, SessionID: "rogue-s", Round: uint64(i + 1), Pool: events.DefaultPool,
				PrefixLen: len(prefix), PrefixHash: events.PrefixHash(prefix), Committed: prefix[1:],
				Draft: []int32{3}, DraftProbs: []float32{1}, VocabFingerprint: "x",
			}
			m, err := events.Encode(events.New(events.DeviceSource("rogue"), d))
			if err != nil {
				t.Error(err)
				return
			}
			m.Subject = events.DraftSubject(events.DefaultPool, "rogue")
			_, _ = pub.PublishMsg(ctx, m)
		}
	}()
	got := runAll(t, s, ps, genTokens)
	close(stop)
	wg.Wait()
	for i := range ps {
		if got[i].res.Stats.Unverified != 0 {
			t.Errorf("prompt %q: %d unverified tokens", ps[i], got[i].res.Stats.Unverified)
		}
	}
	for i := range ps {
		if !engineEqual(got[i].tokens, want[i].tokens) {
			t.Errorf("prompt %q: output under attack differs from the target's:\n got %v\nwant %v", ps[i], got[i].tokens, want[i].tokens)
		}
	}
	// The server reports a violation asynchronously (the connection's error handler).
	if !testwait.Eventually(5*time.Second, 10*time.Millisecond, func() bool { return violations.Load() > 0 }) {
		t.Fatal("the server reported no permission violation for the forged results")
	}
	// The rogue's drafts were answered, to it alone, with an identity error.
	select {
	case m := <-answers:
		ev, err := events.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		r := ev.Data.(*events.VerifyResult)
		if r.Status != events.StatusInvalid || r.Reason != "identity" || r.DeviceID != "rogue" {
			t.Fatalf("answer to the rogue: %+v", r)
		}
		t.Logf("rogue told: %s", r.Error)
	case <-time.After(5 * time.Second):
		t.Fatal("the rogue's drafts got no error result")
	}
	// Revoking the rogue on the authority disconnects it from the running
	// system (sled up rereads account.jwt), and the devices serve on.
	closed := make(chan struct{})
	rogue.SetClosedHandler(func(*nats.Conn) { close(closed) })
	rogue.SetReconnectHandler(nil)
	revoked := time.Now()
	if err := a.Revoke("rogue"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
		t.Logf("rogue disconnected %s after its revocation", time.Since(revoked).Round(time.Millisecond))
	case <-time.After(6 * time.Second):
		if rogue.IsConnected() {
			t.Fatal("revoked rogue still connected after 6 s")
		}
	}
	after := runAll(t, s, ps[:1], genTokens)
	if !engineEqual(after[0].tokens, want[0].tokens) {
		t.Errorf("after the revocation: output differs from the target's")
	}
	m := getMetrics(t, tel.MetricsAddr())
	if n := m.sum("sled_events_rejected_total", `reason="identity"`); n == 0 {
		t.Fatal(`sled_events_rejected_total{reason="identity"} is 0`)
	} else {
		t.Logf("%d server permission violations, %v drafts rejected as identity mismatches, outputs = target's", violations.Load(), n)
	}
}
