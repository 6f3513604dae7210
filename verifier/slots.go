package verifier

import (
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/prefixcache"
)

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
// recently used session when a new one needs room. A released session's slot
// keeps its tokens for a new session whose prefix starts the same way
// (prefixcache: every session of a chat model starts with its template's system
// turn). It does no I/O and is not safe for concurrent use.
type slotTable struct {
	byID  map[string]*session
	free  *prefixcache.Cache
	clock uint64
	// Evictions counts sessions dropped to make room.
	evictions uint64
}

func newSlotTable(n int) *slotTable {
	return &slotTable{byID: make(map[string]*session, n), free: prefixcache.New(n)}
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

// assign gives id a slot for a session that starts with prefix: its own if
// the table holds the session (a resync), else a free slot
// (prefixcache.Cache.Take, or with placed, a KV stream per slot, Place: the
// same cells in a slot that keeps the busy slots consecutive), else the slot
// of the least recently used session not in pinned. keep is the number of
// the slot's cells that already hold prefix[:keep] (prefixcache.Reusable);
// the caller drops the rest. pl is what the caller does first to the cells
// (prefixcache.Placement: an exchange when pl.From != s.slot, a copy when
// pl.Copy >= 0); with neither, nothing. It returns nil when every slot
// belongs to a pinned session.
func (t *slotTable) assign(id string, prefix []engine.Token, pinned map[string]bool, placed bool) (s *session, keep int, pl prefixcache.Placement) {
	t.clock++
	if old := t.byID[id]; old != nil {
		old.lastUse = t.clock
		return old, prefixcache.Reusable(old.kv, prefix), prefixcache.Placement{Slot: old.slot, From: old.slot, Copy: -1}
	}
	var slot int
	ok := false
	if placed {
		if pl, ok = t.free.Place(prefix); ok {
			slot, keep = pl.Slot, pl.Keep
		}
	} else {
		slot, keep, ok = t.free.Take(prefix)
	}
	if !ok {
		var evicted *session
		for _, c := range t.byID {
			if !pinned[c.id] && (evicted == nil || c.lastUse < evicted.lastUse) {
				evicted = c
			}
		}
		if evicted == nil {
			return nil, 0, prefixcache.Placement{}
		}
		delete(t.byID, evicted.id)
		t.evictions++
		slot, keep = evicted.slot, prefixcache.Reusable(evicted.kv, prefix)
	}
	if !placed || !ok {
		pl = prefixcache.Placement{Slot: slot, From: slot, Copy: -1, Keep: keep}
	}
	s = &session{id: id, slot: slot, lastUse: t.clock}
	t.byID[id] = s
	return s, keep, pl
}

// compact returns the exchanges that put the sessions' slots in one run
// (prefixcache.Cache.Compact), each with the session that moves, whose slot
// it already updates: the caller makes the exchange (engine.Context.Swap)
// and, when it fails, drops that session.
func (t *slotTable) compact() []slotMove {
	moves := t.free.Compact()
	if len(moves) == 0 {
		return nil
	}
	bySlot := make(map[int]*session, len(t.byID))
	for _, s := range t.byID {
		bySlot[s.slot] = s
	}
	out := make([]slotMove, 0, len(moves))
	for _, mv := range moves {
		s := bySlot[mv.From]
		if s == nil {
			continue // not a session of the table's (cannot happen: Compact moves busy slots)
		}
		s.slot = mv.To
		out = append(out, slotMove{Move: mv, s: s})
	}
	return out
}

// slotMove is one exchange compact asks for and the session it moves.
type slotMove struct {
	prefixcache.Move
	s *session
}

// release forgets a session and frees its slot, whose cells still hold the
// session's tokens for a later session to reuse.
func (t *slotTable) release(id string) {
	if s := t.byID[id]; s != nil {
		delete(t.byID, id)
		t.free.Release(s.slot, s.kv)
	}
}

// drop forgets a session and frees its slot, whose cells the caller clears.
func (t *slotTable) drop(id string) {
	if s := t.byID[id]; s != nil {
		delete(t.byID, id)
		t.free.Release(s.slot, nil)
	}
}

func (t *slotTable) len() int { return len(t.byID) }
