package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Progress draws a one-line progress bar on a terminal. On anything else (a
// file, a pipe, CI logs) it draws nothing. The zero value and nil draw nothing.
type Progress struct {
	w     io.Writer
	total int
	done  int
	start time.Time
}

// NewProgress returns a bar of total steps on w, or nil when w is not a
// terminal.
func NewProgress(w *os.File, total int) *Progress {
	fi, err := w.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return &Progress{w: w, total: max(total, 1), start: time.Now()}
}

// Step marks one step done, labelled with what runs next.
func (p *Progress) Step(label string) {
	if p == nil {
		return
	}
	p.done = min(p.done+1, p.total)
	p.draw(label)
}

// Label redraws the bar with a new label without advancing it.
func (p *Progress) Label(label string) {
	if p == nil {
		return
	}
	p.draw(label)
}

func (p *Progress) draw(label string) {
	const width = 30
	n := width * p.done / p.total
	fmt.Fprintf(p.w, "\r\033[K[%s%s] %d/%d %s %s", strings.Repeat("#", n), strings.Repeat(".", width-n),
		p.done, p.total, time.Since(p.start).Round(time.Second), label)
}

// Done clears the bar.
func (p *Progress) Done() {
	if p == nil {
		return
	}
	fmt.Fprint(p.w, "\r\033[K")
}
