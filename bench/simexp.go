package bench

import (
	"context"
	"fmt"
	"math"
	"path/filepath"

	"github.com/sled-project/sled/bench/sim"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine/gguf"
)

// SimResult is the outcome of `sled sim`.
type SimResult struct {
	// Cost is the pass-cost model fitted on this machine, from Samples.
	Cost    sim.PassCost `json:"cost"`
	Samples []sim.Sample `json:"samples"`
	// Messaging is calibrated from measured one-device runs (see Messaging).
	Messaging Messaging `json:"messaging"`
	// Validation compares simulated and measured runs at the same sizes.
	Validation []SimCheck `json:"validation"`
	// MeanAbsErrSLED and MeanAbsErrCentral are the mean |sim-measured|/measured
	// whole-system tokens/s over Validation; Min and Max bound the signed errors.
	MeanAbsErrSLED    float64 `json:"mean_abs_err_sled"`
	MeanAbsErrCentral float64 `json:"mean_abs_err_centralized"`
	MinErrSLED        float64 `json:"min_err_sled"`
	MaxErrSLED        float64 `json:"max_err_sled"`
	MinErrCentral     float64 `json:"min_err_centralized"`
	MaxErrCentral     float64 `json:"max_err_centralized"`
	// Capacity is the simulated capacity per server model.
	Capacity []SimCapacity `json:"capacity"`
}

// Messaging is the simulator's messaging and host-side costs, from the server's
// own timing (events.ServerTiming) of a measured one-device SLED run and the
// step rate of a measured one-client centralized run.
type Messaging struct {
	// UpMs: device publish → batch closed (QueueMs; one device closes at once).
	UpMs float64 `json:"up_ms"`
	// HopMs: batch published → verifier started (BatchMs).
	HopMs float64 `json:"hop_ms"`
	// DownMs: the rest of a round after verification: publishing and storing
	// the result, the device receiving it (round − queue − batch − verify).
	DownMs float64 `json:"down_ms"`
	// StepMs: a centralized step's time besides the modelled pass (1 s / the
	// one-client token rate − the model's one-token pass).
	StepMs float64 `json:"step_ms"`
	// ResultMs and StepScale are fitted so that the simulator reproduces
	// measured runs of CalibDevices devices (another seed than the
	// validation's): the worker's time per draft beyond the modelled pass, and
	// the factor on the centralized server's modelled passes. They stand for
	// what timing passes alone does not see: the fleet's goroutines, the NATS
	// server and llama.cpp's threads competing for the same cores, messaging and
	// acceptance. (The verifier's passes are not scaled: a factor fitted from one
	// run's Verify timing followed that moment's load on this shared machine,
	// 1.0 to 1.9 from run to run.)
	ResultMs     float64 `json:"result_ms"`
	StepScale    float64 `json:"step_scale"`
	CalibDevices int     `json:"calib_devices"`
}

// SimCheck is one validated size.
type SimCheck struct {
	Devices         int     `json:"devices"`
	MeasuredSLED    float64 `json:"measured_sled"`
	SimSLED         float64 `json:"sim_sled"`
	MeasuredCentral float64 `json:"measured_centralized"`
	SimCentral      float64 `json:"sim_centralized"`
	ErrSLED         float64 `json:"err_sled"`
	ErrCentral      float64 `json:"err_centralized"`
	MeasuredBatch   float64 `json:"measured_batch"`
	SimBatch        float64 `json:"sim_batch"`
	MeasuredRoundMs float64 `json:"measured_round_ms"`
	SimRoundMs      float64 `json:"sim_round_ms"`
	// MeasuredVerifyMs is the verifier's own mean Verify time per round
	// (events.ServerTiming), SimPassMs the simulator's mean modelled pass.
	MeasuredVerifyMs float64 `json:"measured_verify_ms"`
	SimPassMs        float64 `json:"sim_pass_ms"`
}

// SimCapacity is the simulated capacity of one server model and device profile.
type SimCapacity struct {
	Server      string       `json:"server"`
	Target      string       `json:"target"`
	Profile     string       `json:"profile"`
	Cost        sim.PassCost `json:"cost"`
	SLED        int          `json:"sled_capacity"`
	Centralized int          `json:"centralized_capacity"`
	Ratio       float64      `json:"ratio"`
	// Static is SLED's capacity with the paper's fixed speculation length
	// (goodput.Policy.Static) in the same model, and StaticRatio its ratio to
	// centralized: what the budget policy gains (absent when the run itself is
	// static).
	Static      int     `json:"static_capacity,omitempty"`
	StaticRatio float64 `json:"static_ratio,omitempty"`
	// SLEDTokensPerSec and CentralTokensPerSec are the whole-system rates at
	// those capacities.
	SLEDTokensPerSec    float64 `json:"sled_tokens_per_sec"`
	CentralTokensPerSec float64 `json:"centralized_tokens_per_sec"`
}

type samplerSource struct{ s *Sampler }

func (a samplerSource) Next() sim.Round {
	r := a.s.Sample()
	return sim.Round{Len: r.Len, Accepted: r.Accepted}
}

// SimConfig is the simulator configuration for a trial of the real system: the
// same fleet, profile, drafting, batch and budget policies (with the devices'
// server rounds, latency objective and the worker's gathering bound), seeds,
// prompts and continuation lengths, and measuring window.
func (e *Env) SimConfig(t Trial, cost sim.PassCost, msg Messaging) sim.Config {
	t = t.withDefaults()
	prompt := 0
	for _, p := range e.Prompts {
		prompt += len(p)
	}
	cont := 0
	for _, c := range e.Conts {
		cont += len(c)
	}
	return sim.Config{
		Devices: t.Devices, DraftRate: t.Profile.TokensPerSec,
		Rounds: func(i int) sim.RoundSource {
			return samplerSource{NewSampler(e.Acceptance, t.Policy, t.Seed*1_000_003+uint64(i))}
		},
		Batch: t.Batch, Budget: t.Budget, TPOTMs: t.TPOTMs, ServerRounds: t.ServerRounds, GatherMax: t.GatherMax,
		Slots: t.Devices + 4, Cost: cost, Workers: t.Workers,
		UpMs: msg.UpMs, HopMs: msg.HopMs, DownMs: msg.DownMs, ResultMs: msg.ResultMs,
		StepMs: msg.StepMs, StepScale: msg.StepScale,
		PromptLen: prompt / max(1, len(e.Prompts)), ContLen: cont / max(1, len(e.Conts)),
		Warmup: t.Warmup.Seconds(), Duration: t.Duration.Seconds(), Settle: t.Timeout.Seconds(), Seed: t.Seed,
	}
}

// DefaultGPUResultMs is Options.GPUResultMs's default: a verify.batch's
// encoding and decoding per draft (98.7 µs for 4 drafts) and a verify.result's
// encoding and decoding (16.7 µs), `go test -bench Codec ./events/`, median of
// 5 (docs/benchmarks.md, "Event backbone"; 2026-12-06, after the Go rules
// replaced the generic schema validator, 0.065 before): the worker's own CPU
// per draft, without the contention of this 2-core machine.
const DefaultGPUResultMs = 0.041

// GPUDecodeShare is the part of a simulated GPU server's per-draft host time
// that is the draft's decoding at the worker's consumer (the rest is its
// result's encoding and publishing): in the codec's benchmark a verify.batch
// costs 24.7 µs per draft, a verify.result 16.7 µs.
const GPUDecodeShare = 24.7 / 41.4

// DefaultGPUPublishers is Options.GPUPublishers's default: the verifier's
// default on a host of 8 cores or more (verifier.WorkerConfig.Publishers).
const DefaultGPUPublishers = 8

// gpuPublishers is the GPU rows' sim.Config.Publishers (Options.GPUPublishers).
func gpuPublishers(o Options) int {
	switch {
	case o.GPUPublishers == 0:
		return DefaultGPUPublishers
	case o.GPUPublishers < 0:
		return 0
	}
	return o.GPUPublishers
}

// gpuServer is an assumed GPU server for the simulator: a GPU's memory
// bandwidth and effective FLOP/s, serving a model shape at a weight type.
type gpuServer struct {
	gpu        string
	bw, flops  float64
	shape, typ string
	bytesPerW  float64
}

// gpuServers are the servers `sled bench sim` and `workers` project to.
var gpuServers = []gpuServer{
	{"A100-80GB", 2.0e12, 312e12 * 0.5, "llama-3.1-8b", "F16", 2},
	{"H100-80GB", 3.35e12, 989e12 * 0.5, "llama-3.1-8b", "F16", 2},
	{"H100-80GB", 3.35e12, 989e12 * 0.5, "llama-3.1-8b", "Q4_0", 0.5625},
}

func (g gpuServer) target() string { return g.shape + " " + g.typ }

func (g gpuServer) cost() sim.PassCost {
	params := shapeParams(g.shape)
	return sim.GPUCost(g.gpu, params, params*g.bytesPerW, g.bw, g.flops)
}

// RunSim calibrates the simulator on this machine (pass costs of the target,
// messaging latency of a one-device round), validates it against measured runs at
// the sizes both can do, and explores capacity for this CPU and for assumed
// A100/H100 servers with fleets of up to thousands of devices.
func RunSim(ctx context.Context, o Options) (*Report, error) {
	o = o.withDefaults()
	ps, err := o.profiles()
	if err != nil {
		return nil, err
	}
	e, err := o.env(ctx, o.Type)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	sizes := []int{1, 2, 4, 8, 16, 32}
	if o.Quick {
		sizes = []int{1, 4}
	}
	bar := o.progress(1 + 2*len(sizes))
	defer bar.Done()
	bar.Step("calibrating pass cost")
	p := ps[0]
	cal, err := e.calibrate(ctx, o, p)
	if err != nil {
		return nil, err
	}
	cost, samples := cal.cost, cal.samples
	res := &SimResult{Cost: cost, Samples: samples, Messaging: cal.msg}
	for _, n := range sizes {
		bar.Step(fmt.Sprintf("validate sled %d", n))
		t := o.trial(n, p)
		m, err := e.RunSLED(ctx, t)
		if err != nil {
			return nil, err
		}
		s := sim.SLED(e.SimConfig(t, cost, cal.msg))
		bar.Step(fmt.Sprintf("validate centralized %d", n))
		c, err := e.RunCentralized(ctx, t)
		if err != nil {
			return nil, err
		}
		sc := sim.Centralized(e.SimConfig(t, cost, cal.msg))
		chk := SimCheck{Devices: n, MeasuredSLED: m.TokensPerSec, SimSLED: s.TokensPerSec, MeasuredCentral: c.TokensPerSec, SimCentral: sc.TokensPerSec,
			MeasuredBatch: m.MeanBatch, SimBatch: s.MeanBatch, MeasuredRoundMs: m.RoundMs.Mean, SimRoundMs: s.RoundMs,
			MeasuredVerifyMs: m.VerifyMs, SimPassMs: s.PassMs}
		chk.ErrSLED, chk.ErrCentral = relErr(s.TokensPerSec, m.TokensPerSec), relErr(sc.TokensPerSec, c.TokensPerSec)
		res.Validation = append(res.Validation, chk)
	}
	res.errorStats()
	// Capacity: this CPU (fitted) and assumed GPU servers for real model sizes.
	type server struct {
		name, target string
		cost         sim.PassCost
		gpu          bool
	}
	servers := []server{{"this CPU (fitted)", filepath.Base(e.Cfg.Target), cost, false}}
	for _, g := range gpuServers {
		servers = append(servers, server{g.gpu, g.target(), g.cost(), true})
	}
	bound := o.SimMaxDevices
	for _, sv := range servers {
		for _, pr := range ps {
			sc := SimCapacity{Server: sv.name, Target: sv.target, Profile: pr.Name, Cost: sv.cost}
			cfgFor := func(n int) sim.Config {
				c := e.SimConfig(o.trial(n, pr), sv.cost, cal.msg)
				if sv.gpu {
					// Steady state: the measured trials' cold start (every
					// session's prompt at once) is not what a server of
					// thousands of clients sees. A step budget that holds every
					// decoding token and a prompt chunk (centralized.Server's
					// default 512 would starve new requests past 512 clients),
					// and no CPU contention factor.
					c.Warmup, c.Duration = 10, 10
					c.BatchTokens, c.StepScale = n+512, 1
					c.ResultMs, _ = gpuResult(o, cal.msg)
					c.Publishers, c.DecodeMs = gpuPublishers(o), c.ResultMs*GPUDecodeShare
				}
				return c
			}
			sc.SLED, _ = SearchMax(1, bound, func(n int) int { return max(1, n/32) }, func(n int) (bool, error) {
				r := sim.SLED(cfgFor(n))
				return r.P5PerDevice >= o.Required, nil
			})
			if !o.Budget.Static {
				sc.Static, _ = SearchMax(1, bound, func(n int) int { return max(1, n/32) }, func(n int) (bool, error) {
					c := cfgFor(n)
					c.Budget.Static = true
					return sim.SLED(c).P5PerDevice >= o.Required, nil
				})
			}
			sc.Centralized, _ = SearchMax(1, bound, func(int) int { return 0 }, func(n int) (bool, error) {
				return sim.Centralized(cfgFor(n)).P5PerDevice >= o.Required, nil
			})
			if sc.Centralized > 0 {
				sc.Ratio = float64(sc.SLED) / float64(sc.Centralized)
				sc.StaticRatio = float64(sc.Static) / float64(sc.Centralized)
			}
			sc.SLEDTokensPerSec = sim.SLED(cfgFor(max(sc.SLED, 1))).TokensPerSec
			sc.CentralTokensPerSec = sim.Centralized(cfgFor(max(sc.Centralized, 1))).TokensPerSec
			res.Capacity = append(res.Capacity, sc)
		}
	}
	r := o.report("sim", e)
	r.Result = res
	r.Measured = append(r.Measured, "pass-cost samples of the target on this machine; the validation runs")
	r.Modelled = []string{
		"everything in the simulated columns: drafting (Poisson at the profile rate), messaging (fixed up/hop/down latencies from the server timing of a measured 1-device round), verification (fitted or assumed pass cost, with attention over the KV cells all sessions hold; the worker verifies every queued batch in one pass, up to its slots, and runs budget-0 rounds itself); batching, drafting and budget decisions are the real batcher.Policy.Decide (devices active within 1 s), drafter.DraftPolicy over the measured acceptance and goodput.Tracker (the worker's pass-cost curve learned from its simulated passes, each device's acceptance from its rounds); the window opens as the measured one does (sim.Window: after the warm-up, once every device has a token); every session's prompt is prefilled in full (no prefix cache)",
		"GPU servers' worker time per draft: " + gpuResultSource(o, cal.msg) + gpuPublishersSource(o),
		"GPU servers: " + servers[1].cost.Source + "; " + servers[2].cost.Source + "; " + servers[3].cost.Source,
		"centralized in the simulator: centralized.Server's continuous batching step by step (a request's prompt prefilled in one pass, then one token per step; the next request admitted a step later), plus a per-step host cost calibrated from a measured 1-client run",
	}
	t := Table{Title: "Pass cost on this machine (" + cost.Source + ")", Header: []string{"sequences", "tokens", "KV cells", "measured ms", "model ms"}}
	for _, s := range samples {
		t.Rows = append(t.Rows, []string{itoa(s.Seqs), itoa(s.Tokens), itoa(s.Cells), f1(s.Ms), f1(cost.Ms(s.Tokens, s.Seqs, s.Cells))})
	}
	mg := cal.msg
	v := Table{Title: fmt.Sprintf("Simulator vs measured (%s devices; up %.1f ms, hop %.1f ms, down %.1f ms, +%.2f ms per draft; centralized +%.1f ms per step, passes x%.2f; per-draft cost and centralized factor fitted at %d devices)",
		p.Name, mg.UpMs, mg.HopMs, mg.DownMs, mg.ResultMs, mg.StepMs, mg.StepScale, mg.CalibDevices),
		Header: []string{"devices", "SLED measured tok/s", "SLED sim", "error", "centralized measured", "centralized sim", "error", "drafts per pass measured/sim", "round ms measured/sim", "verify ms measured / pass ms sim"}}
	for _, c := range res.Validation {
		v.Rows = append(v.Rows, []string{itoa(c.Devices), f1(c.MeasuredSLED), f1(c.SimSLED), pct(c.ErrSLED), f1(c.MeasuredCentral), f1(c.SimCentral), pct(c.ErrCentral),
			f1(c.MeasuredBatch) + " / " + f1(c.SimBatch), f1(c.MeasuredRoundMs) + " / " + f1(c.SimRoundMs), f1(c.MeasuredVerifyMs) + " / " + f1(c.SimPassMs)})
	}
	v.Rows = append(v.Rows, []string{"mean abs (range)", "", "", fmt.Sprintf("%.0f%% (%s to %s)", 100*res.MeanAbsErrSLED, pct(res.MinErrSLED), pct(res.MaxErrSLED)),
		"", "", fmt.Sprintf("%.0f%% (%s to %s)", 100*res.MeanAbsErrCentral, pct(res.MinErrCentral), pct(res.MaxErrCentral)), "", "", ""})
	k := Table{Title: fmt.Sprintf("Simulated capacity (every device >= %.1f tokens/s; search bound %d)", o.Required, bound),
		Header: []string{"server", "target", "profile", "SLED", "static-length SLED", "centralized", "SLED / centralized", "static / centralized", "SLED tok/s at capacity", "centralized tok/s at capacity"}}
	for _, c := range res.Capacity {
		static, ratio := "-", "-"
		if !o.Budget.Static {
			static, ratio = capStr(c.Static, bound), f2(c.StaticRatio)
		}
		k.Rows = append(k.Rows, []string{c.Server, c.Target, c.Profile, capStr(c.SLED, bound), static, capStr(c.Centralized, bound), f2(c.Ratio), ratio, f1(c.SLEDTokensPerSec), f1(c.CentralTokensPerSec)})
	}
	r.Tables = append(r.Tables, t, v, k)
	err = o.plot(r, func(dir string) ([]string, error) {
		var ms, ss, mc, scs Series
		ms.Name, ss.Name, mc.Name, scs.Name = "SLED measured", "SLED simulated", "centralized measured", "centralized simulated"
		for _, c := range res.Validation {
			x := float64(c.Devices)
			ms.X, ms.Y = append(ms.X, x), append(ms.Y, c.MeasuredSLED)
			ss.X, ss.Y = append(ss.X, x), append(ss.Y, c.SimSLED)
			mc.X, mc.Y = append(mc.X, x), append(mc.Y, c.MeasuredCentral)
			scs.X, scs.Y = append(scs.X, x), append(scs.Y, c.SimCentral)
		}
		p, err := linePlot(dir, "sim-validation", "Simulator vs measured, "+r.Target, "devices", "tokens/s, all devices", ms, ss, mc, scs)
		return []string{p}, err
	})
	return r, err
}

// gpuResult is the GPU rows' worker time per draft (Options.GPUResultMs)
// and where it comes from.
func gpuResult(o Options, m Messaging) (ms float64, source string) {
	switch {
	case o.GPUResultMs == 0:
		return DefaultGPUResultMs, "ASSUMED from the event codec's benchmark: decoding a draft, encoding its result"
	case o.GPUResultMs > 0:
		return o.GPUResultMs, "--gpu-result-ms"
	}
	return m.ResultMs, "this machine's fitted per-draft cost"
}

func gpuPublishersSource(o Options) string {
	if n := gpuPublishers(o); n > 0 {
		return fmt.Sprintf("; beside the passes: %.0f%% of it the draft's decoding at the worker's one consumer, the rest its result's publishing by %d goroutines while the next pass runs", 100*GPUDecodeShare, n)
	}
	return "; inside the pass loop (--gpu-publishers -1)"
}

func gpuResultSource(o Options, m Messaging) string {
	ms, src := gpuResult(o, m)
	return fmt.Sprintf("%.3f ms (%s)", ms, src)
}

// calibration is the simulator fitted to this machine.
type calibration struct {
	cost    sim.PassCost
	samples []sim.Sample
	msg     Messaging
}

// calibrate fits the pass cost of e's target (passes timed over a cache holding
// short and long histories) and the messaging costs of measured one-device runs
// with profile p (see Messaging).
func (e *Env) calibrate(ctx context.Context, o Options, p Profile) (*calibration, error) {
	seqs, per, hists := []int{1, 2, 4, 8, 16, 32}, []int{1, 2, 4, 8}, []int{16, 128}
	if o.Quick {
		seqs, per, hists = []int{1, 4, 8}, []int{1, 4}, []int{16, 64}
	}
	cost, samples, err := sim.Calibrate(ctx, e.Target, e.Cfg.Threads, seqs, per, hists, 3)
	if err != nil {
		return nil, err
	}
	t := o.trial(1, p)
	t.Seed += 7919 // not the validation's own run
	one, err := e.RunSLED(ctx, t)
	if err != nil {
		return nil, err
	}
	if one.Rounds == 0 {
		return nil, fmt.Errorf("bench: the one-device calibration run completed no round (a stalled machine?)")
	}
	msg := Messaging{UpMs: one.QueueMs, HopMs: one.BatchMs, DownMs: max(0, one.RoundMs.Mean-one.QueueMs-one.BatchMs-one.VerifyMs)}
	c, err := e.RunCentralized(ctx, t)
	if err != nil {
		return nil, err
	}
	if c.TokensPerSec > 0 {
		cfg := e.SimConfig(t, cost, Messaging{})
		msg.StepMs = max(0, 1000/c.TokensPerSec-cost.Ms(1, 1, cfg.PromptLen+cfg.ContLen/2))
	}
	// The per-draft and per-request host costs, from a larger measured fleet:
	// near the capacity, and a size the validation does not use.
	msg.CalibDevices = 24
	if o.Quick {
		msg.CalibDevices = 3
	}
	t = o.trial(msg.CalibDevices, p)
	t.Seed += 7919
	ms, err := e.RunSLED(ctx, t)
	if err != nil {
		return nil, err
	}
	msg.ResultMs = match(0, 20, ms.TokensPerSec, func(x float64) float64 {
		m := msg
		m.ResultMs = x
		return sim.SLED(e.SimConfig(t, cost, m)).TokensPerSec
	})
	mc, err := e.RunCentralized(ctx, t)
	if err != nil {
		return nil, err
	}
	msg.StepScale = match(0.5, 5, mc.TokensPerSec, func(x float64) float64 {
		m := msg
		m.StepScale = x
		return sim.Centralized(e.SimConfig(t, cost, m)).TokensPerSec
	})
	return &calibration{cost: cost, samples: samples, msg: msg}, nil
}

// match returns the x in [lo, hi] at which the decreasing function f reaches
// target, by bisection: lo if f(lo) is already at or below it, hi if f(hi) is
// still above.
func match(lo, hi, target float64, f func(float64) float64) float64 {
	if target <= 0 || f(lo) <= target {
		return lo
	}
	if f(hi) > target {
		return hi
	}
	for range 30 {
		mid := (lo + hi) / 2
		if f(mid) > target {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// capacity is the simulated SLED capacity with drafting policy pol.
func (c *calibration) capacity(e *Env, o Options, p Profile, pol drafter.DraftPolicy, required float64, bound int) int {
	n, _ := SearchMax(1, bound, func(n int) int { return max(1, n/32) }, func(n int) (bool, error) {
		t := o.trial(n, p)
		t.Policy = pol
		return sim.SLED(e.SimConfig(t, c.cost, c.msg)).P5PerDevice >= required, nil
	})
	return n
}

func pct(x float64) string { return fmt.Sprintf("%+.0f%%", 100*x) }

// relErr is (sim-measured)/measured, 0 when nothing was measured (a stalled
// run, which errorStats leaves out).
func relErr(sim, measured float64) float64 {
	if measured <= 0 {
		return 0
	}
	return (sim - measured) / measured
}

// errorStats fills the mean absolute and extreme errors over the validated
// sizes whose measured runs got tokens.
func (r *SimResult) errorStats() {
	stats := func(errs, measured []float64) (mean, lo, hi float64) {
		n := 0
		for i, e := range errs {
			if measured[i] <= 0 {
				continue
			}
			if n == 0 {
				lo, hi = e, e
			}
			mean += math.Abs(e)
			lo, hi = min(lo, e), max(hi, e)
			n++
		}
		if n > 0 {
			mean /= float64(n)
		}
		return mean, lo, hi
	}
	var es, ms, ec, mc []float64
	for _, c := range r.Validation {
		es, ms = append(es, c.ErrSLED), append(ms, c.MeasuredSLED)
		ec, mc = append(ec, c.ErrCentral), append(mc, c.MeasuredCentral)
	}
	r.MeanAbsErrSLED, r.MinErrSLED, r.MaxErrSLED = stats(es, ms)
	r.MeanAbsErrCentral, r.MinErrCentral, r.MaxErrCentral = stats(ec, mc)
}

// shapeParams is the parameter count of a known shape with its real vocabulary.
func shapeParams(name string) float64 {
	s, err := gguf.LookupShape(name)
	if err != nil {
		return 0
	}
	hd := s.Embedding / s.Heads
	e, kv, ff := float64(s.Embedding), float64(s.KVHeads*hd), float64(s.FeedForward)
	layer := e*e*2 + e*kv*2 + 3*e*ff
	emb := e * float64(s.Vocab)
	if !s.TiedEmbeddings {
		emb *= 2
	}
	return float64(s.Layers)*layer + emb
}
