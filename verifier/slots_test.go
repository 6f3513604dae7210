package verifier

import (
	"testing"

	"github.com/sled-project/sled/engine"
)

func TestSlotTableLRU(t *testing.T) {
	tb := newSlotTable(2)
	a, _ := tb.assign("a", nil, nil)
	b, _ := tb.assign("b", nil, nil)
	if a.slot == b.slot {
		t.Fatal("two sessions share a slot")
	}
	tb.get("a") // b is now least recently used
	c, _ := tb.assign("c", nil, nil)
	if tb.evictions != 1 || c.slot != b.slot {
		t.Fatalf("evictions %d, c in slot %d; want b (slot %d) evicted", tb.evictions, c.slot, b.slot)
	}
	if tb.get("b") != nil || tb.get("a") == nil {
		t.Fatal("evicted another session than the least recently used b")
	}
	// Pinned sessions are never evicted.
	if s, _ := tb.assign("d", nil, map[string]bool{"a": true, "c": true}); s != nil {
		t.Fatal("assigned a slot held by a pinned session")
	}
	tb.drop("a")
	if s, _ := tb.assign("d", nil, nil); s == nil || tb.evictions != 1 || s.slot != a.slot {
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
	a, keep := tb.assign("a", toks(1, 5, 6, 7, 8), nil)
	if keep != 0 {
		t.Fatalf("empty table: keep %d", keep)
	}
	a.kv = toks(1, 5, 6, 7, 8, 9)
	b, _ := tb.assign("b", toks(1, 2, 3), nil)
	b.kv = toks(1, 2, 3, 4)
	tb.release("a")
	tb.release("b")

	// The free slot sharing the longest prefix wins, whatever the free order.
	c, keep := tb.assign("c", toks(1, 5, 6, 2), nil)
	if tb.evictions != 0 || c.slot != a.slot || keep != 3 {
		t.Fatalf("c: slot %d (a's %d), evictions %d, keep %d; want a's slot, keep 3", c.slot, a.slot, tb.evictions, keep)
	}
	// A prefix wholly in the cells still evaluates its last token.
	d, keep := tb.assign("d", toks(1, 2, 3), nil)
	if d.slot != b.slot || keep != 2 {
		t.Fatalf("d: slot %d (b's %d), keep %d; want b's slot, keep 2", d.slot, b.slot, keep)
	}
	// A BOS alone is no match; a dropped (cleared) slot has no residue.
	e, keep := tb.assign("e", toks(1, 9, 9), nil)
	if keep != 0 || e.slot == c.slot || e.slot == d.slot {
		t.Fatalf("e: slot %d, keep %d", e.slot, keep)
	}
	d.kv = toks(1, 2, 3, 4, 5)
	tb.drop("d")
	f, keep := tb.assign("f", toks(1, 2, 3, 4), nil)
	if f.slot != d.slot || keep != 0 {
		t.Fatalf("f: slot %d, keep %d after drop; want d's slot, keep 0", f.slot, keep)
	}
	// Eviction: the evicted session's cells serve the new one.
	c.kv = toks(1, 5, 6, 2, 2)
	tb.get("e")
	tb.get("f")
	g, keep := tb.assign("g", toks(1, 5, 6, 2, 2, 2, 2), nil)
	if tb.evictions != 1 || tb.get("c") != nil || g.slot != c.slot || keep != 5 {
		t.Fatalf("g: evictions %d, slot %d, keep %d; want c evicted, keep 5", tb.evictions, g.slot, keep)
	}
	// A session resyncing keeps what of its own cells still matches.
	g.kv = toks(1, 5, 6, 2, 2, 2, 2)
	if s, keep := tb.assign("g", toks(1, 5, 6, 3), nil); s != g || keep != 3 {
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
