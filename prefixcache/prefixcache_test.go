package prefixcache

import (
	"testing"

	"github.com/sled-project/sled/engine"
)

func tk(xs ...int) []engine.Token {
	out := make([]engine.Token, len(xs))
	for i, x := range xs {
		out[i] = engine.Token(x)
	}
	return out
}

func TestTake(t *testing.T) {
	c := New(3)
	a, keep, ok := c.Take(tk(1, 5, 6, 7))
	if !ok || keep != 0 {
		t.Fatalf("empty cache: slot %d keep %d ok %v", a, keep, ok)
	}
	b, _, _ := c.Take(tk(1, 2, 3))
	c.Release(a, tk(1, 5, 6, 7, 8))
	c.Release(b, tk(1, 2, 3, 4))
	// The longest shared prefix wins whatever the order of release.
	if s, keep, _ := c.Take(tk(1, 5, 6, 2)); s != a || keep != 3 {
		t.Fatalf("slot %d keep %d, want %d keep 3", s, keep, a)
	}
	// A prefix wholly in the cells still evaluates its last token.
	if s, keep, _ := c.Take(tk(1, 2, 3)); s != b || keep != 2 {
		t.Fatalf("slot %d keep %d, want %d keep 2", s, keep, b)
	}
	if c.Free() != 1 {
		t.Fatalf("%d free, want 1", c.Free())
	}
}

// Without a match of MinMatch tokens the slot freed longest ago goes first
// (a never-used one before any), so a useful cache survives an unrelated request.
func TestTakeLeastRecentlyFreed(t *testing.T) {
	c := New(3)
	x, _, _ := c.Take(tk(1, 5, 6))
	y, _, _ := c.Take(tk(1, 7, 8))
	c.Release(x, tk(1, 5, 6, 9))
	c.Release(y, tk(1, 7, 8, 9))
	z, keep, _ := c.Take(tk(1, 2, 3)) // shares only the BOS with x and y
	if z == x || z == y || keep != 0 {
		t.Fatalf("unrelated request took slot %d keep %d; x %d y %d should stay", z, keep, x, y)
	}
	if s, keep, _ := c.Take(tk(1, 2, 3)); s != x || keep != 0 {
		t.Fatalf("next unrelated request: slot %d keep %d, want the older x (%d), keep 0", s, keep, x)
	}
	// A cleared slot holds nothing; Take on a full cache says so.
	c.Release(y, nil)
	if s, keep, _ := c.Take(tk(1, 7, 8, 9)); s != y || keep != 0 {
		t.Fatalf("cleared slot: %d keep %d", s, keep)
	}
	if _, _, ok := c.Take(tk(1)); ok {
		t.Fatal("Take on a cache with no free slot")
	}
}

// A partial match takes a slot only when it saves at least half of what it
// drops there (3n >= h), or when it covers the new tokens; a short shared
// opening goes to an empty slot instead and, with none left, to the most
// recently freed slot sharing the longest prefix.
func TestTakeWorthTheEviction(t *testing.T) {
	c := New(4)
	a, _, _ := c.Take(tk(1, 2, 3, 4, 5, 6))
	c.Release(a, tk(1, 2, 3, 4, 5, 6, 7, 8, 9)) // a holds 9 cells
	// Shares 2 of a's 9 cells: dropping 7 to save 2 is not worth it.
	b, keep, _ := c.Take(tk(1, 2, 9, 9))
	if b == a || keep != 0 {
		t.Fatalf("short match took slot %d keep %d; a (%d) should stay cached", b, keep, a)
	}
	// Shares 3 of 9 (3n = h): worth it.
	if s, keep, _ := c.Take(tk(1, 2, 3, 8)); s != a || keep != 3 {
		t.Fatalf("slot %d keep %d, want a (%d) keep 3", s, keep, a)
	}
	c.Release(a, tk(1, 2, 3, 4, 5, 6, 7, 8, 9))
	// A prompt a's cells cover (a repeated prompt) is worth them however short.
	if s, keep, _ := c.Take(tk(1, 2)); s != a || keep != 1 {
		t.Fatalf("covered prompt: slot %d keep %d, want a (%d) keep 1", s, keep, a)
	}
	c.Release(a, tk(1, 2, 3, 4, 5, 6, 7, 8, 9))
	c.Release(b, tk(1, 2, 7, 7, 7, 7, 7, 7, 7)) // freed after a
	// The never-used slots go before a's or b's cells are dropped.
	d, _, _ := c.Take(tk(1, 2, 9, 9))
	e, _, _ := c.Take(tk(1, 2, 9, 9))
	if d == a || d == b || e == a || e == b {
		t.Fatalf("took slots %d and %d; the never-used slots should go first", d, e)
	}
	// None left: a and b share 2 tokens each; b, freed last, goes, keeping them.
	if s, keep, _ := c.Take(tk(1, 2, 9, 9)); s != b || keep != 2 {
		t.Fatalf("slot %d keep %d, want the most recently freed b (%d) keep 2", s, keep, b)
	}
}

func TestReusable(t *testing.T) {
	for _, c := range []struct {
		held, tokens []engine.Token
		want         int
	}{
		{nil, tk(1, 2), 0},
		{tk(1, 2, 3), tk(1, 2, 4), 2},
		{tk(1, 2, 3), tk(1, 2, 3), 2},
		{tk(1, 2, 3), tk(1, 2, 3, 4, 5), 3},
		{tk(1), nil, 0},
	} {
		if got := Reusable(c.held, c.tokens); got != c.want {
			t.Errorf("Reusable(%v, %v) = %d, want %d", c.held, c.tokens, got, c.want)
		}
	}
}

// Place keeps the busy slots in one run: it fills from the bottom, and a gap
// left by a finished sequence is the next one's slot, whose cells then trade
// places with the ones Take chose, so nothing cached is lost.
func TestPlacePacksBusySlots(t *testing.T) {
	c := New(8)
	for want := range 4 {
		p, ok := c.Place(tk(9, want))
		if !ok || p != (Placement{Slot: want, From: want, Copy: -1}) {
			t.Fatalf("sequence %d on an empty cache: %+v ok %v, want slot %d, no exchange", want, p, ok, want)
		}
	}
	// Slot 1 finishes. The next, unrelated sequence fills the gap; Take's
	// empty slot trades places with it and so now holds slot 1's cells.
	c.Release(1, tk(1, 5, 6, 7, 8))
	p, _ := c.Place(tk(1, 2, 3))
	if p.Slot != 1 || p.From < 4 || p.Keep != 0 {
		t.Fatalf("after slot 1 finished: %+v, want slot 1 exchanged with an empty slot 4-7", p)
	}
	moved := p.From
	// The cells are found where they went; that slot borders the run if it is
	// slot 4 (used in place), else they are exchanged into slot 4.
	p, _ = c.Place(tk(1, 5, 6, 7, 9))
	if p.Slot != 4 || p.From != moved || p.Keep != 4 {
		t.Fatalf("repeat of the finished prompt: %+v, want slot 4 from slot %d, 4 cells", p, moved)
	}
	if _, ok := New(0).Place(tk(1)); ok {
		t.Fatal("Place on a cache with no slot")
	}
}

// A match away from the busy run is exchanged into the slot next to it, and the
// cells that slot held stay cached in the match's old slot.
func TestPlaceExchangesKeepTheCache(t *testing.T) {
	c := New(4)
	for range 4 {
		c.Place(tk(9))
	}
	c.Release(3, tk(1, 2, 3, 4))
	c.Release(1, tk(5, 6, 7, 8))
	// Busy: 0 and 2. Slot 1 joins them; slot 3 holds the match.
	p, _ := c.Place(tk(1, 2, 3, 4, 5))
	if p != (Placement{Slot: 1, From: 3, Copy: -1, Keep: 4}) {
		t.Fatalf("%+v, want slot 1 exchanged with slot 3, 4 cells", p)
	}
	p, _ = c.Place(tk(5, 6, 7, 8, 9))
	if p != (Placement{Slot: 3, From: 3, Copy: -1, Keep: 4}) {
		t.Fatalf("slot 1's old cells: %+v, want them in slot 3, 4 cells", p)
	}
	if _, ok := c.Place(tk(1)); ok {
		t.Fatal("Place on a cache with no free slot")
	}
}

// Compact closes the gaps sequences leave as they end: the busy slots outside
// the window holding most of them trade places with its free slots, farthest
// first, and the cells those free slots held stay cached where the busy ones
// were.
func TestCompact(t *testing.T) {
	c := New(8)
	for range 5 {
		c.Place(tk(9))
	}
	if m := c.Compact(); m != nil {
		t.Fatalf("busy 0-4: moves %v, want none", m)
	}
	// Busy 0-4; 1 and 3 end.
	c.Release(1, tk(1, 1, 1))
	c.Release(3, tk(3, 3, 3))
	// Busy {0, 2, 4}: the windows of 3 slots hold at most 2 (0-2, 2-4); the
	// lowest, 0-2, keeps them and slot 4 fills hole 1.
	m := c.Compact()
	if len(m) != 1 || m[0] != (Move{From: 4, To: 1}) {
		t.Fatalf("busy {0, 2, 4}: moves %v, want [{4 1}]", m)
	}
	if m := c.Compact(); m != nil {
		t.Fatalf("after compacting: moves %v, want none", m)
	}
	// Slot 1's cells moved to slot 4 and are found there.
	if p, _ := c.Place(tk(1, 1, 1, 2)); p.From != 4 || p.Keep != 3 || p.Slot != 3 {
		t.Fatalf("slot 1's old cells: %+v, want them from slot 4 into slot 3, 3 cells", p)
	}
	// Busy {2, 3, 6, 7}: every window of 4 holds 2; the lowest, 0-3, keeps 2
	// and 3, and 7 (the farthest) and 6 fill 0 and 1.
	d := New(8)
	for range 8 {
		d.Place(tk(9))
	}
	for _, f := range []int{0, 1, 4, 5} {
		d.Release(f, nil)
	}
	if m := d.Compact(); len(m) != 2 || m[0] != (Move{From: 7, To: 0}) || m[1] != (Move{From: 6, To: 1}) {
		t.Fatalf("busy {2, 3, 6, 7}: moves %v, want [{7 0} {6 1}]", m)
	}
	if New(4).Compact() != nil {
		t.Fatal("an idle cache asks for moves")
	}
}

// A shared prefix Take will not evict a cached text for (a chat template's
// system turn) is copied from the slot holding it into the slot Take chose.
func TestPlaceCopiesASharedPrefix(t *testing.T) {
	c := New(3)
	c.Place(tk(7, 7, 7, 1, 2))
	c.Release(0, tk(7, 7, 7, 1, 2, 3, 4, 5, 6, 8, 9, 10))
	p, _ := c.Place(tk(7, 7, 7, 20, 21))
	if p != (Placement{Slot: 1, From: 1, Copy: 0, Keep: 3}) {
		t.Fatalf("%+v, want the empty slot 1 with the 3 shared cells copied from slot 0", p)
	}
	// Slot 0 still holds its text: a repeat reuses it all, in place.
	if p, _ := c.Place(tk(7, 7, 7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11)); p != (Placement{Slot: 0, From: 0, Copy: -1, Keep: 12}) {
		t.Fatalf("the cached text again: %+v, want slot 0 in place, 12 cells", p)
	}
}
