package events

import (
	"container/list"
	"fmt"
	"sync"
)

// RoundTracker enforces strictly increasing round numbers per session. It
// remembers the last round of at most a fixed number of sessions, forgetting
// the least recently seen first. Safe for concurrent use.
type RoundTracker struct {
	mu    sync.Mutex
	max   int
	byID  map[string]*list.Element
	order *list.List // front = most recent; values are *roundEntry
}

type roundEntry struct {
	session string
	round   uint64
}

// DefaultTrackedSessions is the capacity NewRoundTracker uses for max <= 0.
const DefaultTrackedSessions = 65536

// NewRoundTracker returns a tracker that remembers up to max sessions
// (DefaultTrackedSessions when max <= 0).
func NewRoundTracker(max int) *RoundTracker {
	if max <= 0 {
		max = DefaultTrackedSessions
	}
	return &RoundTracker{max: max, byID: make(map[string]*list.Element), order: list.New()}
}

// Observe records round for session. It returns an error wrapping
// ErrRoundReplay, and records nothing, when round is not above the last
// round seen for the session (a redelivery or a stale retry).
func (t *RoundTracker) Observe(session string, round uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.byID[session]; ok {
		e := el.Value.(*roundEntry)
		if round <= e.round {
			return fmt.Errorf("%w: session %q round %d, last %d", ErrRoundReplay, session, round, e.round)
		}
		e.round = round
		t.order.MoveToFront(el)
		return nil
	}
	t.byID[session] = t.order.PushFront(&roundEntry{session: session, round: round})
	for t.order.Len() > t.max {
		old := t.order.Back()
		delete(t.byID, old.Value.(*roundEntry).session)
		t.order.Remove(old)
	}
	return nil
}

// Last returns the last round recorded for session.
func (t *RoundTracker) Last(session string) (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.byID[session]; ok {
		return el.Value.(*roundEntry).round, true
	}
	return 0, false
}

// Forget drops a session, e.g. when it ends or is resynced from round 1.
func (t *RoundTracker) Forget(session string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.byID[session]; ok {
		delete(t.byID, session)
		t.order.Remove(el)
	}
}

// Len is the number of sessions remembered.
func (t *RoundTracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.order.Len()
}
