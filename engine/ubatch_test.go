package engine

import (
	"slices"
	"testing"
)

func TestMicroBatches(t *testing.T) {
	cases := []struct {
		counts []int
		max    int
		want   int
	}{
		{[]int{1, 1, 1, 1}, 512, 1},              // equal, consecutive: one pass
		{[]int{5, 5, 5}, 512, 1},                 //
		{[]int{1, 0, 1}, 512, 2},                 // a gap splits the run
		{[]int{3, 1}, 512, 2},                    // ragged: 2 x 1, then slot 0's last 2
		{[]int{1, 2, 3, 4, 5}, 512, 5},           // every length a pass
		{[]int{16}, 512, 1},                      // one long slot
		{[]int{8, 8}, 8, 2},                      // the micro-batch size bounds a pass
		{[]int{0, 0, 2, 2, 0}, 512, 1},           //
		{[]int{2, 1, 2}, 512, 3},                 // 3 x 1, then slot 0, then slot 2
		{[]int{1, 1, 1, 1, 1, 1, 1, 16}, 512, 2}, // decode steps plus one prompt
	}
	for _, c := range cases {
		if got := microBatches(c.counts, c.max); got != c.want {
			t.Errorf("microBatches(%v, %d) = %d, want %d", c.counts, c.max, got, c.want)
		}
	}
}

func TestPlanPadding(t *testing.T) {
	room := func(n int) []int {
		r := make([]int, n)
		for i := range r {
			r[i] = 100
		}
		return r
	}
	cases := []struct {
		name       string
		counts     []int
		room       []int
		passTokens float64
		want       []int
	}{
		{"equal needs none", []int{2, 2, 2}, room(3), 4, []int{0, 0, 0}},
		{"a gap is filled: one token instead of a pass", []int{1, 0, 1, 1}, room(4), 4, []int{0, 1, 0, 0}},
		{"a long prompt is not padded to", []int{1, 1, 1, 16}, room(4), 4, []int{0, 0, 0, 0}},
		{"ragged drafts padded when passes are dear", []int{1, 5, 3, 5}, room(4), 100, []int{4, 0, 2, 0}},
		{"ragged drafts left alone when tokens are dear", []int{1, 5, 3, 5}, room(4), 0.5, []int{0, 0, 0, 0}},
		{"no room, no padding", []int{1, 0, 1}, []int{100, 0, 100}, 4, []int{0, 0, 0}},
	}
	for _, c := range cases {
		got := planPadding(c.counts, c.room, c.passTokens, 512)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: planPadding(%v, pass %v) = %v, want %v", c.name, c.counts, c.passTokens, got, c.want)
		}
		for i := range got {
			if got[i] > c.room[i] {
				t.Errorf("%s: slot %d padded %d beyond its room %d", c.name, i, got[i], c.room[i])
			}
		}
	}
	// The plan never costs more than no plan.
	for _, counts := range [][]int{{1, 2, 3, 4, 5}, {9, 1, 0, 0, 2}, {3, 3, 0, 3}} {
		for _, pt := range []float64{0.5, 4, 50} {
			pad := planPadding(counts, room(len(counts)), pt, 512)
			padded, extra := make([]int, len(counts)), 0
			for i := range counts {
				padded[i] = counts[i] + pad[i]
				extra += pad[i]
			}
			with := float64(extra) + pt*float64(microBatches(padded, 512))
			without := pt * float64(microBatches(counts, 512))
			if with > without {
				t.Errorf("%v at %v: plan costs %v > %v", counts, pt, with, without)
			}
		}
	}
}
