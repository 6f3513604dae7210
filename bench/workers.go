package bench

import (
	"context"
	"fmt"

	"github.com/sled-project/sled/bench/sim"
)

// WorkersResult is the `workers` experiment: verified tokens/s of one fleet
// with 1, 2 and 3 verifier workers on this machine, the simulator's figure for
// the same runs, and its projection for N workers on assumed GPU servers.
type WorkersResult struct {
	Devices    int                 `json:"devices"`
	Profile    string              `json:"profile"`
	Measured   []WorkersRow        `json:"measured"`
	Projection []WorkersProjection `json:"projection"`
}

// WorkersRow is one measured run.
type WorkersRow struct {
	Workers int          `json:"workers"`
	Repeat  int          `json:"repeat"`
	SLED    *Measurement `json:"sled"`
	// Sim is the simulator's tokens/s for the same trial (this CPU's fitted
	// cost, W workers each with the cores one worker would have divided by W:
	// the pass cost is scaled by W, since the fit is for all the cores).
	Sim float64 `json:"sim_tokens_per_sec"`
}

// WorkersProjection is the simulator's tokens/s for Workers workers, each a
// server of its own.
type WorkersProjection struct {
	Server       string  `json:"server"`
	Target       string  `json:"target"`
	Devices      int     `json:"devices"`
	Workers      int     `json:"workers"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	PerWorker    float64 `json:"per_worker"`
	MeanBatch    float64 `json:"mean_batch"`
	PassMs       float64 `json:"pass_ms"`
	RoundMs      float64 `json:"round_ms"`
}

// runWorkers measures horizontal scaling of the verifier.
func runWorkers(ctx context.Context, o Options) (*Report, error) {
	ps, err := o.profiles()
	if err != nil {
		return nil, err
	}
	p := ps[0]
	n, repeats := 32, 2
	fleet, gpuWorkers := 2048, []int{1, 2, 4, 8}
	if o.Quick {
		n, repeats, fleet, gpuWorkers = 8, 1, 512, []int{1, 2, 4}
	}
	workers := []int{1, 2, 3}
	e, err := o.env(ctx, o.Type)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	bar := o.progress(1 + repeats*len(workers))
	defer bar.Done()
	bar.Step("calibrating pass cost")
	cal, err := e.calibrate(ctx, o, p)
	if err != nil {
		return nil, err
	}
	res := &WorkersResult{Devices: n, Profile: p.Name}
	// Interleaved repeats: this machine is shared and noisy.
	for rep := range repeats {
		for _, w := range workers {
			bar.Step(fmt.Sprintf("%d workers, repeat %d", w, rep+1))
			t := o.trial(n, p)
			t.Workers = w
			m, err := e.RunSLED(ctx, t)
			if err != nil {
				return nil, err
			}
			sc := e.SimConfig(t, cal.cost, cal.msg)
			sc.PassScale = float64(w) // each worker has 1/W of the cores the fit had
			res.Measured = append(res.Measured, WorkersRow{Workers: w, Repeat: rep + 1, SLED: m, Sim: sim.SLED(sc).TokensPerSec})
		}
	}
	g := gpuServers[1] // H100-80GB, Llama-3.1-8B F16
	cost := g.cost()
	for _, w := range gpuWorkers {
		t := o.trial(fleet, p)
		t.Workers = w
		c := e.SimConfig(t, cost, cal.msg)
		c.Warmup, c.Duration = 10, 10 // steady state, as RunSim's GPU servers
		c.Slots = fleet/w + 4
		r := sim.SLED(c)
		res.Projection = append(res.Projection, WorkersProjection{Server: g.gpu, Target: g.target(), Devices: fleet, Workers: w,
			TokensPerSec: r.TokensPerSec, PerWorker: r.TokensPerSec / float64(w), MeanBatch: r.MeanBatch, PassMs: r.PassMs, RoundMs: r.RoundMs})
	}
	r := o.report("workers", e)
	r.Result = res
	r.Modelled = append(r.Modelled, "projection: the simulator (same batcher policy and verifier coalescing code) with "+cost.Source+"; sessions stick to worker i mod W")
	t := Table{Title: fmt.Sprintf("Verifier workers on this machine (%d %s devices; the server's threads shared out among the workers)", n, p.Name),
		Header: []string{"workers", "repeat", "verified tokens/s", "vs 1 worker (same repeat)", "simulated tokens/s", "mean batch", "round ms p50/p99"}}
	base := map[int]float64{}
	for _, row := range res.Measured {
		if row.Workers == 1 {
			base[row.Repeat] = row.SLED.TokensPerSec
		}
	}
	for _, row := range res.Measured {
		m := row.SLED
		t.Rows = append(t.Rows, []string{itoa(row.Workers), itoa(row.Repeat), f1(m.TokensPerSec), f2(m.TokensPerSec / max(base[row.Repeat], 1e-9)),
			f1(row.Sim), f1(m.MeanBatch), f1(m.RoundMs.P50) + " / " + f1(m.RoundMs.P99)})
	}
	pt := Table{Title: fmt.Sprintf("Simulated: %d %s devices on N %s workers (%s; each worker's host cost %.2f ms per draft verified, fitted on this machine: it, not the GPU, bounds one worker here)", fleet, p.Name, g.gpu, cost.Source, cal.msg.ResultMs),
		Header: []string{"workers", "tokens/s", "per worker", "vs 1 worker", "drafts per pass", "pass ms", "round ms"}}
	for _, q := range res.Projection {
		pt.Rows = append(pt.Rows, []string{itoa(q.Workers), f1(q.TokensPerSec), f1(q.PerWorker), f2(q.TokensPerSec / max(res.Projection[0].TokensPerSec, 1e-9)), f1(q.MeanBatch), f1(q.PassMs), f1(q.RoundMs)})
	}
	r.Tables = append(r.Tables, t, pt)
	return r, nil
}
