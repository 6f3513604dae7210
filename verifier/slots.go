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
// recently used session when a new one needs room. It does no I/O and is not safe
// for concurrent use.
type slotTable struct {
	byID  map[string]*session
	free  []int
	clock uint64
	// Evictions counts sessions dropped to make room.
	evictions uint64
}

func newSlotTable(n int) *slotTable {
	t := &slotTable{byID: make(map[string]*session, n)}
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

// assign gives id a slot, evicting the least recently used session not in pinned.
// It returns nil when every slot belongs to a pinned session. The evicted session,
// if any, is returned so the caller can clear its KV.
func (t *slotTable) assign(id string, pinned map[string]bool) (s *session, evicted *session) {
	if old := t.byID[id]; old != nil {
		t.clock++
		old.lastUse = t.clock
		return old, nil
	}
	slot := -1
	if n := len(t.free); n > 0 {
		slot, t.free = t.free[n-1], t.free[:n-1]
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
			return nil, nil
		}
		delete(t.byID, evicted.id)
		t.evictions++
		slot = evicted.slot
	}
	t.clock++
	s = &session{id: id, slot: slot, lastUse: t.clock}
	t.byID[id] = s
	return s, evicted
}

// drop forgets a session and frees its slot.
func (t *slotTable) drop(id string) {
	if s := t.byID[id]; s != nil {
		delete(t.byID, id)
		t.free = append(t.free, s.slot)
	}
}

func (t *slotTable) len() int { return len(t.byID) }
