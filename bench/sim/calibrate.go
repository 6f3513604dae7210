package sim

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/sled-project/sled/engine"
)

// Sample is one measured forward pass: seqs sequences, tokens tokens in all,
// cells KV positions in use (the history of every sequence in the cache plus the
// pass's own tokens).
type Sample struct {
	Seqs   int     `json:"seqs"`
	Tokens int     `json:"tokens"`
	Cells  int     `json:"cells"`
	Ms     float64 `json:"ms"`
}

// Fit fits PassCost to samples by least squares on relative error (a 10 ms pass
// counts as much as a 1 s one), then measures its base curve (Knots), and
// returns it with the mean absolute relative error of the result and the number
// of outliers left out: samples slower than the first fit by more than 3 times
// its median relative error (and by more than 25%), passes stalled by other work
// on a shared machine, are dropped before the rest are fitted again. A term the
// samples cannot separate from the others (seqs not varied independently of
// tokens, cells not varied) is left 0.
func Fit(samples []Sample) (PassCost, float64, int) {
	pc := fit(samples)
	rel := func(pc PassCost, s Sample) float64 { return (s.Ms - pc.Ms(s.Tokens, s.Seqs, s.Cells)) / s.Ms }
	errs := make([]float64, len(samples))
	for i, s := range samples {
		errs[i] = math.Abs(rel(pc, s))
	}
	sorted := slices.Clone(errs)
	slices.Sort(sorted)
	dropped := 0
	if len(sorted) > 0 {
		limit := max(0.25, 3*sorted[len(sorted)/2])
		var kept []Sample
		for _, s := range samples {
			if rel(pc, s) <= limit {
				kept = append(kept, s)
			}
		}
		if dropped = len(samples) - len(kept); dropped > 0 && len(kept) >= nTerms {
			pc, samples = fit(kept), kept
		} else {
			dropped = 0
		}
	}
	pc.Knots = knots(pc, samples)
	errSum := 0.0
	for _, s := range samples {
		errSum += math.Abs(rel(pc, s))
	}
	if len(samples) > 0 {
		errSum /= float64(len(samples))
	}
	return pc, errSum, dropped
}

// knots is the base curve of pc measured: for every token count sampled, the
// median over its samples of the time left after pc's per-sequence and
// attention terms. It returns nil unless at least two token counts were sampled.
func knots(pc PassCost, samples []Sample) []Knot {
	by := map[int][]float64{}
	for _, s := range samples {
		t := float64(s.Tokens)
		by[s.Tokens] = append(by[s.Tokens], s.Ms-pc.PerSeqMs*float64(s.Seqs)-(pc.CellMs+pc.AttnMs*t)*float64(s.Cells)/1000)
	}
	if len(by) < 2 {
		return nil
	}
	var k []Knot
	for t, ms := range by {
		slices.Sort(ms)
		k = append(k, Knot{Tokens: t, Ms: ms[(len(ms)-1)/2]})
	}
	slices.SortFunc(k, func(a, b Knot) int { return a.Tokens - b.Tokens })
	return k
}

// nTerms is the number of PassCost's fitted coefficients.
const nTerms = 5

func fit(samples []Sample) PassCost {
	x := func(s Sample) [nTerms]float64 {
		t, c := float64(s.Tokens), float64(s.Cells)/1000
		return [nTerms]float64{1, t, float64(s.Seqs), t * c, c}
	}
	// Try every term, then without the cell terms, the per-sequence one, both.
	var c [nTerms]float64
	for _, use := range [][nTerms]bool{{true, true, true, true, true}, {true, true, true, false, false}, {true, true, false, true, true}, {true, true, false, false, false}} {
		var ok bool
		if c, ok = leastSquares(samples, x, use); ok {
			break
		}
	}
	return PassCost{FixedMs: c[0], PerTokenMs: c[1], PerSeqMs: c[2], AttnMs: c[3], CellMs: c[4]}
}

// leastSquares solves the normal equations of ms = sum c[i]*x[i], each sample
// weighted by 1/ms^2, over the terms in use (the others are 0); ok is false when
// they are singular.
func leastSquares(samples []Sample, x func(Sample) [nTerms]float64, use [nTerms]bool) ([nTerms]float64, bool) {
	var idx []int
	for i, u := range use {
		if u {
			idx = append(idx, i)
		}
	}
	n := len(idx)
	m := make([][]float64, n)
	for i := range m {
		m[i] = make([]float64, n+1)
	}
	for _, s := range samples {
		v := x(s)
		w := 1 / (s.Ms * s.Ms)
		for i, a := range idx {
			for j, b := range idx {
				m[i][j] += w * v[a] * v[b]
			}
			m[i][n] += w * v[a] * s.Ms
		}
	}
	sol, ok := solve(m)
	var c [nTerms]float64
	if !ok {
		return c, false
	}
	for i, a := range idx {
		c[a] = sol[i]
	}
	return c, true
}

// solve solves a linear system given as its augmented n x (n+1) matrix by
// Gauss-Jordan elimination with partial pivoting; ok is false when the system is
// singular (relative to its own scale).
func solve(m [][]float64) ([]float64, bool) {
	n := len(m)
	for col := range n {
		p := col
		for r := col + 1; r < n; r++ {
			if math.Abs(m[r][col]) > math.Abs(m[p][col]) {
				p = r
			}
		}
		scale := 0.0
		for r := range n {
			scale = max(scale, math.Abs(m[r][col]))
		}
		if scale == 0 || math.Abs(m[p][col]) < 1e-9*scale {
			return nil, false
		}
		m[col], m[p] = m[p], m[col]
		for r := range n {
			if r == col {
				continue
			}
			f := m[r][col] / m[col][col]
			for k := col; k <= n; k++ {
				m[r][k] -= f * m[col][k]
			}
		}
	}
	out := make([]float64, n)
	for i := range n {
		out[i] = m[i][n] / m[i][i]
	}
	return out, true
}

// Calibrate times forward passes of model on this machine and fits a PassCost.
// For each history length in hists it fills a context of max(seqs) sequences
// with that many tokens each (so the KV cells in use vary independently of the
// pass), then times every combination of seqs (sequences in the pass) and per
// (tokens per sequence). Each point is the fastest of reps passes.
func Calibrate(ctx context.Context, model *engine.Model, threads int, seqs, per, hists []int, reps int) (PassCost, []Sample, error) {
	maxSeqs, maxPer := slices.Max(seqs), slices.Max(per)
	tok := func(i int) engine.Token { return engine.Token(1 + i%(model.VocabSize()-1)) }
	var samples []Sample
	for _, hist := range hists {
		s, err := calibrateAt(ctx, model, threads, seqs, per, hist, maxSeqs, maxPer, reps, tok)
		if err != nil {
			return PassCost{}, nil, err
		}
		samples = append(samples, s...)
	}
	pc, fitErr, dropped := Fit(samples)
	pc.Source = fmt.Sprintf("fit to %d measured passes on this machine (%d threads; %d outliers left out; mean |error| %.0f%%)", len(samples)-dropped, threads, dropped, 100*fitErr)
	return pc, samples, nil
}

func calibrateAt(ctx context.Context, model *engine.Model, threads int, seqs, per []int, hist, maxSeqs, maxPer, reps int, tok func(int) engine.Token) ([]Sample, error) {
	ectx, err := model.NewContext(engine.ContextOptions{Slots: maxSeqs, SlotContext: hist + maxPer + 1, BatchSize: max(512, maxSeqs*maxPer), Threads: threads})
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	defer ectx.Close()
	var e []engine.Entry
	for s := range maxSeqs {
		for p := range hist {
			e = append(e, engine.Entry{Seq: s, Pos: p, Token: tok(p + s)})
		}
	}
	for len(e) > 0 {
		n := min(len(e), 512)
		if _, err := ectx.Decode(ctx, e[:n]); err != nil {
			return nil, fmt.Errorf("sim: prefill: %w", err)
		}
		e = e[n:]
	}
	var samples []Sample
	for _, n := range seqs {
		for _, k := range per {
			var e []engine.Entry
			for s := range n {
				for j := range k {
					e = append(e, engine.Entry{Seq: s, Pos: hist + j, Token: tok(j), Logits: true})
				}
			}
			var ms []float64
			for range reps {
				t0 := time.Now()
				if _, err := ectx.Decode(ctx, e); err != nil {
					return nil, fmt.Errorf("sim: pass: %w", err)
				}
				ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
				for s := range n {
					if err := ectx.Remove(s, hist); err != nil {
						return nil, fmt.Errorf("sim: %w", err)
					}
				}
			}
			// the fastest: a shared machine only ever adds time
			samples = append(samples, Sample{Seqs: n, Tokens: n * k, Cells: maxSeqs*hist + n*k, Ms: slices.Min(ms)})
		}
	}
	return samples, nil
}

// GPUCost returns an assumed pass cost for a GPU server, which no measurement
// here supports: a decode pass is bound by reading the weights once
// (weightBytes / bandwidth) until the batch's arithmetic (2 FLOPs per parameter
// per token at flops FLOP/s effective) exceeds that; the model takes the larger
// of the two as max(a, b) ≈ a + b for the linear form, plus a fixed 1 ms launch
// and framework overhead. Attention over the KV cache is left out.
func GPUCost(name string, params, weightBytes, bandwidth, flops float64) PassCost {
	return PassCost{
		FixedMs:    1 + weightBytes/bandwidth*1000,
		PerTokenMs: 2 * params / flops * 1000,
		Source: fmt.Sprintf("ASSUMED %s model: 1 ms overhead + %.1f GB weights / %.2f TB/s + %.2g FLOP/token at %.0f TFLOP/s effective (attention left out)",
			name, weightBytes/1e9, bandwidth/1e12, 2*params, flops/1e12),
	}
}
