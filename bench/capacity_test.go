package bench

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/modelcache"
)

// TestCapacityQuick runs `sled bench capacity --quick` end to end (real batcher,
// verifier, NATS and centralized server on the smollm-135m-shape target) and checks
// the JSON report.
func TestCapacityQuick(t *testing.T) {
	testmodels.Path(t, testmodels.Target)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := Run(ctx, "capacity", Options{Quick: true, Pair: modelcache.PairTiny, ModelDir: testmodels.Dir(), MaxDevices: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capacity --quick took %s", time.Since(start))
	path := filepath.Join(t.TempDir(), "cap.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Experiment string `json:"experiment"`
		Result     struct {
			SLED        *int     `json:"sled_capacity"`
			Centralized *int     `json:"centralized_capacity"`
			Ratio       *float64 `json:"ratio"`
			Trials      []struct {
				System     string `json:"system"`
				Mismatches int    `json:"mismatches"`
				Rounds     int    `json:"rounds"`
			} `json:"trials"`
		} `json:"result"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	res := got.Result
	if got.Experiment != "capacity" || res.SLED == nil || res.Centralized == nil || res.Ratio == nil {
		t.Fatalf("missing fields in %s", b)
	}
	t.Logf("SLED %d, centralized %d, ratio %.2f", *res.SLED, *res.Centralized, *res.Ratio)
	if *res.SLED <= 0 || *res.Centralized <= 0 {
		t.Errorf("capacities must be > 0: SLED %d, centralized %d", *res.SLED, *res.Centralized)
	}
	if *res.Centralized > 0 && math.Abs(*res.Ratio-float64(*res.SLED)/float64(*res.Centralized)) > 1e-9 {
		t.Errorf("ratio %v != %d/%d", *res.Ratio, *res.SLED, *res.Centralized)
	}
	rounds, mism := 0, 0
	for _, tr := range res.Trials {
		rounds += tr.Rounds
		mism += tr.Mismatches
	}
	// The verifier must reach the planned verdicts (a rare logit near-tie aside).
	if rounds == 0 || float64(mism) > 0.05*float64(rounds) {
		t.Errorf("%d mismatched verdicts in %d SLED rounds", mism, rounds)
	}
}
