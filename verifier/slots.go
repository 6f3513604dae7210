package verifier

import "github.com/sled-project/sled/engine"

// session is what a verifier keeps of one device session: the slot holding its KV
// cache and the tokens in it (the device's committed prefix as verified so far,
// without the last correction or bonus token, which the target predicted but has not
// yet evaluated).
type session struct {
	id      string
	slot    int
	kv      []engine.Token
	lastUse uint64
}

// slotTable maps sessions to a fixed number of KV slots, evicting the least
// recently used session when a new one needs room. A slot whose session was
// released keeps its tokens (residue) so that a new session whose prefix starts
// the same way reuses those cells (a prefix cache: every session of a chat
// model starts with its template's system turn). It does no I/O and is not safe
// for concurrent use.
type slotTable struct {
	byID    map[string]*session
	free    []int
	residue map[int][]engine.Token // tokens still in a free slot's cells
	clock   uint64
	// Evictions counts sessions dropped to make room.
	evictions uint64
}

func newSlotTable(n int) *slotTable {
	t := &slotTable{byID: make(map[string]*session, n), residue: make(map[int][]engine.Token)}
	for i := n - 1; i >= 0; i-- {
		t.free = append(t.free, i)
	}
	return t
}

// get returns the session and marks it used, or nil.
func (t *slotTable) get(id string) *session {
	s := t.byID[id]
	if s != nil {
		t.clock++
		s.lastUse = t.clock
	}
	return s
}

// assign gives id a slot for a session that starts with prefix: the free slot
// whose residue shares the longest prefix with it (two tokens or more: a BOS
// alone is no match), else any free slot, else the slot of the least recently
// used session not in pinned. keep is the number of the slot's cells that
// already hold prefix[:keep] (at most len(prefix)-1, so that the last prefix
// token is evaluated again for its logits); the caller drops the rest. It
// returns nil when every slot belongs to a pinned session. The evicted session,
// if any, is returned.
func (t *slotTable) assign(id string, prefix []engine.Token, pinned map[string]bool) (s *session, evicted *session, keep int) {
	if old := t.byID[id]; old != nil {
		// A resync of a session this table holds: its own cells may still
		// match the start of the prefix it resent.
		t.clock++
		old.lastUse = t.clock
		return old, nil, max(0, min(commonPrefix(old.kv, prefix), len(prefix)-1))
	}
	slot := -1
	if n := len(t.free); n > 0 {
		best, match := n-1, 1
		for i, f := range t.free {
			if c := commonPrefix(t.residue[f], prefix); c > match {
				best, match = i, c
			}
		}
		slot = t.free[best]
		t.free = append(t.free[:best], t.free[best+1:]...)
		keep = commonPrefix(t.residue[slot], prefix)
		delete(t.residue, slot)
	} else {
		for _, c := range t.byID {
			if pinned[c.id] {
				continue
			}
			if evicted == nil || c.lastUse < evicted.lastUse {
				evicted = c
			}
		}
		if evicted == nil {
			return nil, nil, 0
		}
		delete(t.byID, evicted.id)
		t.evictions++
		slot = evicted.slot
		keep = commonPrefix(evicted.kv, prefix)
	}
	keep = max(0, min(keep, len(prefix)-1))
	t.clock++
	s = &session{id: id, slot: slot, lastUse: t.clock}
	t.byID[id] = s
	return s, evicted, keep
}

// release forgets a session and frees its slot, whose cells still hold the
// session's tokens for a later session to reuse.
func (t *slotTable) release(id string) {
	if s := t.byID[id]; s != nil {
		delete(t.byID, id)
		t.free = append(t.free, s.slot)
		t.residue[s.slot] = s.kv
	}
}

// commonPrefix is the length of the longest common prefix of a and b.
func commonPrefix(a, b []engine.Token) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// drop forgets a session and frees its slot, whose cells the caller clears.
func (t *slotTable) drop(id string) {
	if s := t.byID[id]; s != nil {
		delete(t.byID, id)
		t.free = append(t.free, s.slot)
		delete(t.residue, s.slot)
	}
}

func (t *slotTable) len() int { return len(t.byID) }
