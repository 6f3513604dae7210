// Package prefixcache decides which free KV slot a new sequence gets, by the
// tokens the slots' cells still hold: the free slot sharing the longest prefix
// with the new sequence's tokens, so that only the rest is evaluated (a prompt
// or prefix cache: every request of a chat model starts with its template's
// system turn). The centralized server and the verifier both give out their
// slots with it. It is pure: it does no I/O and touches no KV cache.
package prefixcache

import (
	"sort"

	"github.com/sled-project/sled/engine"
)

// MinMatch is the shortest shared prefix that makes a slot a match: a
// beginning-of-sequence token alone is no reason to evict another slot's cells.
const MinMatch = 2

// Cache tracks a fixed number of slots: which are free and what a free slot's
// cells still hold. It is not safe for concurrent use.
type Cache struct {
	n     int   // slots
	free  []int // free slots, in no particular order
	held  map[int][]engine.Token
	freed map[int]uint64 // clock when a slot was freed; never-used slots are 0
	clock uint64
}

// New returns a Cache of slots 0 to n-1, all free and empty.
func New(n int) *Cache {
	c := &Cache{n: n, held: map[int][]engine.Token{}, freed: map[int]uint64{}}
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
//     goes back to the slot its last one left, the cells it is likeliest to
//     share more of next time;
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

// A Placement says where Place puts a sequence: in slot Slot, continuing from
// its first Keep cells. The caller, in order:
//
//  1. if From != Slot, exchanges the cells of From and Slot (engine.Context.Swap);
//  2. if Copy >= 0, replaces Slot's cells with the first Keep cells of slot Copy
//     (engine.Context.Copy; Copy keeps its own), else drops Slot's cells past Keep.
//
// A failed exchange leaves both slots in doubt: the caller clears them and
// tells the Cache with Release(From, nil); a failed copy, Slot alone.
type Placement struct {
	Slot int // where the sequence goes
	From int // whose cells Slot gets before the copy (Slot: no exchange)
	Copy int // where the first Keep cells are copied from; -1: none, they are Slot's own
	Keep int
}

// Place is Take for a KV cache whose layout makes the slot matter: with a stream
// per slot, llama.cpp evaluates a run of consecutive busy slots in one
// micro-batch, and a gap splits the pass into several (on the Qwen 1.5B on 2
// cores, 4 one-token rows in consecutive slots take 62-68 ms, the same rows in
// slots 0, 2, 4, 6 84-105 ms: BenchmarkGapsQwen in the engine). It chooses cells
// exactly as Take does (so the cache keeps what Take would keep) and then a
// slot that keeps the busy slots in as few runs as possible: Take's slot if it
// does, else the lowest that does, whose cells then trade places with Take's
// (what that slot held stays cached, now in From). And where another free slot
// shares a longer prefix with tokens than Take's slot keeps (MinMatch or more:
// a chat template's system turn, which Take will not evict a cached prompt
// for), that prefix is copied in: a copy evicts nothing. ok is false when no
// slot is free.
func (c *Cache) Place(tokens []engine.Token) (p Placement, ok bool) {
	busy := c.busy()
	from, keep, ok := c.Take(tokens)
	if !ok {
		return Placement{}, false
	}
	isBusy := func(i int) int { return b2i(i >= 0 && i < c.n && busy[i]) }
	// Busy runs gained by taking f: +1 alone, 0 next to one run, -1 joining two.
	gain := func(f int) int { return 1 - isBusy(f-1) - isBusy(f+1) }
	slot, at := from, -1
	for i, f := range c.free {
		if gain(f) < gain(slot) || gain(f) == gain(slot) && slot != from && f < slot {
			slot, at = f, i
		}
	}
	if slot != from {
		c.free[at] = from
		if held := c.held[slot]; len(held) > 0 {
			c.held[from] = held
		}
		c.freed[from] = c.freed[slot]
		delete(c.held, slot)
	}
	p = Placement{Slot: slot, From: from, Copy: -1, Keep: keep}
	for _, f := range c.free {
		if CommonPrefix(c.held[f], tokens) < MinMatch {
			continue
		}
		if n := Reusable(c.held[f], tokens); n > p.Keep {
			p.Copy, p.Keep = f, n
		}
	}
	return p, true
}

// A Move is one exchange Compact asks for: the sequence in busy slot From goes
// to free slot To, and the cells To held go to From (engine.Context.Swap).
type Move struct{ From, To int }

// Compact returns the exchanges that put the busy slots in one run, fewest
// first: of the windows of as many consecutive slots as are busy, the one
// holding the most busy slots (the lowest among equals) keeps them, and every
// busy slot outside it trades places with a free slot inside it, the farthest
// first. Place keeps the busy slots consecutive as sequences come; Compact does
// it as they go, when a sequence ends amid the run and no new one fills its
// slot. The Cache is updated as if the moves were made (From is then free,
// holding what To held); a move that fails leaves both slots in doubt, and the
// caller releases From with nothing held.
func (c *Cache) Compact() []Move {
	k := c.n - len(c.free)
	if k == 0 {
		return nil
	}
	busy := c.busy()
	start, most, in := 0, -1, 0
	for i := range c.n {
		in += b2i(busy[i])
		if i >= k {
			in -= b2i(busy[i-k])
		}
		if i >= k-1 && in > most {
			start, most = i-k+1, in
		}
	}
	if most == k {
		return nil
	}
	var holes, outside []int
	for i := start; i < start+k; i++ {
		if !busy[i] {
			holes = append(holes, i)
		}
	}
	dist := func(i int) int { return max(start-i, i-(start+k-1)) }
	for i := range c.n {
		if busy[i] && dist(i) > 0 {
			outside = append(outside, i)
		}
	}
	sort.SliceStable(outside, func(a, b int) bool { return dist(outside[a]) > dist(outside[b]) })
	moves := make([]Move, len(holes))
	for i, to := range holes {
		from := outside[i]
		moves[i] = Move{From: from, To: to}
		for j, f := range c.free {
			if f == to {
				c.free[j] = from
			}
		}
		if held := c.held[to]; len(held) > 0 {
			c.held[from] = held
		} else {
			delete(c.held, from)
		}
		c.freed[from] = c.freed[to]
		delete(c.held, to)
	}
	return moves
}

// busy reports, for each slot, whether it is taken.
func (c *Cache) busy() []bool {
	busy := make([]bool, c.n)
	for i := range busy {
		busy[i] = true
	}
	for _, f := range c.free {
		busy[f] = false
	}
	return busy
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
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
