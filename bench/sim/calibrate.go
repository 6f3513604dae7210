package sim

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/sled-project/sled/engine"
)

// Sample is one measured forward pass: seqs sequences, tokens tokens in all.
type Sample struct {
	Seqs   int     `json:"seqs"`
	Tokens int     `json:"tokens"`
	Ms     float64 `json:"ms"`
}

// Fit fits PassCost to samples by least squares and returns it with the mean
// absolute relative error of the fit. It needs samples that vary both tokens and
// seqs independently; otherwise PerSeqMs is 0 and the fit is in tokens alone.
func Fit(samples []Sample) (PassCost, float64) {
	// Normal equations for ms = a + b*tokens + c*seqs.
	var m [3][4]float64
	for _, s := range samples {
		x := [3]float64{1, float64(s.Tokens), float64(s.Seqs)}
		for i := range 3 {
			for j := range 3 {
				m[i][j] += x[i] * x[j]
			}
			m[i][3] += x[i] * s.Ms
		}
	}
	c, ok := solve3(m)
	if !ok {
		// tokens and seqs collinear: fit ms = a + b*tokens
		var m2 [3][4]float64
		m2[2][2] = 1
		for i := range 2 {
			for j := range 2 {
				m2[i][j] = m[i][j]
			}
			m2[i][3] = m[i][3]
		}
		c, _ = solve3(m2)
	}
	pc := PassCost{FixedMs: c[0], PerTokenMs: c[1], PerSeqMs: c[2]}
	errSum := 0.0
	for _, s := range samples {
		errSum += math.Abs(pc.Ms(s.Tokens, s.Seqs)-s.Ms) / s.Ms
	}
	if len(samples) > 0 {
		errSum /= float64(len(samples))
	}
	return pc, errSum
}

// solve3 solves a 3x3 linear system (augmented matrix) by Gaussian elimination
// with partial pivoting.
func solve3(m [3][4]float64) ([3]float64, bool) {
	for col := range 3 {
		p := col
		for r := col + 1; r < 3; r++ {
			if math.Abs(m[r][col]) > math.Abs(m[p][col]) {
				p = r
			}
		}
		if math.Abs(m[p][col]) < 1e-9 {
			return [3]float64{}, false
		}
		m[col], m[p] = m[p], m[col]
		for r := range 3 {
			if r == col {
				continue
			}
			f := m[r][col] / m[col][col]
			for k := col; k < 4; k++ {
				m[r][k] -= f * m[col][k]
			}
		}
	}
	return [3]float64{m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]}, true
}

// Calibrate times forward passes of model on this machine for every combination
// of seqs (sequences in the pass) and per (tokens per sequence), each sequence
// with a history of hist tokens, and fits a PassCost. Each point is the median of
// reps passes.
func Calibrate(ctx context.Context, model *engine.Model, threads int, seqs, per []int, hist, reps int) (PassCost, []Sample, error) {
	maxSeqs, maxPer := slices.Max(seqs), slices.Max(per)
	ectx, err := model.NewContext(engine.ContextOptions{Slots: maxSeqs, SlotContext: hist + maxPer + 1, BatchSize: max(512, maxSeqs*maxPer), Threads: threads})
	if err != nil {
		return PassCost{}, nil, fmt.Errorf("sim: %w", err)
	}
	defer ectx.Close()
	tok := func(i int) engine.Token { return engine.Token(1 + i%(model.VocabSize()-1)) }
	for s := range maxSeqs {
		var e []engine.Entry
		for p := range hist {
			e = append(e, engine.Entry{Seq: s, Pos: p, Token: tok(p + s)})
		}
		if _, err := ectx.Decode(ctx, e); err != nil {
			return PassCost{}, nil, fmt.Errorf("sim: prefill: %w", err)
		}
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
					return PassCost{}, nil, fmt.Errorf("sim: pass: %w", err)
				}
				ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
				for s := range n {
					if err := ectx.Remove(s, hist); err != nil {
						return PassCost{}, nil, fmt.Errorf("sim: %w", err)
					}
				}
			}
			slices.Sort(ms)
			samples = append(samples, Sample{Seqs: n, Tokens: n * k, Ms: ms[len(ms)/2]})
		}
	}
	pc, fitErr := Fit(samples)
	pc.Source = fmt.Sprintf("fit to %d measured passes on this machine (%d threads; mean |error| %.0f%%)", len(samples), threads, 100*fitErr)
	return pc, samples, nil
}

// GPUCost returns an assumed pass cost for a GPU server, which no measurement
// here supports: a decode pass is bound by reading the weights once
// (weightBytes / bandwidth) until the batch's arithmetic (2 FLOPs per parameter
// per token at flops FLOP/s effective) exceeds that; the model takes the larger
// of the two as max(a, b) ≈ a + b for the linear form, plus a fixed 1 ms launch
// and framework overhead.
func GPUCost(name string, params, weightBytes, bandwidth, flops float64) PassCost {
	return PassCost{
		FixedMs:    1 + weightBytes/bandwidth*1000,
		PerTokenMs: 2 * params / flops * 1000,
		Source: fmt.Sprintf("ASSUMED %s model: 1 ms overhead + %.1f GB weights / %.2f TB/s + %.2g FLOP/token at %.0f TFLOP/s effective",
			name, weightBytes/1e9, bandwidth/1e12, 2*params, flops/1e12),
	}
}
