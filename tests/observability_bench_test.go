package tests

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"

	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/telemetry"
)

// BenchmarkTelemetryOverhead measures what tracing and metrics cost: the same
// workload (two devices, 4-block and 3-block drafts, every prompt, 64 tokens
// each) runs on a fresh `sled up` system with telemetry off (the default: no
// exporter, no metrics) and on (every round traced and exported through the
// batch processor with the OTLP/HTTP exporter to a local collector that
// discards the data; metrics on a Prometheus endpoint), alternating
// off/on, on/off pairs to cancel drift. It reports tokens/s of each and the
// overhead of "on" in percent; next to each "on" run, a run with metrics only
// (sled up's default: Prometheus endpoint, no span exporter) and a run with metrics
// and one round in ten traced (--trace-sample 0.1).
//
//	go test -run '^$' -bench TelemetryOverhead -benchtime 1x ./tests/
func BenchmarkTelemetryOverhead(b *testing.B) {
	const pairs = 8
	drafts := []string{testmodels.Path(b, testmodels.Draft4L), testmodels.Path(b, testmodels.Draft3L)}
	// run returns tokens/s and CPU seconds of this process per 1000 tokens
	// (less sensitive than wall time to other load on the machine, though
	// llama.cpp's spinning threads tie it to wall time too).
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer sink.Close()
	collector := strings.TrimPrefix(sink.URL, "http://")
	run := func(on, traces bool, ratio float64) (float64, float64) {
		ctx := context.Background()
		var tel *telemetry.Telemetry
		if on && !traces {
			var err error
			tel, err = telemetry.Setup(ctx, telemetry.Config{MetricsAddr: "127.0.0.1:0"})
			if err != nil {
				b.Fatal(err)
			}
			defer tel.Shutdown(ctx)
		} else if on {
			// The production exporter, OTLP over HTTP (protobuf), to a local
			// collector that discards what it receives.
			exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(collector), otlptracehttp.WithInsecure())
			if err != nil {
				b.Fatal(err)
			}
			tel, err = telemetry.Setup(ctx, telemetry.Config{SpanExporter: exp, SampleRatio: ratio, MetricsAddr: "127.0.0.1:0"})
			if err != nil {
				b.Fatal(err)
			}
			defer tel.Shutdown(ctx)
		}
		s := start(b, services.UpConfig{Drafts: drafts, Devices: 2, Telemetry: tel})
		defer s.Close()
		c0 := cpuTime()
		t0 := time.Now()
		out := runAll(b, s, prompts, genTokens)
		el := time.Since(t0)
		cpu := cpuTime() - c0
		n := 0
		for _, o := range out {
			n += len(o.tokens)
		}
		if on {
			getMetrics(b, tel.MetricsAddr()) // one scrape, as Prometheus would
		}
		return float64(n) / el.Seconds(), 1000 * cpu.Seconds() / float64(n)
	}
	var offs, ons, cpuOff, cpuOn, mets, cpuMet, samp, cpuSamp []float64
	for range b.N {
		for p := range pairs {
			order := []bool{false, true}
			if p%2 == 1 {
				order = []bool{true, false}
			}
			for _, on := range order {
				if on {
					// metrics only (sled up's default), and metrics with one
					// round in ten traced, next to full telemetry
					tps, cpu := run(true, false, 0)
					mets, cpuMet = append(mets, tps), append(cpuMet, cpu)
					tps, cpu = run(true, true, 0.1)
					samp, cpuSamp = append(samp, tps), append(cpuSamp, cpu)
				}
				tps, cpu := run(on, true, 1)
				if on {
					ons, cpuOn = append(ons, tps), append(cpuOn, cpu)
				} else {
					offs, cpuOff = append(offs, tps), append(cpuOff, cpu)
				}
			}
		}
	}
	mean := func(x []float64) float64 {
		s := 0.0
		for _, v := range x {
			s += v
		}
		return s / float64(len(x))
	}
	sd := func(x []float64) float64 {
		m, s := mean(x), 0.0
		for _, v := range x {
			s += (v - m) * (v - m)
		}
		return math.Sqrt(s / float64(len(x)-1))
	}
	mOff, mOn := mean(offs), mean(ons)
	b.ReportMetric(mOff, "off_tok/s")
	b.ReportMetric(mOn, "on_tok/s")
	b.ReportMetric(100*(mOff-mOn)/mOff, "overhead_%")
	b.Logf("off: mean %.0f tok/s, sd %.0f (%.1f%%), range %.0f-%.0f, runs %v", mOff, sd(offs), 100*sd(offs)/mOff, slices.Min(offs), slices.Max(offs), fmtAll(offs))
	b.Logf("on:  mean %.0f tok/s, sd %.0f (%.1f%%), range %.0f-%.0f, runs %v", mOn, sd(ons), 100*sd(ons)/mOn, slices.Min(ons), slices.Max(ons), fmtAll(ons))
	b.Logf("overhead %.1f%% (mean), %.1f%% (median)", 100*(mOff-mOn)/mOff, 100*(median(offs)-median(ons))/median(offs))
	b.Logf("CPU s per 1000 tokens: off median %.3f (range %.3f-%.3f), on median %.3f (range %.3f-%.3f): %+.1f%%",
		median(cpuOff), slices.Min(cpuOff), slices.Max(cpuOff), median(cpuOn), slices.Min(cpuOn), slices.Max(cpuOn),
		100*(median(cpuOn)-median(cpuOff))/median(cpuOff))
	b.ReportMetric(100*(median(cpuOn)-median(cpuOff))/median(cpuOff), "cpu_overhead_%")
	b.Logf("metrics only: mean %.0f tok/s (%+.1f%% vs off), runs %v; CPU s per 1000 tokens median %.3f (%+.1f%%)",
		mean(mets), 100*(mean(offs)-mean(mets))/mean(offs), fmtAll(mets), median(cpuMet), 100*(median(cpuMet)-median(cpuOff))/median(cpuOff))
	b.Logf("metrics + 10%% of rounds traced: mean %.0f tok/s (%+.1f%% vs off), runs %v; CPU s per 1000 tokens median %.3f (%+.1f%%)",
		mean(samp), 100*(mean(offs)-mean(samp))/mean(offs), fmtAll(samp), median(cpuSamp), 100*(median(cpuSamp)-median(cpuOff))/median(cpuOff))
	b.ReportMetric(100*(median(cpuSamp)-median(cpuOff))/median(cpuOff), "cpu_overhead_sampled_%")
}

// cpuTime is this process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fmtAll(x []float64) string {
	s := ""
	for _, v := range x {
		s += fmt.Sprintf(" %.0f", v)
	}
	return s
}

func median(x []float64) float64 {
	y := slices.Clone(x)
	slices.Sort(y)
	if len(y)%2 == 1 {
		return y[len(y)/2]
	}
	return (y[len(y)/2-1] + y[len(y)/2]) / 2
}
