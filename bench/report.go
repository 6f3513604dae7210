package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// Report is the outcome of one experiment: tables for people, Result for
// programs, and what was measured versus modelled.
type Report struct {
	Experiment string    `json:"experiment"`
	Command    string    `json:"command"`
	Time       time.Time `json:"time"`
	Machine    string    `json:"machine"`
	Quick      bool      `json:"quick"`
	// Target and Draft name the server's model and the real pair the acceptance
	// distribution was measured on.
	Target     string             `json:"target,omitempty"`
	Pair       string             `json:"pair,omitempty"`
	Acceptance *AcceptanceSummary `json:"acceptance,omitempty"`
	Measured   []string           `json:"measured"`
	Modelled   []string           `json:"modelled"`
	Tables     []Table            `json:"tables"`
	// Result is the experiment's own result type (CapacityResult, ...).
	Result any `json:"result"`
	// Plots lists the PNG files written.
	Plots []string `json:"plots,omitempty"`
}

// Table is a titled table of strings.
type Table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
}

// Markdown writes t as a Markdown table.
func (t Table) Markdown(w io.Writer) {
	if t.Title != "" {
		fmt.Fprintf(w, "\n%s\n\n", t.Title)
	}
	fmt.Fprintf(w, "| %s |\n|", strings.Join(t.Header, " | "))
	for i := range t.Header {
		if i == 0 {
			fmt.Fprint(w, "---|")
		} else {
			fmt.Fprint(w, "---:|")
		}
	}
	fmt.Fprintln(w)
	for _, r := range t.Rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
}

// Print writes the report's tables and notes as Markdown.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "## sled bench %s (%s)\n", r.Experiment, r.Machine)
	if r.Target != "" {
		label := "acceptance from"
		if r.Experiment == "lossless" {
			label = "drafts"
		}
		fmt.Fprintf(w, "\ntarget %s; %s %s", r.Target, label, r.Pair)
		if a := r.Acceptance; a != nil {
			fmt.Fprintf(w, " (θ=%.2g, max %d: mean draft %.2f, accepted %.2f, rate %.2f)", a.Threshold, a.MaxLen, a.MeanLen, a.MeanAccepted, a.Rate)
		}
		fmt.Fprintln(w)
	}
	for _, t := range r.Tables {
		t.Markdown(w)
	}
	fmt.Fprintln(w, "\nmeasured:")
	for _, s := range r.Measured {
		fmt.Fprintln(w, "  -", s)
	}
	fmt.Fprintln(w, "modelled:")
	if len(r.Modelled) == 0 {
		fmt.Fprintln(w, "  - nothing")
	}
	for _, s := range r.Modelled {
		fmt.Fprintln(w, "  -", s)
	}
	for _, p := range r.Plots {
		fmt.Fprintln(w, "plot:", p)
	}
}

// WriteJSON writes the report to path as indented JSON.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func machine() string {
	host, _ := os.Hostname()
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			load = f[0]
		}
	}
	return fmt.Sprintf("%s, %d CPUs (%s) %s/%s, load average %s at start", host, runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, load)
}

// cpuModel is the CPU's model name from /proc/cpuinfo, or "unknown CPU": the
// same VM name can stand for different hosts from one run to the next.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func f1(x float64) string { return fmt.Sprintf("%.1f", x) }
func f2(x float64) string { return fmt.Sprintf("%.2f", x) }
func itoa(n int) string   { return fmt.Sprint(n) }
