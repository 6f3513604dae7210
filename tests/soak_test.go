package tests

import (
	"context"
	"testing"
	"time"

	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/internal/testmodels"
)

// TestSoakShort is CI's soak (docs/benchmarks.md has the 200-device, 5-minute
// one): 20 devices and 20 clients for 20 s with a 900 KB prompt every 5 s. No
// request fails, goroutines stay flat under load and come back once idle, and
// the resident set returns near where it started.
func TestSoakShort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := bench.RunSoak(ctx, bench.SoakConfig{
		ModelDir: testmodels.Dir(), Devices: 20, Clients: 20, MaxTokens: 16,
		Duration: 20 * time.Second, Idle: engine.DefaultIdleRelease + 5*time.Second, BigEvery: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d requests (%d failed), %d big; RSS start %.1f, peak %.1f, idle %.1f MB; goroutines %d -> %d; p50/p99 %.0f/%.0f ms",
		r.Requests, r.Errors, r.BigRequests, r.StartRSSMB, r.PeakRSSMB, r.IdleRSSMB, r.StartGoroutines, r.IdleGoroutines, r.P50ms, r.P99ms)
	if r.Requests == 0 || r.Errors != 0 || r.BigRequests == 0 {
		t.Fatalf("%d requests, %d failed, %d big prompts", r.Requests, r.Errors, r.BigRequests)
	}
	// Goroutines under load: the second half no higher than the first.
	var first, second int
	var loads []int
	for _, s := range r.Samples {
		if s.Phase == "load" {
			loads = append(loads, s.Goroutines)
		}
	}
	for i, g := range loads {
		if i < len(loads)/2 {
			first = max(first, g)
		} else {
			second = max(second, g)
		}
	}
	if second > first+10 {
		t.Errorf("goroutines grew under steady load: at most %d in the first half, %d in the second", first, second)
	}
	if r.IdleGoroutines > r.StartGoroutines+5 {
		t.Errorf("%d goroutines once idle, %d at the start", r.IdleGoroutines, r.StartGoroutines)
	}
	if r.IdleRSSMB > r.StartRSSMB+40 {
		t.Errorf("idle RSS %.1f MB, %.1f MB above the start's %.1f", r.IdleRSSMB, r.IdleRSSMB-r.StartRSSMB, r.StartRSSMB)
	}
	if r.Releases == 0 {
		t.Error("the engine never released idle memory")
	}
}
