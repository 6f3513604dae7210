package verifier

import "testing"

func TestSlotTableLRU(t *testing.T) {
	tb := newSlotTable(2)
	a, _ := tb.assign("a", nil)
	b, _ := tb.assign("b", nil)
	if a.slot == b.slot {
		t.Fatal("two sessions share a slot")
	}
	tb.get("a") // b is now least recently used
	c, ev := tb.assign("c", nil)
	if ev == nil || ev.id != "b" || c.slot != b.slot {
		t.Fatalf("evicted %+v, c in slot %d", ev, c.slot)
	}
	if tb.get("b") != nil {
		t.Fatal("evicted session still present")
	}
	// Pinned sessions are never evicted.
	if s, _ := tb.assign("d", map[string]bool{"a": true, "c": true}); s != nil {
		t.Fatal("assigned a slot held by a pinned session")
	}
	tb.drop("a")
	if s, ev := tb.assign("d", nil); s == nil || ev != nil || s.slot != a.slot {
		t.Fatalf("freed slot not reused: %+v %+v", s, ev)
	}
	if tb.evictions != 1 || tb.len() != 2 {
		t.Fatalf("evictions %d len %d", tb.evictions, tb.len())
	}
}
