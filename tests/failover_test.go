package tests

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
	"github.com/sled-project/sled/verifier"
)

// TestWorkerFailover runs two verifier workers, lets sessions settle on them, then
// stops one for good: the batcher stops routing to it once its heartbeats stop, its
// sessions move to the survivor (which rebuilds them by resync), and every output is
// still the target's.
func TestWorkerFailover(t *testing.T) {
	ps := prompts[:4]
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Devices: 1})
	want := runAll(t, central, ps, genTokens)
	central.Close()

	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 4, NoAsync: true,
		Retry: drafter.RetryPolicy{Timeout: 300 * time.Millisecond}})
	// A second worker in the same pool, with its own verifier.
	v2, err := verifier.New(s.Target, verifier.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	w2, err := verifier.NewWorker(v2, s.Conn, s.JS, verifier.WorkerConfig{Name: "worker-2"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopW2 := context.WithCancel(context.Background())
	w2done := make(chan struct{})
	go func() { defer close(w2done); w2.Run(wctx) }()
	t.Cleanup(func() { stopW2(); <-w2done; v2.Close() })
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Batcher.Workers()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("batcher sees workers %v", s.Batcher.Workers())
		}
		time.Sleep(20 * time.Millisecond)
	}

	var wg sync.WaitGroup
	results := make([]textgen.Result, len(ps))
	errs := make([]error, len(ps))
	progress := make(chan struct{}, len(ps))
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := s.Generator(i)
			prompt, _ := g.Model().Tokenize(p, true)
			n := 0
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			results[i], errs[i] = g.Generate(ctx, textgen.Request{Prompt: prompt, MaxTokens: genTokens}, func(c textgen.Chunk) error {
				if n += len(c.Tokens); n >= 8 && n-len(c.Tokens) < 8 {
					progress <- struct{}{}
				}
				time.Sleep(10 * time.Millisecond) // keep generations running past the failure
				return nil
			})
		}()
	}
	for range ps {
		<-progress
	}
	before := v2.Stats().Drafts
	s.StopVerifier() // worker-1 is gone for good
	wg.Wait()
	for i := range ps {
		if errs[i] != nil {
			t.Fatalf("prompt %q: %v", ps[i], errs[i])
		}
		if fmt.Sprint(results[i].Tokens) != fmt.Sprint(want[i].tokens) {
			t.Errorf("prompt %q: output differs from centralized after failover", ps[i])
		}
	}
	st := s.Batcher.Stats()
	t.Logf("failover: batcher moved %d sessions; worker-2 verified %d drafts before, %d after; resyncs %d", st.Moved, before, v2.Stats().Drafts-before, v2.Stats().Resyncs)
	if st.Moved == 0 || v2.Stats().Drafts == before {
		t.Fatalf("no session moved to the surviving worker (moved %d)", st.Moved)
	}
	if alive := s.Batcher.Workers(); len(alive) != 1 || alive[0] != "worker-2" {
		t.Fatalf("batcher still sees %v", alive)
	}
}
