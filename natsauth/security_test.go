package natsauth_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testnats"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/natsauth"
)

// secured is testnats.Secured with a connect that can collect the
// connection's asynchronous errors (permission violations).
type secured struct {
	*testnats.Secured
	t *testing.T
}

func startSecured(t *testing.T, withTLS bool) *secured {
	return &secured{testnats.Start(t, withTLS), t}
}

// connect connects as a new credential for id; errs, when not nil, receives
// the connection's asynchronous errors.
func (s *secured) connect(id string, role natsauth.Role, errs chan<- error) (*nats.Conn, jetstream.JetStream) {
	s.t.Helper()
	var opts []nats.Option
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	}
	return s.Connect(s.t, id, role, opts...)
}

// denied waits for a permissions violation naming what on errs.
func denied(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("%s: want a permissions violation, got %v", what, err)
		}
		t.Logf("%s: refused: %v", what, err)
	case <-time.After(3 * time.Second):
		t.Fatalf("%s: allowed (no permissions violation)", what)
	}
}

func draft(device, session string) *events.DraftReady {
	prefix := []int32{1, 15043, 29892, 920}
	return &events.DraftReady{
		DeviceID: device, SessionID: session, Round: 1, Pool: events.DefaultPool,
		PrefixLen: len(prefix), PrefixHash: events.PrefixHash(prefix), Committed: prefix[3:],
		Draft: []int32{2599, 29973}, DraftProbs: []float32{0.9, 0.8},
		VocabFingerprint: "llama:32000:abc", Deadline: time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond),
	}
}

func TestDeviceIsolation(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		name := "plain"
		if withTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) { testDeviceIsolation(t, withTLS) })
	}
}

func testDeviceIsolation(t *testing.T, withTLS bool) {
	s := startSecured(t, withTLS)
	ctx := context.Background()
	url := s.URL()

	// An anonymous client is refused.
	anon, _ := infra.ClientAuth{TLS: s.TLS}.Options()
	if nc, err := nats.Connect(url, append(anon, nats.MaxReconnects(0))...); err == nil {
		nc.Close()
		t.Fatal("anonymous client connected")
	} else {
		t.Logf("anonymous: %v", err)
	}
	if withTLS {
		// Plain text to a TLS-only server is refused too.
		if nc, err := nats.Connect(url, nats.MaxReconnects(0), nats.UserCredentials(filepath.Join(s.Dir, "admin.creds"))); err == nil {
			nc.Close()
			t.Fatal("a client without the CA connected to a TLS server")
		}
	}

	aErrs := make(chan error, 16)
	a, ajs := s.connect("dev-a", natsauth.RoleDevice, aErrs)
	bnc, _ := s.connect("dev-b", natsauth.RoleDevice, nil)
	_, vjs := s.connect("worker-1", natsauth.RoleVerifier, nil)

	// B listens for its results: nothing A does may reach it.
	var mu sync.Mutex
	var bGot []string
	if _, err := bnc.Subscribe(events.ResultSubject("dev-b"), func(m *nats.Msg) {
		mu.Lock()
		bGot = append(bGot, string(m.Data))
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := bnc.Flush(); err != nil {
		t.Fatal(err)
	}

	// A may publish its own drafts (the JetStream ack comes back on its own
	// inbox) and receive its own results from a verifier.
	apub := infra.NewPublisher(ajs, infra.PublisherConfig{})
	if _, err := apub.Publish(ctx, events.New(events.DeviceSource("dev-a"), draft("dev-a", "s1"))); err != nil {
		t.Fatalf("own draft: %v", err)
	}
	own := make(chan *nats.Msg, 1)
	if _, err := a.ChanSubscribe(events.ResultSubject("dev-a"), own); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	vpub := infra.NewPublisher(vjs, infra.PublisherConfig{})
	res := &events.VerifyResult{DeviceID: "dev-a", SessionID: "s1", Round: 1, Status: events.StatusOK, Accepted: 1, Token: 4, BatchID: "b1", BatchSize: 1}
	if _, err := vpub.Publish(ctx, events.New("/sled/verifier/default/worker-1", res)); err != nil {
		t.Fatalf("verifier result: %v", err)
	}
	select {
	case <-own:
	case <-time.After(3 * time.Second):
		t.Fatal("device did not receive its own result")
	}

	// A may not read every subject, B's results or B's inbox.
	for _, subj := range []string{"sled.>", events.ResultSubject("dev-b"), "_INBOX.dev-b.>", events.DraftFilter(events.DefaultPool)} {
		if _, err := a.Subscribe(subj, func(*nats.Msg) {}); err != nil {
			t.Fatal(err)
		}
		_ = a.Flush()
		denied(t, aErrs, "subscribe "+subj)
	}

	// A may not publish drafts as B, nor any result (a forged result for B).
	adminNC, adminJS := s.connect("admin2", natsauth.RoleAdmin, nil)
	_ = adminNC
	if err := a.Publish(events.DraftSubject(events.DefaultPool, "dev-b"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	_ = a.Flush()
	denied(t, aErrs, "publish a draft as dev-b")
	forged := &events.VerifyResult{DeviceID: "dev-b", SessionID: "s9", Round: 1, Status: events.StatusOK, Accepted: 5, Token: 1, BatchID: "x", BatchSize: 1}
	m, err := events.Encode(events.New("/sled/verifier/default/worker-1", forged))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	_ = a.Flush()
	denied(t, aErrs, "publish a result for dev-b")

	// A may not touch the JetStream API: no stream deletion or purge, no
	// consumers, not even stream info.
	for _, api := range []string{"$JS.API.STREAM.DELETE." + infra.StreamResults, "$JS.API.STREAM.PURGE." + infra.StreamDrafts, "$JS.API.STREAM.INFO." + infra.StreamResults} {
		if _, err := a.Request(api, nil, 500*time.Millisecond); err == nil {
			t.Fatalf("%s answered for a device", api)
		}
		denied(t, aErrs, "request "+api)
	}
	// Neither may a verifier delete a stream (only admin destroys data).
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := vjs.DeleteStream(dctx, infra.StreamResults); err == nil {
		t.Fatal("a verifier deleted SLED_RESULTS")
	}
	for _, name := range []string{infra.StreamDrafts, infra.StreamResults} {
		if _, err := adminJS.Stream(ctx, name); err != nil {
			t.Fatalf("stream %s gone: %v", name, err)
		}
	}
	// Nothing of A's reached B, and SLED_DRAFTS holds no draft on B's subject.
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	if len(bGot) != 0 {
		t.Fatalf("device B received %d messages A sent", len(bGot))
	}
	mu.Unlock()
	st, _ := adminJS.Stream(ctx, infra.StreamDrafts)
	if _, err := st.GetLastMsgForSubject(ctx, events.DraftSubject(events.DefaultPool, "dev-b")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a draft on dev-b's subject was stored: %v", err)
	}

	// Revoking A disconnects it and refuses it from then on; B is untouched.
	closed := make(chan struct{})
	a.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := s.Auth.Revoke("dev-a"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("revoked device still connected")
	}
	opts, _ := infra.ClientAuth{Creds: filepath.Join(s.Dir, "dev-a.creds"), TLS: s.TLS}.Options()
	if nc, err := nats.Connect(url, append(opts, nats.MaxReconnects(0))...); err == nil {
		nc.Close()
		t.Fatal("revoked credential connected")
	} else {
		t.Logf("revoked: %v", err)
	}
	if !testwait.Eventually(time.Second, 20*time.Millisecond, bnc.IsConnected) {
		t.Fatal("device B lost its connection when A was revoked")
	}
	// A credential issued after the revocation works.
	s.connect("dev-a", natsauth.RoleDevice, nil)
}

func TestIssueRefusesBadIdentities(t *testing.T) {
	a, err := natsauth.Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []natsauth.Identity{
		{ID: "a.b", Role: natsauth.RoleDevice},
		{ID: "", Role: natsauth.RoleDevice},
		{ID: "ok", Role: "king"},
		{ID: "ok", Role: natsauth.RoleDevice, Pool: "Upper"},
	} {
		if _, err := a.Issue(id); !errors.Is(err, natsauth.ErrBadIdentity) {
			t.Errorf("%+v: %v", id, err)
		}
	}
	if _, err := a.Issue(natsauth.Identity{ID: "x", Role: natsauth.RoleDevice}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(natsauth.Identity{ID: "x", Role: natsauth.RoleVerifier}); !errors.Is(err, natsauth.ErrBadIdentity) {
		t.Errorf("re-issuing a device id as a verifier: %v", err)
	}
	if err := a.Revoke("nobody"); !errors.Is(err, natsauth.ErrUnknownID) {
		t.Errorf("revoke unknown: %v", err)
	}
	// Init again opens the same authority: the record of x survives.
	b, err := natsauth.Init(a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Issued()["x"]; !ok {
		t.Fatal("Init made a new authority over an existing one")
	}
}
