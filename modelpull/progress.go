package modelpull

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// progress draws a one-line download display: a bar, bytes, percentage and rate,
// redrawn in place at most every redrawEvery. A nil *progress draws nothing.
type progress struct {
	w          io.Writer
	total      int64 // -1: unknown
	base       int64 // bytes present when this transfer began
	began      time.Time
	last       time.Time
	cur        int64
	drawnWidth int
}

const redrawEvery = 200 * time.Millisecond

func newProgress(w io.Writer) *progress { return &progress{w: w, total: -1} }

// start begins a transfer that continues from have bytes, of total (-1: unknown).
func (p *progress) start(have, total int64) {
	if p == nil {
		return
	}
	p.base, p.cur, p.total, p.began = have, have, total, time.Now()
	p.draw()
}

func (p *progress) update(n int64) {
	if p == nil {
		return
	}
	p.cur = n
	if time.Since(p.last) >= redrawEvery {
		p.draw()
	}
}

// finish draws the final state and ends the line.
func (p *progress) finish() {
	if p == nil || p.began.IsZero() {
		return
	}
	p.draw()
	fmt.Fprintln(p.w)
}

func (p *progress) draw() {
	p.last = time.Now()
	var b strings.Builder
	rate := 0.0
	if el := p.last.Sub(p.began).Seconds(); el > 0 {
		rate = float64(p.cur-p.base) / el
	}
	if p.total > 0 {
		frac := min(float64(p.cur)/float64(p.total), 1)
		const width = 30
		fill := int(frac * width)
		fmt.Fprintf(&b, "[%s%s] %s / %s %5.1f%%", strings.Repeat("=", fill), strings.Repeat(" ", width-fill),
			formatBytes(p.cur), formatBytes(p.total), 100*frac)
	} else {
		fmt.Fprintf(&b, "%s", formatBytes(p.cur))
	}
	fmt.Fprintf(&b, "  %s/s", formatBytes(int64(rate)))
	if p.total > 0 && rate > 0 && p.cur < p.total {
		eta := time.Duration(float64(p.total-p.cur) / rate * float64(time.Second))
		fmt.Fprintf(&b, "  ETA %s", eta.Round(time.Second))
	}
	line := b.String()
	pad := max(0, p.drawnWidth-len(line))
	p.drawnWidth = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
}

// formatBytes writes n in binary units: "512 B", "1.5 MiB".
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
