package tests

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
)

// underFault generates prompt i on device i of s, all at once, calls fault once
// every generation has produced a few tokens (and none has finished), and returns
// the results when all have finished. Devices are slowed a little so that the fault
// lands mid-generation; strict mode must never release unverified tokens.
func underFault(t *testing.T, s *services.System, ps []string, fault func()) []textgen.Result {
	t.Helper()
	var mu sync.Mutex
	finished := 0
	progress := make(chan struct{}, len(ps))
	results := make([]textgen.Result, len(ps))
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Signal progress once: after 8 tokens, or when the generation ends
			// sooner (an early failure must not leave the test waiting).
			signal := sync.OnceFunc(func() { progress <- struct{}{} })
			defer signal()
			g := s.Generator(i)
			prompt, _ := g.Model().Tokenize(p, true)
			n := 0
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			results[i], errs[i] = g.Generate(ctx, textgen.Request{Prompt: prompt, MaxTokens: genTokens}, func(c textgen.Chunk) error {
				if n += len(c.Tokens); n >= 8 {
					signal()
				}
				if c.Unverified {
					return errors.New("unverified tokens in strict mode")
				}
				time.Sleep(5 * time.Millisecond)
				return nil
			})
			mu.Lock()
			finished++
			mu.Unlock()
		}()
	}
	deadline := time.After(2 * time.Minute)
	for range ps {
		select {
		case <-progress:
		case <-deadline:
			t.Fatal("generations made no progress in 2 minutes")
		}
	}
	mu.Lock()
	early := finished
	mu.Unlock()
	if early == len(ps) {
		t.Fatal("every generation finished before the fault; slow them down")
	}
	fault()
	wg.Wait()
	for i := range ps {
		if errs[i] != nil {
			t.Fatalf("prompt %q: %v", ps[i], errs[i])
		}
	}
	return results
}

// sameAsCentralized fails t for every result that is not the target's own output.
func sameAsCentralized(t *testing.T, ps []string, got []textgen.Result, want []outcome, what string) (retries, resyncs int) {
	t.Helper()
	for i := range ps {
		retries += got[i].Stats.Retries
		resyncs += got[i].Stats.Resyncs
		g, w := got[i].Tokens, want[i].tokens
		if fmt.Sprint(g) == fmt.Sprint(w) {
			continue
		}
		// A difference is allowed only where the target's top two logits are a
		// near-tie (batched and token-by-token passes are not bit-identical).
		j := 0
		for j < len(g) && j < len(w) && g[j] == w[j] {
			j++
		}
		target := referenceTarget(t)
		prompt, err := target.Tokenize(ps[i], true)
		if err != nil {
			t.Fatal(err)
		}
		mg := margin(t, target, append(prompt, w[:j]...))
		t.Logf("prompt %q after %s diverges from centralized at token %d (got %v, want %v); target logit margin there %.2e",
			ps[i], what, j, g[j:min(j+3, len(g))], w[j:min(j+3, len(w))], mg)
		if mg > nearTie {
			t.Errorf("prompt %q: output after %s differs from centralized with a clear margin %.3f at token %d:\n got %v\nwant %v", ps[i], what, mg, j, g, w)
		}
	}
	return retries, resyncs
}

var (
	refTargetOnce sync.Once
	refTarget     *engine.Model
	refTargetErr  error
)

// referenceTarget is the tiny target model, loaded once per test binary, to
// measure margins with.
func referenceTarget(t *testing.T) *engine.Model {
	t.Helper()
	refTargetOnce.Do(func() {
		refTarget, refTargetErr = engine.LoadModel(testmodels.Path(t, testmodels.Target), engine.ModelOptions{})
	})
	if refTargetErr != nil {
		t.Fatal(refTargetErr)
	}
	return refTarget
}

// reference is the centralized baseline's output for ps.
func reference(t *testing.T, ps []string) []outcome {
	t.Helper()
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Devices: 1})
	defer central.Close()
	return runAll(t, central, ps, genTokens)
}

// TestBatcherCrashMidRun replaces the batcher mid-run, as a crashed batcher's
// successor would take over its durable consumer: nothing is lost and every output
// is still the target's.
func TestBatcherCrashMidRun(t *testing.T) {
	ps := prompts[3:6]
	want := reference(t, ps)
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 3, NoAsync: true,
		Retry: drafter.RetryPolicy{Timeout: 250 * time.Millisecond}})
	got := underFault(t, s, ps, func() {
		s.StopBatcher()
		time.Sleep(time.Second)
		if err := s.StartBatcher(); err != nil {
			t.Error(err)
		}
	})
	retries, _ := sameAsCentralized(t, ps, got, want, "a batcher crash")
	t.Logf("batcher down for 1s: %d retries, outputs identical", retries)
	if retries == 0 {
		t.Fatal("no device noticed the batcher outage")
	}
}

// TestNATSRestartMidRun shuts the embedded NATS server down mid-run and starts it
// again on the same port and store a second later: every client reconnects,
// JetStream keeps its streams and consumers, and every output is still the
// target's.
func TestNATSRestartMidRun(t *testing.T) {
	ps := prompts[6:9]
	want := reference(t, ps)
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 3, NoAsync: true,
		Retry: drafter.RetryPolicy{Timeout: 250 * time.Millisecond}})
	got := underFault(t, s, ps, func() {
		if err := s.RestartNATS(context.Background(), time.Second); err != nil {
			t.Error(err)
		}
	})
	retries, resyncs := sameAsCentralized(t, ps, got, want, "a NATS restart")
	t.Logf("NATS down for 1s: %d retries, %d resyncs, outputs identical", retries, resyncs)
	if retries == 0 {
		t.Fatal("no device noticed the NATS outage")
	}
}
