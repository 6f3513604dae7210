package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
)

// SoakConfig configures RunSoak: a steady closed-loop load on a `sled up` running
// in this process, sampled every Interval, then an idle tail, so that a plot shows
// whether memory stays flat. Zero fields take the documented defaults.
type SoakConfig struct {
	// Pair is the model pair (modelcache.PairTiny, modelcache.PairQwen). Default tiny.
	Pair string
	// ModelDir holds the tiny models. Default services.DefaultModelDir().
	ModelDir string
	// Mode is the system's mode (services.ModeSLED, ...). Default sled.
	Mode string
	// Devices is the number of simulated devices. Default 3.
	Devices int
	// Clients is the number of concurrent clients, each sending one request after
	// another through the HTTP API. Default 16.
	Clients int
	// MaxTokens per request. Default 16.
	MaxTokens int
	// Duration of the load. Default 2 minutes.
	Duration time.Duration
	// Idle is how long sampling goes on after the load stops. Default
	// engine.DefaultIdleRelease plus 10 s.
	Idle time.Duration
	// Interval between samples. Default 1 s.
	Interval time.Duration
	// BigEvery, when > 0, also sends one prompt of BigBytes bytes this often (a
	// prompt longer than the tiny models' context: refused with a 400 after
	// tokenizing, the path that once left 25 MB resident). Default 0 (none).
	BigEvery time.Duration
	// BigBytes is the size of the big prompt. Default 900 KiB.
	BigBytes int
	// HeapProfile, when set, receives Go heap profiles (pprof) after a collection:
	// HeapProfile+".base" after the warm-up and HeapProfile at the end, for
	// `go tool pprof -base`.
	HeapProfile string
	// Logger defaults to a logger that discards.
	Logger *slog.Logger `json:"-"`
}

// SoakSample is one sample of a soak.
type SoakSample struct {
	T     float64 `json:"t_s"`   // seconds since the load started
	Phase string  `json:"phase"` // "load" or "idle"
	// RSSMB is the process's resident set (VmRSS); GoMB what Go's runtime has
	// mapped and not released (heap, stacks, metadata); GoLiveMB the heap live at
	// the last collection; CHeapMB malloc's arenas (glibc mallinfo2: allocated or
	// free, without llama.cpp's separately mapped buffers).
	RSSMB      float64 `json:"rss_mb"`
	GoMB       float64 `json:"go_mb"`
	GoLiveMB   float64 `json:"go_live_mb"`
	CHeapMB    float64 `json:"c_heap_mb"`
	Goroutines int     `json:"goroutines"`
	// Requests completed in the interval (not counting big prompts), failed ones
	// among them, and their latency percentiles in milliseconds.
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
}

// SoakResult is a soak's samples and summary.
type SoakResult struct {
	Config  SoakConfig   `json:"config"`
	Samples []SoakSample `json:"samples"`
	// StartRSSMB is the resident set after start-up and one warm-up request per
	// client; PeakRSSMB the largest sample; LoadEndRSSMB the last sample under
	// load; IdleRSSMB the last sample.
	StartRSSMB   float64 `json:"start_rss_mb"`
	PeakRSSMB    float64 `json:"peak_rss_mb"`
	LoadEndRSSMB float64 `json:"load_end_rss_mb"`
	IdleRSSMB    float64 `json:"idle_rss_mb"`
	// SlopeMBPerMin is the least-squares slope of RSS over the second half of the
	// load: about 0 when memory is flat.
	SlopeMBPerMin float64 `json:"slope_mb_per_min"`
	// Goroutines at the start and at the end of the idle tail.
	StartGoroutines int `json:"start_goroutines"`
	IdleGoroutines  int `json:"idle_goroutines"`
	Requests        int `json:"requests"`
	Errors          int `json:"errors"`
	BigRequests     int `json:"big_requests"`
	// P50ms, P99ms over the whole load.
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	// Releases is how many times the engine returned idle memory to the kernel.
	Releases int64 `json:"idle_releases"`
}

// RunSoak starts the system, loads it for Duration, samples through Idle and
// closes it.
func RunSoak(ctx context.Context, cfg SoakConfig) (*SoakResult, error) {
	cfg = cfg.withDefaults()
	pair, ok := modelcache.LookupPair(cfg.Pair)
	if !ok {
		return nil, fmt.Errorf("bench: soak: unknown pair %q", cfg.Pair)
	}
	up := services.UpConfig{Mode: cfg.Mode, Devices: cfg.Devices, HTTPAddr: "127.0.0.1:0", Logger: cfg.Logger}
	fo := services.FindOptions{Dir: cfg.ModelDir}
	if cfg.Mode != services.ModeEdge {
		ref, err := services.ResolveModel(ctx, pair.Target, fo)
		if err != nil {
			return nil, err
		}
		up.Target, up.ModelName = ref.Path, ref.ID
	}
	if cfg.Mode != services.ModeCentralized {
		for _, d := range pair.Drafts {
			ref, err := services.ResolveModel(ctx, d, fo)
			if err != nil {
				return nil, err
			}
			up.Drafts, up.DraftNames = append(up.Drafts, ref.Path), append(up.DraftNames, ref.ID)
		}
	}
	sys, err := services.Start(ctx, up)
	if err != nil {
		return nil, err
	}
	defer sys.Close()

	prompts := soakPrompts(pair)
	tr := &http.Transport{MaxIdleConnsPerHost: cfg.Clients + 1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Minute}
	client := &httpapi.Client{BaseURL: "http://" + sys.HTTPAddr(), HTTPClient: hc}
	lcfg := LoadConfig{MaxTokens: cfg.MaxTokens, Timeout: 5 * time.Minute}
	// Warm-up: one request per client, so the baseline has the connections, the
	// sessions and llama.cpp's buffers a steady load has.
	var wg sync.WaitGroup
	errs := make([]error, cfg.Clients)
	for i := range cfg.Clients {
		wg.Go(func() { _, errs[i] = loadRequest(ctx, client, lcfg, prompts[i%len(prompts)]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("bench: soak warm-up: %w", err)
	}

	tr.CloseIdleConnections()
	if cfg.HeapProfile != "" {
		if err := writeHeapProfile(cfg.HeapProfile + ".base"); err != nil {
			return nil, err
		}
	}
	res := &SoakResult{Config: cfg}
	var (
		mu                sync.Mutex
		lats              []float64 // this interval's, seconds
		all               []float64
		nerr              int
		bigs              int
		loadCtx, stopLoad = context.WithTimeout(ctx, cfg.Duration)
	)
	defer stopLoad()
	start := time.Now()
	res.Samples = append(res.Samples, sampleSoak(0, "load", nil, 0))
	res.StartRSSMB, res.StartGoroutines = res.Samples[0].RSSMB, res.Samples[0].Goroutines
	for i := range cfg.Clients {
		wg.Go(func() {
			for k := i; loadCtx.Err() == nil; k += cfg.Clients {
				t0 := time.Now()
				_, err := loadRequest(loadCtx, client, lcfg, prompts[k%len(prompts)])
				if loadCtx.Err() != nil {
					return // cut off by the end of the load: not a result
				}
				mu.Lock()
				if err != nil {
					nerr++
					cfg.Logger.Warn("soak request failed", "err", err)
				} else {
					lats = append(lats, time.Since(t0).Seconds())
				}
				mu.Unlock()
			}
		})
	}
	if cfg.BigEvery > 0 {
		big := soakBigBody(cfg.BigBytes)
		wg.Go(func() {
			t := time.NewTicker(cfg.BigEvery)
			defer t.Stop()
			for {
				select {
				case <-loadCtx.Done():
					return
				case <-t.C:
				}
				if code, err := postRaw(loadCtx, hc, client.BaseURL+"/v1/completions", big); err == nil {
					mu.Lock()
					bigs++
					mu.Unlock()
					if code != http.StatusOK && code != http.StatusBadRequest {
						cfg.Logger.Warn("soak: big prompt", "status", code)
					}
				}
			}
		})
	}
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	end := start.Add(cfg.Duration + cfg.Idle)
	loadDone := false
	for now := range tick.C {
		if ctx.Err() != nil {
			break
		}
		phase := "load"
		if loadCtx.Err() != nil {
			phase = "idle"
			if !loadDone {
				wg.Wait() // requests in flight at the end complete first
				loadDone = true
				tr.CloseIdleConnections()
			}
		}
		mu.Lock()
		iv, n := lats, nerr
		lats, nerr = nil, 0
		all = append(all, iv...)
		mu.Unlock()
		res.Samples = append(res.Samples, sampleSoak(now.Sub(start).Seconds(), phase, iv, n))
		if !now.Before(end) {
			break
		}
	}
	stopLoad()
	wg.Wait()
	res.summarize(all, bigs)
	if cfg.HeapProfile != "" {
		if err := writeHeapProfile(cfg.HeapProfile); err != nil {
			return res, err
		}
	}
	return res, ctx.Err()
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (c SoakConfig) withDefaults() SoakConfig {
	if c.Pair == "" {
		c.Pair = modelcache.PairTiny
	}
	if c.ModelDir == "" {
		c.ModelDir = services.DefaultModelDir()
	}
	if c.Mode == "" {
		c.Mode = services.ModeSLED
	}
	if c.Devices <= 0 {
		c.Devices = 3
	}
	if c.Clients <= 0 {
		c.Clients = 16
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = 16
	}
	if c.Duration <= 0 {
		c.Duration = 2 * time.Minute
	}
	if c.Idle <= 0 {
		c.Idle = engine.DefaultIdleRelease + 10*time.Second
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.BigBytes <= 0 {
		c.BigBytes = 900 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// soakPrompts are short prompts in the pair's style.
func soakPrompts(p modelcache.Pair) []Prompt {
	if !p.Chat {
		var ps []Prompt
		for _, s := range []string{"Once upon a time", "One day, a little girl named Lily", "Tom and his dog", "The sun was shining and", "Ben saw a bird", "A cat lived in a small house"} {
			ps = append(ps, Prompt{Text: s, Kind: "prose"})
		}
		return ps
	}
	return DefaultLosslessPrompts()
}

// soakBigBody is a completion request whose prompt is n bytes of story text.
func soakBigBody(n int) []byte {
	const s = "once upon a time there was a little girl who liked to play in the park. "
	text := strings.Repeat(s, n/len(s)+1)[:n]
	b, _ := json.Marshal(map[string]any{"prompt": text, "max_tokens": 8})
	return b
}

func postRaw(ctx context.Context, hc *http.Client, url string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	r, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer r.Body.Close()
	io.Copy(io.Discard, r.Body)
	return r.StatusCode, nil
}

// sampleSoak reads this process's memory figures.
func sampleSoak(t float64, phase string, lats []float64, errs int) SoakSample {
	m := ReadMemory()
	q := quantiles(lats)
	return SoakSample{
		T: t, Phase: phase,
		RSSMB:      mib(m.RSS),
		GoMB:       mib(m.GoMapped),
		GoLiveMB:   mib(m.GoLive),
		CHeapMB:    mib(m.C.Arena),
		Goroutines: m.Goroutines,
		Requests:   len(lats) + errs, Errors: errs,
		P50ms: q.P50 * 1000, P99ms: q.P99 * 1000,
	}
}

// Memory is where this process's memory is at one moment.
type Memory struct {
	// RSS is the resident set (VmRSS; 0 where there is no /proc).
	RSS uint64
	// GoMapped is what Go's runtime has mapped and not released (heap,
	// stacks, metadata); GoLive the heap live at the last collection.
	GoMapped, GoLive uint64
	// C is malloc's arenas (without llama.cpp's separately mapped buffers).
	C          engine.CHeapStats
	Goroutines int
}

// ReadMemory reads this process's Memory.
func ReadMemory() Memory {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return Memory{
		RSS: ResidentBytes(), GoMapped: s[0].Value.Uint64() - s[1].Value.Uint64(), GoLive: s[2].Value.Uint64(),
		C: engine.CHeap(), Goroutines: runtime.NumGoroutine(),
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// ResidentBytes is this process's resident set (VmRSS in /proc/self/status); 0
// where there is no /proc.
func ResidentBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(b)) {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (r *SoakResult) summarize(all []float64, bigs int) {
	var xs, ys []float64
	half := r.Config.Duration.Seconds() / 2
	for _, s := range r.Samples {
		r.PeakRSSMB = max(r.PeakRSSMB, s.RSSMB)
		r.Requests += s.Requests
		r.Errors += s.Errors
		if s.Phase == "load" {
			r.LoadEndRSSMB = s.RSSMB
			if s.T >= half {
				xs, ys = append(xs, s.T), append(ys, s.RSSMB)
			}
		}
	}
	if n := len(r.Samples); n > 0 {
		r.IdleRSSMB, r.IdleGoroutines = r.Samples[n-1].RSSMB, r.Samples[n-1].Goroutines
	}
	r.SlopeMBPerMin = slope(xs, ys) * 60
	q := quantiles(all)
	r.P50ms, r.P99ms = q.P50*1000, q.P99*1000
	r.BigRequests = bigs
	r.Releases = engine.IdleReleases()
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx, sy, sxx, sxy = sx+xs[i], sy+ys[i], sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// Table summarizes the soak.
func (r *SoakResult) Table() Table {
	c := r.Config
	t := Table{
		Title: fmt.Sprintf("soak: %s pair, %s mode, %d devices, %d clients, %d tokens per request, %s of load then %s idle",
			c.Pair, c.Mode, c.Devices, c.Clients, c.MaxTokens, c.Duration, c.Idle),
		Header: []string{"figure", "value"},
	}
	add := func(k, v string) { t.Rows = append(t.Rows, []string{k, v}) }
	add("RSS after warm-up, MB", f1(r.StartRSSMB))
	add("RSS peak, MB", f1(r.PeakRSSMB))
	add("RSS at the end of the load, MB", f1(r.LoadEndRSSMB))
	add("RSS slope over the load's second half, MB/min", f2(r.SlopeMBPerMin))
	add("RSS idle at the end, MB", f1(r.IdleRSSMB))
	add("goroutines after warm-up / idle at the end", fmt.Sprintf("%d / %d", r.StartGoroutines, r.IdleGoroutines))
	add("requests (failed)", fmt.Sprintf("%d (%d)", r.Requests, r.Errors))
	if c.BigEvery > 0 {
		add(fmt.Sprintf("big prompts (%d KiB)", c.BigBytes>>10), itoa(r.BigRequests))
	}
	add("latency p50 / p99, ms", fmt.Sprintf("%.0f / %.0f", r.P50ms, r.P99ms))
	add("idle releases (engine.ReleaseMemory)", fmt.Sprint(r.Releases))
	return t
}

// WriteCSV writes one row per sample, with a header.
func (r *SoakResult) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"t_s", "phase", "rss_mb", "go_mb", "go_live_mb", "c_heap_mb", "goroutines", "requests", "errors", "p50_ms", "p99_ms"})
	g := func(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }
	for _, s := range r.Samples {
		cw.Write([]string{g(s.T), s.Phase, g(s.RSSMB), g(s.GoMB), g(s.GoLiveMB), g(s.CHeapMB), itoa(s.Goroutines), itoa(s.Requests), itoa(s.Errors), g(s.P50ms), g(s.P99ms)})
	}
	cw.Flush()
	return cw.Error()
}

// WriteJSON writes the result, samples included, to path.
func (r *SoakResult) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadSoakJSON reads a result WriteJSON wrote.
func ReadSoakJSON(path string) (*SoakResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r SoakResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	return &r, nil
}

// Plot writes dir/soak-memory.png (RSS, Go's memory, malloc's arenas and
// goroutines over time) and dir/soak-latency.png (each interval's p50 and p99),
// and returns their paths.
func (r *SoakResult) Plot(dir string) ([]string, error) {
	var t, rss, gomb, golive, cheap, gor, p50, p99, lt []float64
	for _, s := range r.Samples {
		t = append(t, s.T)
		rss, gomb, golive = append(rss, s.RSSMB), append(gomb, s.GoMB), append(golive, s.GoLiveMB)
		cheap, gor = append(cheap, s.CHeapMB), append(gor, float64(s.Goroutines))
		if s.Phase == "load" && s.Requests > 0 {
			lt, p50, p99 = append(lt, s.T), append(p50, s.P50ms), append(p99, s.P99ms)
		}
	}
	c := r.Config
	title := fmt.Sprintf("soak: %s pair, %d clients, %s of load, then idle", c.Pair, c.Clients, c.Duration)
	m, err := soakPlot(dir, "soak-memory", title, "MB, or goroutines", c.Duration.Seconds(),
		Series{Name: "RSS (MB)", X: t, Y: rss}, Series{Name: "Go runtime, mapped (MB)", X: t, Y: gomb},
		Series{Name: "Go heap, live (MB)", X: t, Y: golive}, Series{Name: "malloc arenas (MB)", X: t, Y: cheap},
		Series{Name: "goroutines", X: t, Y: gor})
	if err != nil {
		return nil, err
	}
	l, err := soakPlot(dir, "soak-latency", "soak: request latency, each second", "ms", c.Duration.Seconds(),
		Series{Name: "p50", X: lt, Y: p50}, Series{Name: "p99", X: lt, Y: p99})
	if err != nil {
		return []string{m}, err
	}
	return []string{m, l}, nil
}

// soakPlot is a line chart without point marks (a soak has hundreds of samples),
// from y = 0, its legend top left, the end of the load marked by a dashed line.
func soakPlot(dir, name, title, ylabel string, loadEnd float64, series ...Series) (string, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds"
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	top := 0.0
	for i, s := range series {
		xy := make(plotter.XYs, len(s.X))
		for j := range s.X {
			xy[j].X, xy[j].Y = s.X[j], s.Y[j]
			top = max(top, s.Y[j])
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return "", fmt.Errorf("bench: plot %s: %w", name, err)
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.2)
		p.Add(l)
		p.Legend.Add(s.Name, l)
	}
	p.Y.Max = top * 1.35 // room for the legend
	if end, err := plotter.NewLine(plotter.XYs{{X: loadEnd, Y: 0}, {X: loadEnd, Y: p.Y.Max}}); err == nil {
		end.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		end.Color = color.Gray{Y: 120}
		p.Add(end)
		p.Legend.Add("end of load", end)
	}
	return savePlot(p, dir, name)
}
