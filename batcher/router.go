package batcher

import (
	"sort"
	"time"
)

// Router assigns sessions to verifier workers. A session sticks to the worker that
// holds its KV cache; it moves only when that worker stops heartbeating, and then
// to the live worker with the fewest sessions (the new worker rebuilds the session
// through a resync). Router does no I/O and is not safe for concurrent use.
type Router struct {
	// Timeout is how long a worker may go without a heartbeat before it is
	// considered gone. Default 3s.
	Timeout time.Duration
	// SessionIdle forgets sessions not routed for this long. Default 10m.
	SessionIdle time.Duration

	workers  map[string]time.Time // worker -> last heartbeat
	sessions map[string]*route
	load     map[string]int // worker -> sessions routed to it
}

type route struct {
	worker string
	last   time.Time
}

// NewRouter returns a router with the given timeouts (zero: defaults).
func NewRouter(timeout, sessionIdle time.Duration) *Router {
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	if sessionIdle <= 0 {
		sessionIdle = 10 * time.Minute
	}
	return &Router{Timeout: timeout, SessionIdle: sessionIdle,
		workers: map[string]time.Time{}, sessions: map[string]*route{}, load: map[string]int{}}
}

// Heartbeat records that worker is alive at now.
func (r *Router) Heartbeat(worker string, now time.Time) { r.workers[worker] = now }

func (r *Router) alive(worker string, now time.Time) bool {
	t, ok := r.workers[worker]
	return ok && now.Sub(t) <= r.Timeout
}

// Alive lists the live workers, sorted.
func (r *Router) Alive(now time.Time) []string {
	var out []string
	for w := range r.workers {
		if r.alive(w, now) {
			out = append(out, w)
		}
	}
	sort.Strings(out)
	return out
}

// Route returns the worker for session, or "" when no worker is alive (the batch
// then goes to the pool's shared subject, for whichever worker comes first).
// moved reports a reassignment away from a worker that stopped heartbeating.
func (r *Router) Route(session string, now time.Time) (worker string, moved bool) {
	rt := r.sessions[session]
	if rt != nil && r.alive(rt.worker, now) {
		rt.last = now
		return rt.worker, false
	}
	best := ""
	for _, w := range r.Alive(now) {
		if best == "" || r.load[w] < r.load[best] {
			best = w
		}
	}
	if rt != nil {
		r.load[rt.worker]--
		moved = true
		if best == "" {
			delete(r.sessions, session)
			return "", true
		}
		rt.worker, rt.last = best, now
	} else if best != "" {
		r.sessions[session] = &route{worker: best, last: now}
	}
	if best != "" {
		r.load[best]++
	}
	return best, moved
}

// Sweep forgets idle sessions and long-dead workers.
func (r *Router) Sweep(now time.Time) {
	for s, rt := range r.sessions {
		if now.Sub(rt.last) > r.SessionIdle {
			r.load[rt.worker]--
			delete(r.sessions, s)
		}
	}
	for w, t := range r.workers {
		if now.Sub(t) > r.SessionIdle && r.load[w] <= 0 {
			delete(r.workers, w)
			delete(r.load, w)
		}
	}
}

// Sessions is the number of sessions being routed.
func (r *Router) Sessions() int { return len(r.sessions) }
