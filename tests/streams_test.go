package tests

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/services"
)

// TestResultsStreamDeletedMidRun deletes SLED_RESULTS while three devices
// generate (issue 12: after an anonymous client deleted it every request hung):
// the verifier recreates it, every generation completes, the output is still
// the target's, and the stream is there again afterwards.
func TestResultsStreamDeletedMidRun(t *testing.T) {
	ps := prompts[9:12]
	want := reference(t, ps)
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 3, NoAsync: true,
		Retry: drafter.RetryPolicy{Timeout: 250 * time.Millisecond}})
	ctx := context.Background()
	var deleted time.Time
	began := time.Now()
	got := underFault(t, s, ps, func() {
		deleted = time.Now()
		if err := s.JS().DeleteStream(ctx, infra.StreamResults); err != nil {
			t.Error(err)
		}
	})
	t.Logf("generations done %s after the deletion (%s in all)", time.Since(deleted).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	retries, _ := sameAsCentralized(t, ps, got, want, "SLED_RESULTS' deletion")
	t.Logf("%d retries, outputs identical", retries)
	if !testwait.Eventually(5*time.Second, 50*time.Millisecond, func() bool {
		_, err := s.JS().Stream(ctx, infra.StreamResults)
		return err == nil
	}) {
		t.Fatal("SLED_RESULTS was not recreated")
	}
}

// TestDraftsStreamGoneIsBounded deletes SLED_DRAFTS while no batcher runs to
// recreate it (a device may not): a request ends with an OpenAI-shaped 503 that
// names the cause within the verifier timeout and a publish's retries, instead
// of resending into the void; once a batcher is back it recreates the stream and
// requests are served again.
func TestDraftsStreamGoneIsBounded(t *testing.T) {
	const timeout = time.Second
	s := start(t, services.UpConfig{
		Drafts: []string{testmodels.Path(t, testmodels.Draft4L)}, HTTPAddr: "127.0.0.1:0", VerifierTimeout: timeout,
		Retry: drafter.RetryPolicy{Timeout: 200 * time.Millisecond},
	})
	api := "http://" + s.HTTPAddr()
	post := func() (int, string, time.Duration) {
		st, e, took := complete(t, api, "Once upon a time", 16)
		return st, e.Message, took
	}
	if st, msg, _ := post(); st != http.StatusOK {
		t.Fatalf("before: %d %s", st, msg)
	}
	ctx := context.Background()
	s.StopBatcher()
	if err := s.JS().DeleteStream(ctx, infra.StreamDrafts); err != nil {
		t.Fatal(err)
	}
	st, msg, took := post()
	t.Logf("with no drafts stream: %d %q after %s", st, msg, took.Round(time.Millisecond))
	if st != http.StatusServiceUnavailable || took > timeout+2*time.Second {
		t.Errorf("with no drafts stream: %d after %s, want 503 within %s", st, took, timeout+2*time.Second)
	}
	if !bytes.Contains([]byte(msg), []byte(infra.ErrNoStream.Error())) {
		t.Errorf("the 503 does not name the cause: %q", msg)
	}
	if _, err := s.JS().Stream(ctx, infra.StreamDrafts); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("something other than a batcher recreated SLED_DRAFTS: %v", err)
	}

	// A batcher comes back: it recreates the stream and serves.
	if err := s.StartBatcher(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if !testwait.Eventually(5*time.Second, 50*time.Millisecond, func() bool {
		_, err := s.JS().Stream(ctx, infra.StreamDrafts)
		return err == nil
	}) {
		t.Fatal("the batcher did not recreate SLED_DRAFTS")
	}
	st, msg, took = post()
	t.Logf("after the batcher recreated the stream (%s after its start): %d in %s", time.Since(back).Round(time.Millisecond), st, took.Round(time.Millisecond))
	if st != http.StatusOK {
		t.Fatalf("after the batcher came back: %d %s", st, msg)
	}
}
