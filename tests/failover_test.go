package tests

import (
	"context"
	"testing"
	"time"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/verifier"
)

// TestWorkerFailover runs two verifier workers, lets sessions settle on them, then
// stops one for good: the batcher stops routing to it once its heartbeats stop, its
// sessions move to the survivor (which rebuilds them by resync), and every output is
// still the target's.
func TestWorkerFailover(t *testing.T) {
	ps := prompts[:4]
	want := reference(t, ps)

	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 4, NoAsync: true,
		Retry: drafter.RetryPolicy{Timeout: 300 * time.Millisecond}})
	// A second worker in the same pool, with its own verifier.
	v2, err := verifier.New(s.Target(), verifier.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	w2, err := verifier.NewWorker(v2, s.Conn(), s.JS(), verifier.WorkerConfig{Name: "worker-2"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopW2 := context.WithCancel(context.Background())
	w2done := make(chan struct{})
	go func() { defer close(w2done); w2.Run(wctx) }()
	t.Cleanup(func() { stopW2(); <-w2done; v2.Close() })
	if !testwait.Eventually(5*time.Second, 20*time.Millisecond, func() bool { return len(s.Batcher().Workers()) >= 2 }) {
		t.Fatalf("batcher sees workers %v", s.Batcher().Workers())
	}

	var before uint64 // drafts worker-2 had verified when worker-1 died
	held := 0         // sessions worker-1 held then
	got := underFault(t, s, ps, func() {
		before = v2.Stats().Drafts
		held = s.Verifier().Sessions()
		s.StopVerifier() // worker-1 is gone for good
	})
	sameAsCentralized(t, ps, got, want, "failover")
	st := s.Batcher().Stats()
	t.Logf("failover: worker-1 held %d sessions; batcher moved %d sessions; worker-2 verified %d drafts before, %d after; resyncs %d", held, st.Moved, before, v2.Stats().Drafts-before, v2.Stats().Resyncs)
	// Sessions go to workers by rendezvous hashing: with four sessions, worker-1
	// holds none about one run in sixteen, and then nothing has to move.
	if held > 0 && (st.Moved == 0 || v2.Stats().Drafts == before) {
		t.Fatalf("worker-1 held %d sessions, but none moved to the surviving worker (moved %d)", held, st.Moved)
	}
	// The batcher drops worker-1 once its heartbeats are overdue; when worker-1
	// held nothing the texts can be done before that.
	alive := func() bool { a := s.Batcher().Workers(); return len(a) == 1 && a[0] == "worker-2" }
	if !testwait.Eventually(5*time.Second, 20*time.Millisecond, alive) {
		t.Fatalf("batcher still sees %v", s.Batcher().Workers())
	}
}
