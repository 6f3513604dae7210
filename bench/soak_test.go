package bench

import (
	"bytes"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestSoakSummary(t *testing.T) {
	r := &SoakResult{Config: SoakConfig{Duration: 4 * time.Second}.withDefaults()}
	// RSS rises 1 MB/s over the load's second half (t >= 2 s), then drops idle.
	for i, rss := range []float64{70, 90, 80, 81, 82, 75} {
		phase := "load"
		if i == 5 {
			phase = "idle"
		}
		r.Samples = append(r.Samples, SoakSample{T: float64(i), Phase: phase, RSSMB: rss, Goroutines: 80 + i, Requests: 2, Errors: i % 2})
	}
	r.summarize([]float64{0.3, 0.1, 0.2, 0.4}, 3)
	if r.PeakRSSMB != 90 || r.LoadEndRSSMB != 82 || r.IdleRSSMB != 75 || r.IdleGoroutines != 85 {
		t.Fatalf("summary %+v", r)
	}
	if math.Abs(r.SlopeMBPerMin-60) > 1e-9 {
		t.Fatalf("slope %v MB/min, want 60", r.SlopeMBPerMin)
	}
	if r.Requests != 12 || r.Errors != 3 || r.BigRequests != 3 || r.P50ms != 300 || r.P99ms != 400 {
		t.Fatalf("counts and latency %+v", r)
	}
	var csv bytes.Buffer
	if err := r.WriteCSV(&csv); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(csv.String()), "\n")
	if len(lines) != 7 || !strings.HasPrefix(lines[0], "t_s,phase,rss_mb") || !strings.HasPrefix(lines[6], "5.00,idle,75.00") {
		t.Fatalf("csv:\n%s", csv.String())
	}
	path := filepath.Join(t.TempDir(), "soak.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSoakJSON(path)
	if err != nil || len(back.Samples) != 6 || back.SlopeMBPerMin != r.SlopeMBPerMin || back.Config.Duration != r.Config.Duration {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if ps, err := back.Plot(t.TempDir()); err != nil || len(ps) != 2 {
		t.Fatalf("plot: %v %v", ps, err)
	}
}

func TestResidentBytes(t *testing.T) {
	if n := ResidentBytes(); n == 0 && runtime.GOOS == "linux" {
		t.Fatal("no VmRSS on Linux")
	}
}
