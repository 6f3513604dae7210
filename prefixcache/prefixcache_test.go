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
