package verifier

import (
	"slices"
	"testing"

	"github.com/sled-project/sled/engine"
)

func TestSlotTableLRU(t *testing.T) {
	tb := newSlotTable(2)
	a, _, _ := tb.assign("a", nil, nil, false)
	b, _, _ := tb.assign("b", nil, nil, false)
	if a.slot == b.slot {
		t.Fatal("two sessions share a slot")
	}
	tb.get("a") // b is now least recently used
	c, _, _ := tb.assign("c", nil, nil, false)
	if tb.evictions != 1 || c.slot != b.slot {
		t.Fatalf("evictions %d, c in slot %d; want b (slot %d) evicted", tb.evictions, c.slot, b.slot)
	}
	if tb.get("b") != nil || tb.get("a") == nil {
		t.Fatal("evicted another session than the least recently used b")
	}
	// Pinned sessions are never evicted.
	if s, _, _ := tb.assign("d", nil, map[string]bool{"a": true, "c": true}, false); s != nil {
		t.Fatal("assigned a slot held by a pinned session")
	}
	tb.drop("a")
	if s, _, _ := tb.assign("d", nil, nil, false); s == nil || tb.evictions != 1 || s.slot != a.slot {
		t.Fatalf("freed slot not reused: %+v, evictions %d", s, tb.evictions)
	}
	if tb.evictions != 1 || tb.len() != 2 {
		t.Fatalf("evictions %d len %d", tb.evictions, tb.len())
	}
}

func toks(xs ...int) []engine.Token {
	out := make([]engine.Token, len(xs))
	for i, x := range xs {
		out[i] = engine.Token(x)
	}
	return out
}

// A new session reuses the cells of a released or evicted session as far as its
// prefix matches them, and always evaluates its last prefix token again.
func TestSlotTablePrefixReuse(t *testing.T) {
	tb := newSlotTable(3)
	a, keep, _ := tb.assign("a", toks(1, 5, 6, 7, 8), nil, false)
	if keep != 0 {
		t.Fatalf("empty table: keep %d", keep)
	}
	a.kv = toks(1, 5, 6, 7, 8, 9)
	b, _, _ := tb.assign("b", toks(1, 2, 3), nil, false)
	b.kv = toks(1, 2, 3, 4)
	tb.release("a")
	tb.release("b")

	// The free slot sharing the longest prefix wins, whatever the free order.
	c, keep, _ := tb.assign("c", toks(1, 5, 6, 2), nil, false)
	if tb.evictions != 0 || c.slot != a.slot || keep != 3 {
		t.Fatalf("c: slot %d (a's %d), evictions %d, keep %d; want a's slot, keep 3", c.slot, a.slot, tb.evictions, keep)
	}
	// A prefix wholly in the cells still evaluates its last token.
	d, keep, _ := tb.assign("d", toks(1, 2, 3), nil, false)
	if d.slot != b.slot || keep != 2 {
		t.Fatalf("d: slot %d (b's %d), keep %d; want b's slot, keep 2", d.slot, b.slot, keep)
	}
	// A BOS alone is no match; a dropped (cleared) slot has no residue.
	e, keep, _ := tb.assign("e", toks(1, 9, 9), nil, false)
	if keep != 0 || e.slot == c.slot || e.slot == d.slot {
		t.Fatalf("e: slot %d, keep %d", e.slot, keep)
	}
	d.kv = toks(1, 2, 3, 4, 5)
	tb.drop("d")
	f, keep, _ := tb.assign("f", toks(1, 2, 3, 4), nil, false)
	if f.slot != d.slot || keep != 0 {
		t.Fatalf("f: slot %d, keep %d after drop; want d's slot, keep 0", f.slot, keep)
	}
	// Eviction: the evicted session's cells serve the new one.
	c.kv = toks(1, 5, 6, 2, 2)
	tb.get("e")
	tb.get("f")
	g, keep, _ := tb.assign("g", toks(1, 5, 6, 2, 2, 2, 2), nil, false)
	if tb.evictions != 1 || tb.get("c") != nil || g.slot != c.slot || keep != 5 {
		t.Fatalf("g: evictions %d, slot %d, keep %d; want c evicted, keep 5", tb.evictions, g.slot, keep)
	}
	// A session resyncing keeps what of its own cells still matches.
	g.kv = toks(1, 5, 6, 2, 2, 2, 2)
	if s, keep, _ := tb.assign("g", toks(1, 5, 6, 3), nil, false); s != g || keep != 3 {
		t.Fatalf("resync of g: %v keep %d, want keep 3", s, keep)
	}
}

func TestTakeQueued(t *testing.T) {
	cases := []struct {
		batches []int
		slots   int
		want    int
	}{
		{nil, 8, 0},
		{[]int{3, 4, 2}, 8, 2}, // 3+4 fit, +2 would not
		{[]int{3, 4, 1}, 8, 3}, // exactly full
		{[]int{12, 1}, 8, 1},   // one batch over the slots is still taken
		{[]int{1, 1, 1, 1}, 2, 2},
	}
	for _, c := range cases {
		if got := TakeQueued(len(c.batches), func(i int) int { return c.batches[i] }, c.slots); got != c.want {
			t.Errorf("TakeQueued(%v, slots %d) = %d, want %d", c.batches, c.slots, got, c.want)
		}
	}
}

// TestSlotTablePlacesConsecutively: with a stream per slot (placed) new
// sessions take consecutive slots, and a session that ends amid them leaves a
// gap that compact closes by moving the farthest session into it (its slot
// updated), so the next session lands next to the run.
func TestSlotTablePlacesConsecutively(t *testing.T) {
	tb := newSlotTable(6)
	var ss []*session
	for i, id := range []string{"a", "b", "c", "d"} {
		s, _, pl := tb.assign(id, toks(1, 10+i), nil, true)
		if s == nil || pl.Slot != s.slot {
			t.Fatalf("%s: session %v, placement %+v", id, s, pl)
		}
		ss = append(ss, s)
	}
	busy := func() []int {
		var out []int
		for _, s := range tb.byID {
			out = append(out, s.slot)
		}
		slices.Sort(out)
		return out
	}
	if got := busy(); !slices.Equal(got, []int{0, 1, 2, 3}) && !slices.Equal(got, []int{2, 3, 4, 5}) {
		t.Fatalf("four new sessions in slots %v: not one run", got)
	}
	tb.release("b")
	moves := tb.compact()
	if len(moves) != 1 || moves[0].s.id == "b" || moves[0].s.slot != moves[0].To {
		t.Fatalf("after b ended: moves %+v", moves)
	}
	got := busy()
	if got[2]-got[0] != 2 {
		t.Fatalf("after compact the sessions are in slots %v: not one run", got)
	}
	e, _, _ := tb.assign("e", toks(1, 20), nil, true)
	if all := busy(); all[3]-all[0] != 3 {
		t.Fatalf("e went to slot %d: sessions in %v, not one run", e.slot, all)
	}
	if moves := tb.compact(); len(moves) != 0 {
		t.Fatalf("nothing to compact, got %+v", moves)
	}
}
