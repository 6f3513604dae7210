package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
)

// BenchmarkUpModes runs `sled up`'s three modes one after another in one process
// on the shared test models: three devices (4-block, 3-block and Q8_0 4-block
// drafts), every device generating the same prompts concurrently, and reports
// tokens/s per device and in all, with acceptance for SLED.
//
//	go test -run '^$' -bench UpModes -benchtime 1x ./tests/
//
// Everything shares this machine's cores: simulated devices draft on the same CPU
// the verifier runs on, so SLED's device-side work is not free here as it is on
// real edge devices.
func BenchmarkUpModes(b *testing.B) {
	drafts := []string{testmodels.Path(b, testmodels.Draft4L), testmodels.Path(b, testmodels.Draft3L), requantized(b)}
	ps := prompts[:6]
	var table []string
	for range b.N {
		table = table[:0]
		for _, mode := range []string{services.ModeCentralized, services.ModeSLED, services.ModeEdge} {
			s := start(b, services.UpConfig{Mode: mode, Drafts: drafts, Devices: 3})
			type dev struct {
				tokens, acc, drafted int
				el                   time.Duration
			}
			devs := make([]dev, len(s.Generators()))
			t0 := time.Now()
			done := make(chan int, len(s.Generators()))
			for i := range s.Generators() {
				go func() {
					st := time.Now()
					for _, o := range runOn(b, s.Generators()[i:i+1], ps, genTokens) {
						devs[i].tokens += len(o.tokens)
						devs[i].acc += o.res.Stats.Accepted
						devs[i].drafted += o.res.Stats.Drafted
					}
					devs[i].el = time.Since(st)
					done <- i
				}()
			}
			for range s.Generators() {
				<-done
			}
			wall := time.Since(t0)
			total := 0
			for i, d := range devs {
				total += d.tokens
				acc := "-"
				if d.drafted > 0 {
					acc = fmt.Sprintf("%.2f", float64(d.acc)/float64(d.drafted))
				}
				table = append(table, fmt.Sprintf("| %s | %s | %.0f | %s |", mode, s.Generators()[i].Name, float64(d.tokens)/d.el.Seconds(), acc))
			}
			sys := float64(total) / wall.Seconds()
			table = append(table, fmt.Sprintf("| %s | all devices | %.0f | |", mode, sys))
			b.ReportMetric(sys, mode+"_tok/s")
			s.Close()
		}
	}
	b.Logf("\n| mode | device | tokens/s | acceptance |\n|---|---|---:|---:|\n%s", strings.Join(table, "\n"))
}
