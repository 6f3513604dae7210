package batcher

import (
	"hash/fnv"
	"sort"
	"time"
)

// Router assigns sessions to verifier workers by rendezvous hashing: a session
// goes to the live worker w with the highest hash(session, w). Every batcher with
// the same view of the live workers (their heartbeats) routes every session to
// the same worker, so two batchers sharing a pool's drafts keep each session on
// the one worker that holds its KV cache. A session stays put while its worker
// lives; when that worker stops heartbeating its sessions spread over the rest
// (each rebuilt there through a resync), and a worker joining takes about 1/N of
// the sessions. Router does no I/O and is not safe for concurrent use.
type Router struct {
	// Timeout is how long a worker may go without a heartbeat before it is
	// considered gone. Default 3s.
	Timeout time.Duration
	// SessionIdle forgets sessions not routed for this long. Default 10m.
	SessionIdle time.Duration

	workers  map[string]time.Time // worker -> last heartbeat
	sessions map[string]*route
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
		workers: map[string]time.Time{}, sessions: map[string]*route{}}
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
// moved reports that the session was last routed to another worker.
func (r *Router) Route(session string, now time.Time) (worker string, moved bool) {
	var best uint64
	for w, t := range r.workers {
		if now.Sub(t) > r.Timeout {
			continue
		}
		if h := rendezvous(session, w); worker == "" || h > best || h == best && w < worker {
			worker, best = w, h
		}
	}
	rt := r.sessions[session]
	if rt != nil {
		moved = rt.worker != worker
	}
	if worker == "" {
		delete(r.sessions, session)
		return "", moved
	}
	if rt == nil {
		r.sessions[session] = &route{worker: worker, last: now}
	} else {
		rt.worker, rt.last = worker, now
	}
	return worker, moved
}

// rendezvous is the 64-bit FNV-1a hash of session, a NUL and worker, mixed.
func rendezvous(session, worker string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(session))
	h.Write([]byte{0})
	h.Write([]byte(worker))
	x := h.Sum64()
	// splitmix64's finaliser: FNV's low bits alone spread poorly.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Sweep forgets idle sessions and long-dead workers.
func (r *Router) Sweep(now time.Time) {
	for s, rt := range r.sessions {
		if now.Sub(rt.last) > r.SessionIdle {
			delete(r.sessions, s)
		}
	}
	for w, t := range r.workers {
		if now.Sub(t) > r.SessionIdle {
			delete(r.workers, w)
		}
	}
}

// Sessions is the number of sessions being routed.
func (r *Router) Sessions() int { return len(r.sessions) }
