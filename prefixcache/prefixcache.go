// Package prefixcache decides which free KV slot a new sequence gets, by the
// tokens the slots' cells still hold: the free slot sharing the longest prefix
// with the new sequence's tokens, so that only the rest is evaluated (a prompt
// or prefix cache: every request of a chat model starts with its template's
// system turn). The centralized server and the verifier both give out their
// slots with it. It is pure: it does no I/O and touches no KV cache.
package prefixcache

import "github.com/sled-project/sled/engine"

// MinMatch is the shortest shared prefix that makes a slot a match: a
// beginning-of-sequence token alone is no reason to evict another slot's cells.
const MinMatch = 2

// Cache tracks a fixed number of slots: which are free and what a free slot's
// cells still hold. It is not safe for concurrent use.
type Cache struct {
	free  []int // free slots, in no particular order
	held  map[int][]engine.Token
	freed map[int]uint64 // clock when a slot was freed; never-used slots are 0
	clock uint64
}

// New returns a Cache of slots 0 to n-1, all free and empty.
func New(n int) *Cache {
	c := &Cache{held: map[int][]engine.Token{}, freed: map[int]uint64{}}
	for i := range n {
		c.free = append(c.free, i)
	}
	return c
}

// Free is the number of free slots.
func (c *Cache) Free() int { return len(c.free) }

// Release frees slot, whose cells hold held (nil or empty: nothing worth
// reusing, the caller cleared them). Releasing a free slot updates what it holds.
func (c *Cache) Release(slot int, held []engine.Token) {
	c.clock++
	c.freed[slot] = c.clock
	if len(held) > 0 {
		c.held[slot] = held
	} else {
		delete(c.held, slot)
	}
	for _, f := range c.free {
		if f == slot {
			return
		}
	}
	c.free = append(c.free, slot)
}

// Take gives a sequence that starts with tokens a free slot, and keep, how many
// of the slot's first cells already hold tokens[:keep] (see Reusable); the caller
// drops the cells past keep. ok is false when no slot is free. The slot is, in
// order of preference:
//
//  1. the one whose cells share the longest prefix with tokens among the matches
//     worth what taking the slot destroys: n shared cells (MinMatch or more) of
//     the h it holds, where the match covers tokens (all but their last at
//     least: a repeated prompt, the next turn of a conversation) or the h-n cells
//     dropped are at most twice the n saved (3n >= h);
//  2. else a slot holding nothing (a never-used one first), so that a request
//     sharing a few tokens with a cached prompt (its first words, a chat
//     template's system turn) does not evict that prompt while empty slots wait:
//     with `sled bench load`'s eight prompts sent in turn to a centralized
//     server's 16 slots, a repeated prompt found 2-8 of its 28-53 tokens cached
//     without this rule, and all but its last with it
//     (centralized.TestPromptCacheSharedOpenings);
//  3. else the one sharing the longest prefix (MinMatch or more), the most
//     recently freed among equals: a client's next request sharing a template
//     goes back to the slot its last one left, which keeps a steady set of
//     clients on the same slots (with a KV stream per slot, llama.cpp evaluates
//     consecutive slots in one micro-batch);
//  4. else the one freed longest ago.
func (c *Cache) Take(tokens []engine.Token) (slot, keep int, ok bool) {
	if len(c.free) == 0 {
		return 0, 0, false
	}
	worth, empty, shared, oldest := -1, -1, -1, -1
	worthN, sharedN := 0, 0
	for i, f := range c.free {
		held := c.held[f]
		age := c.freed[f]
		if oldest < 0 || age < c.freed[c.free[oldest]] {
			oldest = i
		}
		if len(held) == 0 {
			if empty < 0 || age < c.freed[c.free[empty]] {
				empty = i
			}
			continue
		}
		n := CommonPrefix(held, tokens)
		if n < MinMatch {
			continue
		}
		if (n >= len(tokens)-1 || 3*n >= len(held)) && (worth < 0 || n > worthN || (n == worthN && age < c.freed[c.free[worth]])) {
			worth, worthN = i, n
		}
		if shared < 0 || n > sharedN || (n == sharedN && age > c.freed[c.free[shared]]) {
			shared, sharedN = i, n
		}
	}
	best := worth
	for _, alt := range []int{empty, shared, oldest} {
		if best < 0 {
			best = alt
		}
	}
	slot = c.free[best]
	c.free = append(c.free[:best], c.free[best+1:]...)
	if CommonPrefix(c.held[slot], tokens) >= MinMatch {
		keep = Reusable(c.held[slot], tokens)
	}
	delete(c.held, slot)
	return slot, keep, true
}

// Reusable is how many cells holding held serve a sequence that starts with
// tokens: their common prefix, but at most len(tokens)-1, so that the last
// token is evaluated again for its logits.
func Reusable(held, tokens []engine.Token) int {
	return max(0, min(CommonPrefix(held, tokens), len(tokens)-1))
}

// CommonPrefix is the length of the longest common prefix of a and b.
func CommonPrefix(a, b []engine.Token) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
