package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/services"
)

// summarize writes a line per device of sys every interval, until ctx ends: tokens/s
// and acceptance over the interval, for devices that produced tokens in it
// (an idle system prints nothing). Only SLED-mode devices report.
func summarize(ctx context.Context, sys *services.System, every time.Duration, w io.Writer) {
	devices := sys.Devices()
	if len(devices) == 0 || every <= 0 {
		return
	}
	last := make([]drafter.Activity, len(devices))
	for i, d := range devices {
		last[i] = d.Activity()
	}
	t := time.NewTicker(every)
	defer t.Stop()
	prev := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			el := now.Sub(prev).Seconds()
			prev = now
			for i, d := range devices {
				a := d.Activity()
				if line := summaryLine(d.ID(), last[i], a, el); line != "" {
					fmt.Fprintln(w, line)
				}
				last[i] = a
			}
		}
	}
}

// summaryLine describes the activity between two snapshots taken el seconds
// apart, or returns "" when there was none.
func summaryLine(device string, from, to drafter.Activity, el float64) string {
	tokens := to.Tokens - from.Tokens
	if tokens == 0 || el <= 0 {
		return ""
	}
	rounds, drafted, accepted := to.Rounds-from.Rounds, to.Drafted-from.Drafted, to.Accepted-from.Accepted
	line := fmt.Sprintf("%s: %.1f tok/s, %d rounds", device, float64(tokens)/el, rounds)
	if drafted > 0 {
		line += fmt.Sprintf(", acceptance %.0f%% (%d/%d), %.2f accepted/round", 100*float64(accepted)/float64(drafted), accepted, drafted, float64(accepted)/float64(max(rounds, 1)))
	}
	if u := to.Unverified - from.Unverified; u > 0 {
		line += fmt.Sprintf(", %d unverified", u)
	}
	return line
}
