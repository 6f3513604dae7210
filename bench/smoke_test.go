package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/internal/testmodels"
)

func TestSmoke(t *testing.T) {
	if os.Getenv("SLED_BENCH_SMOKE") == "" {
		t.Skip("set SLED_BENCH_SMOKE=1")
	}
	ctx := context.Background()
	t0 := time.Now()
	tgt, err := SynthTarget(CacheDir(), "smollm-135m", "F16", testmodels.Path(t, testmodels.Target))
	if err != nil {
		t.Fatal(err)
	}
	t.Log("synth", time.Since(t0))
	e, err := NewEnv(ctx, EnvConfig{Target: tgt, AcceptTarget: testmodels.Path(t, testmodels.Target), AcceptDraft: testmodels.Path(t, testmodels.Draft4L)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	t.Log("env", time.Since(t0), filepath.Base(tgt), e.Acceptance.Summary(drafter.DraftPolicy{}))
	for _, n := range []int{4, 16} {
		p, _ := LookupProfile("rpi4b")
		m, err := e.RunSLED(ctx, Trial{Devices: n, Profile: p, Duration: 3 * time.Second, Batch: batcher.Policy{Size: 16, MaxWait: 20 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("sled %d: %.1f tok/s min %.1f rounds %d acc %.2f len %.2f batch %.1f mism %d fail %d round %+v verify %.1f queue %.1f",
			n, m.TokensPerSec, m.MinPerDevice, m.Rounds, m.MeanAccepted, m.MeanDraftLen, m.MeanBatch, m.Mismatches, m.Failures, m.RoundMs, m.VerifyMs, m.QueueMs)
		c, err := e.RunCentralized(ctx, Trial{Devices: n, Duration: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("central %d: %.1f tok/s min %.1f mism %d", n, c.TokensPerSec, c.MinPerDevice, c.Mismatches)
	}
	t.Log("total", time.Since(t0))
}
