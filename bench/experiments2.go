package bench

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"time"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
)

// WSTGRPoint is one trial pair of the wstgr experiment: one batch size, one
// repeat.
type WSTGRPoint struct {
	Batch int `json:"batch"`
	// Repeat numbers the point's repeat of its size from 1 (Options.Repeats).
	Repeat int          `json:"repeat"`
	SLED   *Measurement `json:"sled"`
	// Static is SLED with the static speculation length (no draft budgets),
	// in the same run; absent with Options.NoStatic or a static Budget.
	Static      *Measurement `json:"sled_static,omitempty"`
	Centralized *Measurement `json:"centralized"`
	Edge        *Measurement `json:"edge"`
}

// runWSTGR measures the whole-system token generation rate against batch size
// (paper Fig. 4): B devices, SLED with batches of up to B drafts, centralized with
// B concurrent requests.
func runWSTGR(ctx context.Context, o Options) (*Report, error) {
	ps, err := o.profiles()
	if err != nil {
		return nil, err
	}
	p := ps[0]
	sizes := []int{1, 2, 4, 8, 16, 32}
	if o.Quick {
		sizes = []int{1, 4, 8}
	}
	if len(o.Fleets) > 0 {
		sizes = o.Fleets
	}
	e, err := o.env(ctx, o.Type)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	static := !o.NoStatic && !o.Budget.Static
	bar := o.progress(3 * len(sizes) * o.Repeats)
	defer bar.Done()
	var pts []WSTGRPoint
	for i, b := range sizes {
		for rep := range o.Repeats {
			t := o.trial(b, p)
			t.Batch.Size = b
			var s, st, c *Measurement
			central := func() (err error) {
				bar.Step(fmt.Sprintf("centralized batch %d", b))
				c, err = e.RunCentralized(ctx, t)
				return err
			}
			// Every other trial pair runs the centralized trial first: a
			// shared machine's load drifts over minutes, and a fixed order
			// would hand the drift to one system.
			centralFirst := (i+rep)%2 == 1
			if centralFirst {
				if err := central(); err != nil {
					return nil, err
				}
			}
			bar.Step(fmt.Sprintf("sled batch %d", b))
			if s, err = e.RunSLED(ctx, t); err != nil {
				return nil, err
			}
			if static {
				bar.Step(fmt.Sprintf("sled static batch %d", b))
				ts := t
				ts.Budget.Static = true
				if st, err = e.RunSLED(ctx, ts); err != nil {
					return nil, err
				}
				st.System = "sled-static"
			}
			if !centralFirst {
				if err := central(); err != nil {
					return nil, err
				}
			}
			pts = append(pts, WSTGRPoint{Batch: b, Repeat: rep + 1, SLED: s, Static: st, Centralized: c, Edge: EdgeOnly(p, b)})
		}
	}
	r := o.report("wstgr", e)
	r.Result = pts
	r.Modelled = append(r.Modelled, "edge-only: devices x profile rate (the draft model's text, not the target's)")
	t := Table{Title: fmt.Sprintf("Whole-system token generation rate vs batch size (%s devices, %s)", p.Name, r.Target),
		Header: []string{"batch = devices", "SLED tok/s", "static-length SLED tok/s", "centralized tok/s", "SLED / centralized", "static / centralized", "edge-only tok/s", "SLED mean draft", "SLED mean batch", "SLED round p50 ms", "SLED per device", "centralized per device"}}
	var sx, cy, ey Series
	sx.Name, cy.Name, ey.Name = "SLED", "centralized", "edge-only (draft text)"
	for _, q := range pts {
		st, sr := "-", "-"
		if q.Static != nil {
			st, sr = f1(q.Static.TokensPerSec), f2(q.Static.TokensPerSec/q.Centralized.TokensPerSec)
		}
		t.Rows = append(t.Rows, []string{itoa(q.Batch), f1(q.SLED.TokensPerSec), st, f1(q.Centralized.TokensPerSec), f2(q.SLED.TokensPerSec / q.Centralized.TokensPerSec), sr,
			f1(q.Edge.TokensPerSec), f2(q.SLED.MeanDraftLen), f1(q.SLED.MeanBatch), f1(q.SLED.RoundMs.P50), f1(q.SLED.MeanPerDevice), f1(q.Centralized.MeanPerDevice)})
		x := float64(q.Batch)
		sx.X, sx.Y = append(sx.X, x), append(sx.Y, q.SLED.TokensPerSec)
		cy.X, cy.Y = append(cy.X, x), append(cy.Y, q.Centralized.TokensPerSec)
		ey.X, ey.Y = append(ey.X, x), append(ey.Y, q.Edge.TokensPerSec)
	}
	r.Tables = append(r.Tables, t)
	if o.Repeats > 1 {
		r.Tables = append(r.Tables, wstgrRepeats(pts))
	}
	err = o.plot(r, func(dir string) ([]string, error) {
		p, err := linePlot(dir, "wstgr", "WSTGR vs batch size, "+r.Target, "batch size (= devices)", "tokens/s, all devices", sx, cy, ey)
		return []string{p}, err
	})
	return r, err
}

// wstgrRepeats summarises repeated fleet sizes: per size, the mean rates,
// the ratio of the means and the range of the repeats' own ratios (each
// repeat's two trials ran next to each other, so its ratio is the one a
// drifting machine disturbs least).
func wstgrRepeats(pts []WSTGRPoint) Table {
	t := Table{Title: "SLED / centralized per fleet size over repeats (order alternating)",
		Header: []string{"batch = devices", "repeats", "SLED tok/s, mean", "centralized tok/s, mean", "SLED / centralized (means)", "per-repeat ratios, min-max", "sessions cut, SLED / centralized"}}
	var sizes []int
	by := map[int][]WSTGRPoint{}
	for _, q := range pts {
		if _, ok := by[q.Batch]; !ok {
			sizes = append(sizes, q.Batch)
		}
		by[q.Batch] = append(by[q.Batch], q)
	}
	for _, b := range sizes {
		qs := by[b]
		var sled, central float64
		var scut, ccut int
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, q := range qs {
			sled += q.SLED.TokensPerSec
			central += q.Centralized.TokensPerSec
			scut += q.SLED.Mismatches
			ccut += q.Centralized.Mismatches
			x := q.SLED.TokensPerSec / q.Centralized.TokensPerSec
			lo, hi = min(lo, x), max(hi, x)
		}
		n := float64(len(qs))
		t.Rows = append(t.Rows, []string{itoa(b), itoa(len(qs)), f1(sled / n), f1(central / n), f2(sled / central),
			f2(lo) + "-" + f2(hi), itoa(scut) + " / " + itoa(ccut)})
	}
	return t
}

// SpecLenPoint is one drafting policy of the speclen experiment.
type SpecLenPoint struct {
	Threshold float32           `json:"threshold"`
	MaxLen    int               `json:"max_len"`
	Summary   AcceptanceSummary `json:"acceptance"`
	SLED      *Measurement      `json:"sled"`
	// SimCapacity is the simulated capacity with this policy (the simulator
	// calibrated on this machine, see RunSim); SimCapacityAt is its bound.
	SimCapacity int `json:"sim_capacity"`
}

// runSpecLen measures per-device and whole-system throughput against the
// speculative length (fixed-length drafting, θ = 0) and against the confidence
// threshold θ (dynamic drafting, at most 8), paper Fig. 5.
func runSpecLen(ctx context.Context, o Options) (*Report, error) {
	ps, err := o.profiles()
	if err != nil {
		return nil, err
	}
	p := ps[0]
	devices := 4
	lens := []int{1, 2, 3, 4, 6, 8}
	thetas := []float32{0.1, 0.2, 0.4, 0.6, 0.8}
	if o.Quick {
		devices, lens, thetas = 4, []int{1, 4}, []float32{0.4}
	}
	e, err := o.env(ctx, o.Type)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	var pols []drafter.DraftPolicy
	for _, k := range lens {
		pols = append(pols, drafter.DraftPolicy{Fixed: true, MaxLen: k})
	}
	for _, th := range thetas {
		pols = append(pols, drafter.DraftPolicy{Threshold: th, MaxLen: 8})
	}
	bar := o.progress(len(pols))
	defer bar.Done()
	var pts []SpecLenPoint
	for _, pol := range pols {
		eff := pol.WithDefaults()
		bar.Step(fmt.Sprintf("θ=%.1f max %d", eff.Threshold, eff.MaxLen))
		t := o.trial(devices, p)
		t.Policy = pol
		m, err := e.RunSLED(ctx, t)
		if err != nil {
			return nil, err
		}
		pts = append(pts, SpecLenPoint{Threshold: eff.Threshold, MaxLen: eff.MaxLen, Summary: e.Acceptance.Summary(pol), SLED: m})
	}
	// Capacity per policy from the simulator, calibrated here.
	bar.Label("calibrating the simulator")
	cal, err := e.calibrate(ctx, o, p)
	if err != nil {
		return nil, err
	}
	for i := range pts {
		pts[i].SimCapacity = cal.capacity(e, o, p, pols[i], o.Required, 1024)
	}
	r := o.report("speclen", e)
	r.Result = pts
	r.Modelled = append(r.Modelled, "sim capacity: bench/sim calibrated on this machine ("+cal.cost.Source+fmt.Sprintf("; messaging %.1f ms per round)", cal.msg.UpMs+cal.msg.HopMs+cal.msg.DownMs))
	t := Table{Title: fmt.Sprintf("Speculative length and confidence threshold (%d %s devices, %s)", devices, p.Name, r.Target),
		Header: []string{"θ", "max len", "mean draft", "mean accepted", "acceptance rate", "per device tok/s", "WSTGR tok/s", "mean batch", "round p50 ms", "capacity (sim)"}}
	var fixed, dyn Series
	fixed.Name, dyn.Name = "fixed length k (θ = 0)", "dynamic, max 8"
	var fixedX, dynX Series
	for _, q := range pts {
		t.Rows = append(t.Rows, []string{f2(float64(q.Threshold)), itoa(q.MaxLen), f2(q.SLED.MeanDraftLen), f2(q.SLED.MeanAccepted), f2(q.Summary.Rate),
			f1(q.SLED.MeanPerDevice), f1(q.SLED.TokensPerSec), f1(q.SLED.MeanBatch), f1(q.SLED.RoundMs.P50), itoa(q.SimCapacity)})
		if q.Threshold == 0 {
			fixed.X, fixed.Y = append(fixed.X, float64(q.MaxLen)), append(fixed.Y, q.SLED.MeanPerDevice)
		} else {
			dyn.X, dyn.Y = append(dyn.X, float64(q.Threshold)), append(dyn.Y, q.SLED.MeanPerDevice)
		}
	}
	_, _ = fixedX, dynX
	r.Tables = append(r.Tables, t)
	err = o.plot(r, func(dir string) ([]string, error) {
		a, err := linePlot(dir, "speclen", "Per-device tokens/s vs speculative length", "draft length k (fixed)", "tokens/s per device", fixed)
		if err != nil {
			return nil, err
		}
		b, err := linePlot(dir, "speclen-theta", "Per-device tokens/s vs confidence threshold", "θ (max 8)", "tokens/s per device", dyn)
		return []string{a, b}, err
	})
	return r, err
}

// CostResult is the outcome of the cost experiment.
type CostResult struct {
	Model  CostModel      `json:"cost_model"`
	Points []Point        `json:"points"`
	Trials []*Measurement `json:"trials"`
}

// runCost measures throughput of SLED and centralized with F16, Q8_0 and Q4_0
// targets at several fleet sizes and prices each with the CAPEX/OPEX model
// (paper Fig. 6).
func runCost(ctx context.Context, o Options) (*Report, error) {
	ps, err := o.profiles()
	if err != nil {
		return nil, err
	}
	p := ps[0]
	types := []string{"F16", "Q8_0", "Q4_0"}
	fleets := []int{4, 8, 16}
	if o.qwen() {
		types = []string{"Q8_0", "Q4_K_M", "Q4_0"}
	}
	if o.Quick {
		types, fleets = []string{types[0], types[len(types)-1]}, []int{4}
	}
	cm := CostModel{}.WithDefaults()
	res := &CostResult{Model: cm}
	bar := o.progress(2 * len(types) * len(fleets))
	defer bar.Done()
	var r *Report
	for _, typ := range types {
		e, err := o.env(ctx, typ)
		if err != nil {
			return nil, err
		}
		if r == nil {
			r = o.report("cost", e)
		}
		for _, n := range fleets {
			bar.Step(fmt.Sprintf("%s sled %d", typ, n))
			s, err := e.RunSLED(ctx, o.trial(n, p))
			if err != nil {
				e.Close()
				return nil, err
			}
			bar.Step(fmt.Sprintf("%s centralized %d", typ, n))
			c, err := e.RunCentralized(ctx, o.trial(n, p))
			if err != nil {
				e.Close()
				return nil, err
			}
			res.Trials = append(res.Trials, s, c)
			res.Points = append(res.Points,
				Point{Label: fmt.Sprintf("SLED %s %d", typ, n), TokensPerSec: s.TokensPerSec, USDPer1K: cm.USDPer1K(p, n, s.TokensPerSec)},
				Point{Label: fmt.Sprintf("central %s %d", typ, n), TokensPerSec: c.TokensPerSec, USDPer1K: cm.USDPer1K(p, 0, c.TokensPerSec)})
		}
		e.Close()
	}
	MarkPareto(res.Points)
	r.Result = res
	r.Target = fmt.Sprintf("%s at %v", o.targetName(), types)
	r.Modelled = append(r.Modelled, fmt.Sprintf("cost: device %s at $%.0f over %.0f years at %.0f%% utilization + %.1f W at $%.3f/kWh = $%.4f/h per device; server $%.2f/h (2-vCPU cloud instance); centralized clients cost nothing (as in the paper)",
		p.Name, p.PriceUSD, cm.LifetimeYears, cm.Utilization*100, p.PowerW, cm.EnergyUSDPerKWh, cm.DeviceUSDPerHour(p), cm.ServerUSDPerHour))
	t := Table{Title: "Cost per 1K tokens vs throughput (Pareto points marked *)", Header: []string{"system, target, devices", "tokens/s", "$ / 1K tokens", "Pareto"}}
	for _, q := range res.Points {
		mark := ""
		if q.Pareto {
			mark = "*"
		}
		t.Rows = append(t.Rows, []string{q.Label, f1(q.TokensPerSec), fmt.Sprintf("%.6f", q.USDPer1K), mark})
	}
	r.Tables = append(r.Tables, t, trialsTable(res.Trials))
	err = o.plot(r, func(dir string) ([]string, error) {
		p, err := scatterPlot(dir, "cost", "Cost vs throughput ("+o.targetName()+")", "tokens/s, whole system", "$ per 1K tokens", res.Points)
		return []string{p}, err
	})
	return r, err
}

// TransportRow is one fleet size of the transport experiment.
type TransportRow struct {
	Devices int          `json:"devices"`
	SLED    *Measurement `json:"sled"`
	// VerifyShare is the verifier's compute (ServerTiming.VerifyMs) as a share of
	// the device-side round latency; the rest is NATS, events, batching and queueing.
	VerifyShare float64 `json:"verify_share"`
}

// runTransport splits SLED's round latency into model compute and everything
// else (NATS hops, encode/decode/validate, batch wait, queueing), from the device's
// own timing and the result's ServerTiming.
func runTransport(ctx context.Context, o Options) (*Report, error) {
	ps, err := o.profiles()
	if err != nil {
		return nil, err
	}
	fleets := []int{1, 4, 16, 32}
	if o.Quick {
		fleets = []int{1, 4}
	}
	e, err := o.env(ctx, o.Type)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	bar := o.progress(len(fleets))
	defer bar.Done()
	var rows []TransportRow
	for _, n := range fleets {
		bar.Step(fmt.Sprintf("%d devices", n))
		m, err := e.RunSLED(ctx, o.trial(n, ps[0]))
		if err != nil {
			return nil, err
		}
		row := TransportRow{Devices: n, SLED: m}
		if m.RoundMs.Mean > 0 {
			row.VerifyShare = m.VerifyMs / m.RoundMs.Mean
		}
		rows = append(rows, row)
	}
	r := o.report("transport", e)
	r.Result = rows
	t := Table{Title: "Where a round's time goes (means, ms)", Header: []string{"devices", "round (device side)", "p50", "p99", "verify (target compute)", "server total", "rest: NATS + events + batching + queue", "compute share", "mean batch"}}
	var x Series
	x.Name = "compute share of a round"
	for _, q := range rows {
		m := q.SLED
		t.Rows = append(t.Rows, []string{itoa(q.Devices), f1(m.RoundMs.Mean), f1(m.RoundMs.P50), f1(m.RoundMs.P99), f1(m.VerifyMs), f1(m.ServerMs), f1(m.RoundMs.Mean - m.VerifyMs), fmt.Sprintf("%.0f%%", 100*q.VerifyShare), f1(m.MeanBatch)})
		x.X, x.Y = append(x.X, float64(q.Devices)), append(x.Y, q.VerifyShare)
	}
	r.Tables = append(r.Tables, t)
	err = o.plot(r, func(dir string) ([]string, error) {
		p, err := linePlot(dir, "transport", "Model compute share of SLED's round latency", "devices", "verify / round", x)
		return []string{p}, err
	})
	return r, err
}

// runDevice measures this machine as a device: the draft model's greedy decode
// rate with drafter.Edge (one thread, as a small board would give a draft), for
// the shared drafts and for a synthetic SmolLM-135M Q8_0 (the class the built-in
// profiles assume).
func runDevice(ctx context.Context, o Options) (*Report, error) {
	if o.ModelDir == "" {
		return nil, fmt.Errorf("bench: no model directory: set SLED_MODEL_DIR or --models")
	}
	tok := filepath.Join(o.ModelDir, "stories260k.gguf")
	smol, err := SynthTarget(CacheDir(), "smollm-135m", "Q8_0", tok)
	if err != nil {
		return nil, err
	}
	models := []string{filepath.Join(o.ModelDir, o.Draft), smol}
	if o.qwen() {
		draft, err := services.FindModel(ctx, modelcache.QwenDraft, services.FindOptions{Dir: o.ModelDir})
		if err != nil {
			return nil, err
		}
		models = append(models, draft)
	}
	n := 128
	if o.Quick {
		n = 32
	}
	r := o.report("device", nil)
	r.Measured = []string{"draft decode rate of drafter.Edge on this machine, 1 thread, greedy, prompt excluded"}
	r.Modelled = []string{"nothing"}
	t := Table{Title: "This machine as a device", Header: []string{"draft model", "threads", "tokens", "tokens/s"}}
	var profs []Profile
	for _, path := range models {
		m, err := engine.LoadModel(path, engine.ModelOptions{})
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		ed, err := drafter.NewEdge(m, 1, 0)
		if err != nil {
			m.Close()
			return nil, err
		}
		prompt, _ := m.Tokenize(DefaultPrompts[0], true)
		// Warm up once, then time.
		_, _ = ed.Generate(ctx, textgen.Request{Prompt: prompt, MaxTokens: 4}, func(textgen.Chunk) error { return nil })
		t0 := time.Now()
		res, err := ed.Generate(ctx, textgen.Request{Prompt: prompt, MaxTokens: n}, func(textgen.Chunk) error { return nil })
		el := time.Since(t0)
		ed.Close()
		m.Close()
		if err != nil {
			return nil, err
		}
		rate := float64(len(res.Tokens)) / el.Seconds()
		t.Rows = append(t.Rows, []string{filepath.Base(path), "1", itoa(len(res.Tokens)), f1(rate)})
		profs = append(profs, Profile{Name: "this-machine", Device: machine(), DraftModel: filepath.Base(path), TokensPerSec: rate,
			Source: fmt.Sprintf("measured by `sled bench device` %s: drafter.Edge, 1 thread, %d tokens", time.Now().UTC().Format(time.DateOnly), len(res.Tokens))})
	}
	r.Tables = append(r.Tables, t)
	r.Result = profs
	return r, nil
}
