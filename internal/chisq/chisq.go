// Package chisq is Pearson's chi-square goodness-of-fit test, for the tests
// that check a sampler's output frequencies against the distribution it
// promises.
package chisq

import (
	"fmt"
	"math"
	"slices"
)

// Result is one test's statistic, its degrees of freedom and the critical value
// at the level asked for.
type Result struct {
	Stat     float64
	DF       int
	Critical float64
	// Bins is the number of bins after pooling.
	Bins int
}

// Rejects reports whether the observed counts are unlikely under the
// distribution at the test's level.
func (r Result) Rejects() bool { return r.Stat > r.Critical }

func (r Result) String() string {
	return fmt.Sprintf("chi2=%.1f df=%d critical=%.1f", r.Stat, r.DF, r.Critical)
}

// Test compares counts (observed per category) with probs (the promised
// probability of each category; they need not sum to 1 over the categories
// listed: the rest of the mass is pooled with the observations outside them,
// other). Categories whose expected count is below 5 are pooled, most
// probable first, so that every bin's expected count is at least 5 (the usual
// condition for the chi-square approximation). z is the standard normal
// quantile of the level (3.09 for 0.001); the critical value is
// Wilson-Hilferty's approximation of the chi-square quantile, within 1% for
// df >= 3.
func Test(counts []int, probs []float64, other int, z float64) Result {
	n := other
	for _, c := range counts {
		n += c
	}
	type bin struct {
		obs int
		exp float64
	}
	idx := make([]int, len(probs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		switch {
		case probs[a] > probs[b]:
			return -1
		case probs[a] < probs[b]:
			return 1
		}
		return 0
	})
	var bins []bin
	var rest bin
	mass := 0.0
	for _, i := range idx {
		mass += probs[i]
		e := probs[i] * float64(n)
		if e >= 5 {
			bins = append(bins, bin{counts[i], e})
			continue
		}
		rest.obs += counts[i]
		rest.exp += e
	}
	rest.obs += other
	rest.exp += max(0, 1-mass) * float64(n)
	if rest.exp >= 5 || len(bins) == 0 {
		bins = append(bins, rest)
	} else if rest.obs > 0 || rest.exp > 0 {
		// Too small to stand alone: fold into the least likely bin.
		last := &bins[len(bins)-1]
		last.obs += rest.obs
		last.exp += rest.exp
	}
	var stat float64
	for _, b := range bins {
		d := float64(b.obs) - b.exp
		stat += d * d / b.exp
	}
	df := max(1, len(bins)-1)
	k := float64(df)
	c := 2 / (9 * k)
	crit := k * math.Pow(1-c+z*math.Sqrt(c), 3)
	return Result{Stat: stat, DF: df, Critical: crit, Bins: len(bins)}
}

// Z001 is the standard normal quantile for a test at level 0.001.
const Z001 = 3.0902
