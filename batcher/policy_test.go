package batcher

import (
	"fmt"
	"testing"
	"time"
)

func TestPolicyDecide(t *testing.T) {
	p := Policy{Size: 4, MaxWait: 2 * time.Millisecond}.WithDefaults()
	cases := []struct {
		n, active int
		age       time.Duration
		close     bool
		reason    string
	}{
		{0, 3, time.Hour, false, ""},        // nothing to send
		{4, 10, 0, true, ReasonSize},        // full
		{5, 10, 0, true, ReasonSize},        // over full
		{3, 3, 0, true, ReasonAll},          // every active device is in
		{2, 3, time.Millisecond, false, ""}, // waiting for the third
		{2, 3, 2 * time.Millisecond, true, ReasonDeadline},
		{1, 0, 0, false, ""}, // unknown activity: wait
	}
	for _, c := range cases {
		ok, reason, wait := p.Decide(Queue{Drafts: c.n, Active: c.active, Age: c.age, Slack: NoSlack})
		if ok != c.close || reason != c.reason {
			t.Errorf("Decide(%d, %d, %v) = %v %q, want %v %q", c.n, c.active, c.age, ok, reason, c.close, c.reason)
		}
		if !ok && c.n > 0 && wait != p.MaxWait-c.age {
			t.Errorf("Decide(%d, %d, %v) wait %v", c.n, c.active, c.age, wait)
		}
	}
	plain := Policy{Size: 4, NoEarlyClose: true}.WithDefaults()
	if ok, _, _ := plain.Decide(Queue{Drafts: 3, Active: 3, Slack: NoSlack}); ok {
		t.Error("NoEarlyClose closed on all-active")
	}
	if d := (Policy{}).WithDefaults(); d.Size != DefaultSize || d.MaxWait != DefaultMaxWait {
		t.Errorf("defaults %+v", d)
	}
}

func TestRouterSticky(t *testing.T) {
	r := NewRouter(time.Second, time.Minute)
	now := time.Unix(1000, 0)
	if w, _ := r.Route("s1", now); w != "" {
		t.Fatalf("routed to %q with no workers", w)
	}
	r.Heartbeat("w1", now)
	r.Heartbeat("w2", now)
	a, _ := r.Route("s1", now)
	// Sticky while the worker lives.
	for i := range 5 {
		if w, moved := r.Route("s1", now.Add(time.Duration(i)*100*time.Millisecond)); w != a || moved {
			t.Fatalf("s1 moved to %q", w)
		}
	}
	// a stops heartbeating; the other keeps going.
	later := now.Add(2 * time.Second)
	other := map[string]string{"w1": "w2", "w2": "w1"}[a]
	r.Heartbeat(other, later)
	if w, moved := r.Route("s1", later); w != other || !moved {
		t.Fatalf("after %s died, s1 went to %q (moved %v)", a, w, moved)
	}
	if alive := r.Alive(later); len(alive) != 1 || alive[0] != other {
		t.Fatalf("alive %v", alive)
	}
	// Idle sessions and dead workers are forgotten.
	r.Sweep(later.Add(2 * time.Minute))
	if r.Sessions() != 0 {
		t.Fatalf("%d sessions after sweep", r.Sessions())
	}
}

// TestRouterAgrees: two batchers' routers with the same live workers send every
// session to the same worker (so two batchers sharing a pool's drafts keep a
// session on one KV cache), spread sessions evenly, and a worker joining takes
// only about its share of them.
func TestRouterAgrees(t *testing.T) {
	now := time.Unix(1000, 0)
	a, b := NewRouter(time.Second, time.Minute), NewRouter(time.Second, time.Minute)
	for _, w := range []string{"w1", "w2", "w3"} {
		a.Heartbeat(w, now)
		b.Heartbeat(w, now)
	}
	const n = 3000
	count := map[string]int{}
	first := map[string]string{}
	for i := range n {
		s := fmt.Sprintf("session-%d", i)
		wa, _ := a.Route(s, now)
		if wb, _ := b.Route(s, now); wa != wb {
			t.Fatalf("%s: router a says %s, b %s", s, wa, wb)
		}
		count[wa]++
		first[s] = wa
	}
	for w, c := range count {
		if c < n/3*8/10 || c > n/3*12/10 {
			t.Errorf("worker %s has %d of %d sessions, want about a third", w, c, n)
		}
	}
	// A fourth worker joins: about a quarter of the sessions move, all to it.
	a.Heartbeat("w4", now)
	movedN := 0
	for i := range n {
		s := fmt.Sprintf("session-%d", i)
		w, moved := a.Route(s, now)
		if moved != (w != first[s]) {
			t.Fatalf("%s: moved %v but %s -> %s", s, moved, first[s], w)
		}
		if moved {
			movedN++
			if w != "w4" {
				t.Fatalf("%s moved from %s to %s, not to the new worker", s, first[s], w)
			}
		}
	}
	if movedN < n/4*7/10 || movedN > n/4*13/10 {
		t.Errorf("%d of %d sessions moved to the new worker, want about a quarter", movedN, n)
	}
}

func TestPolicyDrain(t *testing.T) {
	p := Policy{Size: 4, MaxWait: 10 * time.Millisecond}
	cases := []struct {
		n, active int
		age       time.Duration
		sizes     []int
		reason    string
		wait      time.Duration
	}{
		{0, 0, 0, nil, "", 10 * time.Millisecond},
		{3, 8, time.Millisecond, nil, "", 9 * time.Millisecond},     // waits to fill
		{3, 3, 0, []int{3}, ReasonAll, 10 * time.Millisecond},       // every active device is in
		{10, 8, 0, []int{4, 4}, ReasonSize, 10 * time.Millisecond},  // two full, 2 stay (looked at just now)
		{10, 10, 0, []int{4, 4}, ReasonSize, 10 * time.Millisecond}, // the rest is not "all" any more
		{6, 0, 20 * time.Millisecond, []int{4}, ReasonSize, 10 * time.Millisecond},
		{3, 0, 20 * time.Millisecond, []int{3}, ReasonDeadline, 10 * time.Millisecond},
		{8, 0, 0, []int{4, 4}, ReasonSize, 10 * time.Millisecond},
	}
	for _, c := range cases {
		sizes, reason, wait := p.Drain(Queue{Drafts: c.n, Active: c.active, Age: c.age, Slack: NoSlack})
		if fmt.Sprint(sizes) != fmt.Sprint(c.sizes) || reason != c.reason || wait != c.wait {
			t.Errorf("Drain(%d, %d, %v) = %v %q %v, want %v %q %v", c.n, c.active, c.age, sizes, reason, wait, c.sizes, c.reason, c.wait)
		}
	}
}

// SLO-aware batching: a queue closes when waiting longer would make a draft
// miss its due time, and otherwise fills for up to its estimated pass.
func TestPolicySLO(t *testing.T) {
	ms := time.Millisecond
	p := Policy{Size: 16, MaxWait: ms, SLO: true, SLOMaxWait: 50 * ms}.WithDefaults()
	cases := []struct {
		name   string
		q      Queue
		close  bool
		reason string
		wait   time.Duration
	}{
		{"slack left: wait for it", Queue{Drafts: 3, Active: 8, Slack: 5 * ms, Pass: 30 * ms}, false, "", 5 * ms},
		{"slack gone: close", Queue{Drafts: 3, Active: 8, Slack: 0, Pass: 30 * ms}, true, ReasonSLO, 0},
		{"late already: close", Queue{Drafts: 3, Active: 8, Slack: -2 * ms}, true, ReasonSLO, 0},
		{"no due times: fill up to the pass", Queue{Drafts: 3, Active: 8, Age: 10 * ms, Slack: NoSlack, Pass: 30 * ms}, false, "", 20 * ms},
		{"filled for a pass: close", Queue{Drafts: 3, Active: 8, Age: 30 * ms, Slack: NoSlack, Pass: 30 * ms}, true, ReasonDeadline, 0},
		{"pass unknown: SLOMaxWait", Queue{Drafts: 3, Active: 8, Age: 10 * ms, Slack: NoSlack}, false, "", 40 * ms},
		{"everyone in: close at once", Queue{Drafts: 8, Active: 8, Slack: time.Second}, true, ReasonAll, 0},
	}
	for _, c := range cases {
		ok, reason, wait := p.Decide(c.q)
		if ok != c.close || reason != c.reason || (!ok && wait != c.wait) {
			t.Errorf("%s: Decide(%+v) = %v %q %v, want %v %q %v", c.name, c.q, ok, reason, wait, c.close, c.reason, c.wait)
		}
	}
	// Without SLO the same queues close by MaxWait, whatever their slack.
	plain := p
	plain.SLO = false
	if ok, reason, _ := plain.Decide(Queue{Drafts: 3, Active: 8, Age: 2 * ms, Slack: time.Second, Pass: 30 * ms}); !ok || reason != ReasonDeadline {
		t.Errorf("without SLO: %v %q, want a deadline close", ok, reason)
	}
	now := time.Unix(100, 0)
	dues := []time.Time{{}, now.Add(40 * ms), now.Add(25 * ms)}
	if got := Slack(now, dues, 10); got != 15*ms {
		t.Errorf("Slack = %v, want 15ms (earliest due 25ms, less a 10ms pass)", got)
	}
	if got := Slack(now, []time.Time{{}}, 10); got != NoSlack {
		t.Errorf("Slack without due times = %v, want NoSlack", got)
	}
}

func TestActivity(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	a := Activity{Window: time.Second}
	if a.Count(t0) != 0 {
		t.Fatal("empty activity counts devices")
	}
	a.Seen("d1", t0)
	a.Seen("d2", t0.Add(500*time.Millisecond))
	a.Seen("d1", t0.Add(900*time.Millisecond)) // d1 again: still one device
	if n := a.Count(t0.Add(time.Second)); n != 2 {
		t.Fatalf("count %d, want 2", n)
	}
	if n := a.Count(t0.Add(1600 * time.Millisecond)); n != 1 { // d2 last seen 1.1 s ago
		t.Fatalf("count %d after d2's window, want 1", n)
	}
	if n := a.Count(t0.Add(3 * time.Second)); n != 0 {
		t.Fatalf("count %d after every window, want 0", n)
	}
}
