package tests

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/sled-project/sled/textgen"
)

// TestVerifierStoppedMidRun stops the verifier while three devices generate, keeps
// it down past several device timeouts, and brings a fresh one (empty KV cache, the
// same worker name) back: devices time out, resend, resync, and finish with output
// identical to the centralized baseline.
func TestVerifierStoppedMidRun(t *testing.T) {
	ps := prompts[:3]
	want := reference(t, ps)
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L), requantized(t)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 3, NoAsync: true,
		Retry: drafter.RetryPolicy{Timeout: 250 * time.Millisecond}})
	got := underFault(t, s, ps, func() {
		s.StopVerifier()
		time.Sleep(1500 * time.Millisecond) // six device timeouts
		if err := s.StartVerifier(); err != nil {
			t.Error(err)
		}
	})
	retries, resyncs := sameAsCentralized(t, ps, got, want, "the outage")
	t.Logf("after a 1.5s verifier outage: %d retries, %d resyncs, outputs identical", retries, resyncs)
	if retries == 0 || resyncs == 0 {
		t.Fatalf("expected retries and resyncs, got %d and %d", retries, resyncs)
	}
}

// TestFallbackReleasesUnverified runs a device in fallback mode with no verifier:
// after MaxFailures timed-out rounds it releases its own drafts, and the HTTP API
// reports them as unverified.
func TestFallbackReleasesUnverified(t *testing.T) {
	s := start(t, services.UpConfig{
		Drafts: []string{testmodels.Path(t, testmodels.Draft4L)}, HTTPAddr: "127.0.0.1:0",
		Draft: drafter.DraftPolicy{Fixed: true, MinLen: 4, MaxLen: 4},
		Retry: drafter.RetryPolicy{Timeout: 100 * time.Millisecond, MaxFailures: 2, Fallback: true},
	})
	s.StopVerifier()
	body, _ := json.Marshal(map[string]any{"prompt": "Once upon a time", "max_tokens": 12})
	resp, err := http.Post("http://"+s.HTTPAddr()+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
		SLED struct {
			Unverified int      `json:"unverified_tokens"`
			Retries    int      `json:"retries"`
			Spans      [][2]int `json:"unverified_spans"`
		} `json:"sled"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	t.Logf("fallback with no verifier: %q, %d of %d tokens unverified, %d retries, spans %v",
		got.Choices[0].Text, got.SLED.Unverified, got.Usage.CompletionTokens, got.SLED.Retries, got.SLED.Spans)
	if got.SLED.Unverified != 12 || got.Usage.CompletionTokens != 12 || len(got.SLED.Spans) == 0 || got.SLED.Retries < 2 {
		t.Fatalf("expected 12 unverified tokens with spans, got %+v", got.SLED)
	}
	// The released text is the draft model's own greedy text.
	edge, err := drafter.NewEdge(s.Model(testmodels.Path(t, testmodels.Draft4L)), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer edge.Close()
	m := edge.Model()
	prompt, _ := m.Tokenize("Once upon a time", true)
	er, err := edge.Generate(context.Background(), textgen.Request{Prompt: prompt, MaxTokens: 12}, func(textgen.Chunk) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if m.Detokenize(er.Tokens) != got.Choices[0].Text {
		t.Fatalf("released %q, draft model alone gives %q", got.Choices[0].Text, m.Detokenize(er.Tokens))
	}
}

// TestDeviceKilledMidRequest abandons a generation mid-request (its context
// cancelled, the device closed): the server keeps nothing stuck, and other devices
// carry on.
func TestDeviceKilledMidRequest(t *testing.T) {
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 2})
	victim := s.Devices()[0]
	prompt, _ := victim.Model().Tokenize("Once upon a time", true)
	ctx, kill := context.WithCancel(context.Background())
	n := 0
	_, err := victim.Generate(ctx, textgen.Request{Prompt: prompt, MaxTokens: 200}, func(c textgen.Chunk) error {
		if n += len(c.Tokens); n >= 10 {
			kill() // the device dies mid-request
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("killed generation returned %v", err)
	}
	victim.Close()

	// The other device is unaffected.
	other := runOn(t, s.Generators()[1:], prompts[:2], 32)
	for _, o := range other {
		if len(o.tokens) == 0 {
			t.Fatal("surviving device produced nothing")
		}
	}
	// Nothing is left pending in the server: every draft acknowledged, every batch
	// consumed.
	var di *jetstream.ConsumerInfo
	var bi *jetstream.StreamInfo
	idle := testwait.Eventually(5*time.Second, 50*time.Millisecond, func() bool {
		dc, err := s.JS().Consumer(context.Background(), infra.StreamDrafts, "batcher-default")
		if err != nil {
			t.Fatal(err)
		}
		if di, err = dc.Info(context.Background()); err != nil {
			t.Fatal(err)
		}
		bs, err := s.JS().Stream(context.Background(), infra.StreamBatches)
		if err != nil {
			t.Fatal(err)
		}
		if bi, err = bs.Info(context.Background()); err != nil {
			t.Fatal(err)
		}
		return di.NumAckPending == 0 && di.NumPending == 0 && bi.State.Msgs == 0
	})
	if !idle {
		t.Fatalf("server stuck: drafts pending %d, unacked %d, batches stored %d", di.NumPending, di.NumAckPending, bi.State.Msgs)
	}
	t.Logf("server idle: drafts pending %d, unacked %d, batches stored %d; verifier holds %d sessions", di.NumPending, di.NumAckPending, bi.State.Msgs, s.Verifier().Sessions())
}

// TestNoVerifierIsBounded stops every verifier of the pool: a request in flight
// and a new one both end with an OpenAI-shaped 503 within the verifier timeout (and
// not after a round timeout's worth of retries for ever), /readyz says 503 meanwhile,
// and once a verifier is back the device is ready again and serves the target's
// text.
func TestNoVerifierIsBounded(t *testing.T) {
	const timeout = time.Second
	s := start(t, services.UpConfig{
		Drafts: []string{testmodels.Path(t, testmodels.Draft4L)}, HTTPAddr: "127.0.0.1:0", VerifierTimeout: timeout,
		Retry: drafter.RetryPolicy{Timeout: 200 * time.Millisecond},
	})
	api := "http://" + s.HTTPAddr()
	status := func(path string) int {
		r, err := http.Get(api + path)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if st := status("/readyz"); st != http.StatusOK {
		t.Fatalf("/readyz with a verifier: %d", st)
	}
	want := reference(t, []string{"Once upon a time"})

	// The verifier goes; a request sent at once still finds the pool served (the
	// last heartbeat is recent), so it is in flight with nobody to verify it.
	s.StopVerifier()
	st, apiErr, took := complete(t, api, "Once upon a time", 64)
	typ := apiErr.Type
	t.Logf("in flight with no verifier: %d %s after %s", st, typ, took.Round(time.Millisecond))
	if st != http.StatusServiceUnavailable || typ != "service_unavailable_error" || took > timeout+time.Second {
		t.Errorf("the request in flight ended %d %q after %s, want 503 service_unavailable_error within %s", st, typ, took, timeout)
	}
	if st := status("/readyz"); st != http.StatusServiceUnavailable {
		t.Errorf("/readyz with no verifier: %d, want 503", st)
	}
	st, apiErr, took = complete(t, api, "Once upon a time", 8)
	typ = apiErr.Type
	t.Logf("new request with no verifier: %d %s in %s", st, typ, took)
	if st != http.StatusServiceUnavailable || took > timeout {
		t.Errorf("a new request with no verifier: %d after %s, want 503 at once", st, took)
	}

	// A verifier comes back: ready again, and the text is the target's.
	if err := s.StartVerifier(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitFor(t, func() bool { return status("/readyz") == http.StatusOK })
	t.Logf("ready %s after the verifier restarted", time.Since(back).Round(time.Millisecond))
	got := runAll(t, s, []string{"Once upon a time"}, genTokens)
	sameAsCentralized(t, []string{"Once upon a time"}, []textgen.Result{got[0].res}, want, "the recovery")
}
