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
	// UpMs and DownMs are the messaging latencies calibrated from a measured
	// one-device round.
	UpMs   float64 `json:"up_ms"`
	DownMs float64 `json:"down_ms"`
	// Validation compares simulated and measured runs at the same sizes.
	Validation []SimCheck `json:"validation"`
	// MeanAbsErrSLED and MeanAbsErrCentral are the mean |sim-measured|/measured
	// whole-system tokens/s over Validation.
	MeanAbsErrSLED    float64 `json:"mean_abs_err_sled"`
	MeanAbsErrCentral float64 `json:"mean_abs_err_centralized"`
	// Capacity is the simulated capacity per server model.
	Capacity []SimCapacity `json:"capacity"`
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

// SimConfig is the simulator configuration for a trial of the real system.
func (e *Env) SimConfig(t Trial, cost sim.PassCost, up, down float64) sim.Config {
	t = t.withDefaults()
	return sim.Config{
		Devices: t.Devices, DraftRate: t.Profile.TokensPerSec,
		Rounds: func(i int) sim.RoundSource {
			return samplerSource{NewSampler(e.Acceptance, t.Policy, t.Seed*1_000_003+uint64(i))}
		},
		Batch: t.Batch, Cost: cost, UpMs: up, DownMs: down, Seed: t.Seed,
	}
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
	if o.allProfiles {
		ps = Profiles()
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
	res := &SimResult{Cost: cost, Samples: samples, UpMs: cal.up, DownMs: cal.down}
	for _, n := range sizes {
		bar.Step(fmt.Sprintf("validate sled %d", n))
		t := o.trial(n, p)
		m, err := e.RunSLED(ctx, t)
		if err != nil {
			return nil, err
		}
		s := sim.SLED(e.SimConfig(t, cost, res.UpMs, res.DownMs))
		bar.Step(fmt.Sprintf("validate centralized %d", n))
		c, err := e.RunCentralized(ctx, t)
		if err != nil {
			return nil, err
		}
		sc := sim.Centralized(e.SimConfig(t, cost, 0, 0))
		chk := SimCheck{Devices: n, MeasuredSLED: m.TokensPerSec, SimSLED: s.TokensPerSec, MeasuredCentral: c.TokensPerSec, SimCentral: sc.TokensPerSec,
			MeasuredBatch: m.MeanBatch, SimBatch: s.MeanBatch, MeasuredRoundMs: m.RoundMs.Mean, SimRoundMs: s.RoundMs}
		chk.ErrSLED = (s.TokensPerSec - m.TokensPerSec) / m.TokensPerSec
		chk.ErrCentral = (sc.TokensPerSec - c.TokensPerSec) / c.TokensPerSec
		res.MeanAbsErrSLED += math.Abs(chk.ErrSLED) / float64(len(sizes))
		res.MeanAbsErrCentral += math.Abs(chk.ErrCentral) / float64(len(sizes))
		res.Validation = append(res.Validation, chk)
	}
	// Capacity: this CPU (fitted) and assumed GPU servers for real model sizes.
	type server struct {
		name, target string
		cost         sim.PassCost
	}
	servers := []server{{"this CPU (fitted)", filepath.Base(e.Cfg.Target), cost}}
	for _, g := range []struct {
		gpu        string
		bw, flops  float64
		shape, typ string
		bytesPerW  float64
	}{
		{"A100-80GB", 2.0e12, 312e12 * 0.5, "llama-3.1-8b", "F16", 2},
		{"H100-80GB", 3.35e12, 989e12 * 0.5, "llama-3.1-8b", "F16", 2},
		{"H100-80GB", 3.35e12, 989e12 * 0.5, "llama-3.1-8b", "Q4_0", 0.5625},
	} {
		params := shapeParams(g.shape)
		servers = append(servers, server{g.gpu, g.shape + " " + g.typ, sim.GPUCost(g.gpu, params, params*g.bytesPerW, g.bw, g.flops)})
	}
	bound := 4096
	if o.Quick {
		bound = 512
	}
	for _, sv := range servers {
		for _, pr := range ps {
			sc := SimCapacity{Server: sv.name, Target: sv.target, Profile: pr.Name, Cost: sv.cost}
			cfgFor := func(n int) sim.Config {
				c := e.SimConfig(o.trial(n, pr), sv.cost, res.UpMs, res.DownMs)
				c.Warmup, c.Duration = 1, 5
				return c
			}
			sc.SLED, _ = SearchMax(1, bound, func(n int) int { return max(1, n/32) }, func(n int) (bool, error) {
				r := sim.SLED(cfgFor(n))
				return r.P5PerDevice >= o.Required, nil
			})
			sc.Centralized, _ = SearchMax(1, bound, func(int) int { return 0 }, func(n int) (bool, error) {
				return sim.Centralized(cfgFor(n)).P5PerDevice >= o.Required, nil
			})
			if sc.Centralized > 0 {
				sc.Ratio = float64(sc.SLED) / float64(sc.Centralized)
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
		"everything in the simulated columns: drafting (Poisson at the profile rate), messaging (fixed up/down latency from a measured 1-device round), verification (fitted or assumed pass cost); batching and drafting decisions are the real batcher.Policy.Decide and drafter.DraftPolicy over the measured acceptance",
		"GPU servers: " + servers[1].cost.Source + "; " + servers[2].cost.Source + "; " + servers[3].cost.Source,
		"centralized in the simulator: every client always decoding, prefill left out",
	}
	t := Table{Title: "Pass cost on this machine (" + cost.Source + ")", Header: []string{"sequences", "tokens", "measured ms", "model ms"}}
	for _, s := range samples {
		t.Rows = append(t.Rows, []string{itoa(s.Seqs), itoa(s.Tokens), f1(s.Ms), f1(cost.Ms(s.Tokens, s.Seqs))})
	}
	v := Table{Title: fmt.Sprintf("Simulator vs measured (%s devices; up %.1f ms, down %.1f ms)", p.Name, res.UpMs, res.DownMs),
		Header: []string{"devices", "SLED measured tok/s", "SLED sim", "error", "centralized measured", "centralized sim", "error", "batch measured/sim", "round ms measured/sim"}}
	for _, c := range res.Validation {
		v.Rows = append(v.Rows, []string{itoa(c.Devices), f1(c.MeasuredSLED), f1(c.SimSLED), pct(c.ErrSLED), f1(c.MeasuredCentral), f1(c.SimCentral), pct(c.ErrCentral),
			f1(c.MeasuredBatch) + " / " + f1(c.SimBatch), f1(c.MeasuredRoundMs) + " / " + f1(c.SimRoundMs)})
	}
	v.Rows = append(v.Rows, []string{"mean abs", "", "", fmt.Sprintf("%.0f%%", 100*res.MeanAbsErrSLED), "", "", fmt.Sprintf("%.0f%%", 100*res.MeanAbsErrCentral), "", ""})
	k := Table{Title: fmt.Sprintf("Simulated capacity (every device >= %.1f tokens/s; search bound %d)", o.Required, bound),
		Header: []string{"server", "target", "profile", "SLED", "centralized", "SLED / centralized", "SLED tok/s at capacity", "centralized tok/s at capacity"}}
	for _, c := range res.Capacity {
		k.Rows = append(k.Rows, []string{c.Server, c.Target, c.Profile, capStr(c.SLED, bound), capStr(c.Centralized, bound), f2(c.Ratio), f1(c.SLEDTokensPerSec), f1(c.CentralTokensPerSec)})
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

// calibration is the simulator fitted to this machine.
type calibration struct {
	cost     sim.PassCost
	samples  []sim.Sample
	up, down float64
}

// calibrate fits the pass cost of e's target and the messaging latency of a
// measured one-device round with profile p.
func (e *Env) calibrate(ctx context.Context, o Options, p Profile) (*calibration, error) {
	seqs, per := []int{1, 2, 4, 8, 16, 32}, []int{1, 2, 4, 8}
	if o.Quick {
		seqs, per = []int{1, 4, 8}, []int{1, 4}
	}
	cost, samples, err := sim.Calibrate(ctx, e.Target, e.Cfg.Threads, seqs, per, 64, 3)
	if err != nil {
		return nil, err
	}
	one, err := e.RunSLED(ctx, o.trial(1, p))
	if err != nil {
		return nil, err
	}
	transport := max(0, one.RoundMs.Mean-one.VerifyMs)
	return &calibration{cost: cost, samples: samples, up: transport / 2, down: transport / 2}, nil
}

// capacity is the simulated SLED capacity with drafting policy pol.
func (c *calibration) capacity(e *Env, o Options, p Profile, pol drafter.DraftPolicy, required float64, bound int) int {
	n, _ := SearchMax(1, bound, func(n int) int { return max(1, n/32) }, func(n int) (bool, error) {
		t := o.trial(n, p)
		t.Policy = pol
		cfg := e.SimConfig(t, c.cost, c.up, c.down)
		cfg.Warmup, cfg.Duration = 1, 5
		return sim.SLED(cfg).P5PerDevice >= required, nil
	})
	return n
}

func pct(x float64) string { return fmt.Sprintf("%+.0f%%", 100*x) }

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
