package tests

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
)

// budgetLog records, from outside the system, every draft and result on the
// wire: what the verifier told each session and what its device sent next.
type budgetLog struct {
	mu      sync.Mutex
	drafts  map[string]map[uint64]int  // session -> round -> draft length
	budgets map[string]map[uint64]*int // session -> round -> the ok result's budget
	ok      int
}

// watchWire calls seen, from outside the system, with every valid event on
// its subjects, one at a time, until the test ends.
func watchWire(t *testing.T, s *services.System, seen func(events.Payload)) {
	t.Helper()
	nc, err := nats.Connect(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	dec := &events.Decoder{VocabSize: s.Target().VocabSize()}
	if _, err := nc.Subscribe("sled.>", func(m *nats.Msg) {
		if ev, err := dec.DecodeMsg(m); err == nil {
			seen(ev.Data)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func watchBudgets(t *testing.T, s *services.System) *budgetLog {
	t.Helper()
	l := &budgetLog{drafts: map[string]map[uint64]int{}, budgets: map[string]map[uint64]*int{}}
	watchWire(t, s, func(p events.Payload) {
		l.mu.Lock()
		defer l.mu.Unlock()
		switch d := p.(type) {
		case *events.DraftReady:
			if l.drafts[d.SessionID] == nil {
				l.drafts[d.SessionID] = map[uint64]int{}
			}
			l.drafts[d.SessionID][d.Round] = len(d.Draft)
		case *events.VerifyResult:
			if d.Status != events.StatusOK || d.EOS {
				return
			}
			if l.budgets[d.SessionID] == nil {
				l.budgets[d.SessionID] = map[uint64]*int{}
			}
			l.budgets[d.SessionID][d.Round] = d.DraftBudget
			l.ok++
		}
	})
	return l
}

// TestDraftBudgetsOnTheWire: with the goodput policy every ok result carries
// the device's budget for its next round, within [0, MaxBudget], and the next
// round of that session drafts no more than it; the output is the target's
// (greedy, compared with centralized serving). With the static length no
// result carries a budget.
func TestDraftBudgetsOnTheWire(t *testing.T) {
	ps := prompts[:6]
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Devices: 3})
	want := runAll(t, central, ps, 48)
	central.Close()

	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L), testmodels.Path(t, testmodels.Draft4L)}
	// Every round the device's own (TestServerRounds has those the verifier
	// runs at budget 0), so that each budget is followed by a draft.
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 3, Budget: goodput.Policy{MaxBudget: 6}, ServerRounds: -1})
	l := watchBudgets(t, s)
	got := runAll(t, s, ps, 48)
	results := make([]textgen.Result, len(got))
	for i, o := range got {
		results[i] = o.res
	}
	sameAsCentralized(t, ps, results, want, "budgets")
	l.mu.Lock()
	checked, zeros := 0, 0
	for session, rounds := range l.budgets {
		for round, b := range rounds {
			if b == nil {
				t.Fatalf("session %s round %d: ok result without a budget", session, round)
			}
			if *b < 0 || *b > 6 {
				t.Fatalf("session %s round %d: budget %d outside [0, 6]", session, round, *b)
			}
			if *b == 0 {
				zeros++
			}
			if n, ok := l.drafts[session][round+1]; ok {
				checked++
				if n > *b {
					t.Errorf("session %s round %d drafted %d tokens, its budget was %d", session, round+1, n, *b)
				}
			}
		}
	}
	l.mu.Unlock()
	t.Logf("%d ok results with budgets (%d of 0), %d next rounds checked against theirs", l.ok, zeros, checked)
	if checked < 20 {
		t.Errorf("only %d rounds followed a budget", checked)
	}
	s.Close()

	st := start(t, services.UpConfig{Drafts: drafts, Devices: 3, Budget: goodput.Policy{Static: true}})
	ls := watchBudgets(t, st)
	runAll(t, st, ps[:3], 24)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for session, rounds := range ls.budgets {
		for round, b := range rounds {
			if b != nil {
				t.Fatalf("static length: session %s round %d carries budget %d", session, round, *b)
			}
		}
	}
	if ls.ok == 0 {
		t.Fatal("static length: no ok results seen")
	}
}

// serverLog records, from outside the system, which rounds each session's
// device sent and which results said the verifier runs the next round.
type serverLog struct {
	mu       sync.Mutex
	sent     map[string]map[uint64]int  // session -> round -> server_rounds it allowed
	ok       map[string]map[uint64]bool // session -> round -> its ok result said server_next
	maxRound map[string]uint64          // session -> highest ok round seen
	late     []string                   // ok results that arrived after a later round's
}

func watchServerRounds(t *testing.T, s *services.System) *serverLog {
	t.Helper()
	l := &serverLog{sent: map[string]map[uint64]int{}, ok: map[string]map[uint64]bool{}, maxRound: map[string]uint64{}}
	watchWire(t, s, func(p events.Payload) {
		l.mu.Lock()
		defer l.mu.Unlock()
		switch d := p.(type) {
		case *events.DraftReady:
			if l.sent[d.SessionID] == nil {
				l.sent[d.SessionID] = map[uint64]int{}
			}
			l.sent[d.SessionID][d.Round] = d.ServerRounds
		case *events.VerifyResult:
			if d.Status != events.StatusOK {
				return
			}
			if l.ok[d.SessionID] == nil {
				l.ok[d.SessionID] = map[uint64]bool{}
			}
			l.ok[d.SessionID][d.Round] = d.ServerNext
			if d.Round < l.maxRound[d.SessionID] {
				l.late = append(l.late, fmt.Sprintf("%s round %d after round %d", d.SessionID, d.Round, l.maxRound[d.SessionID]))
			}
			l.maxRound[d.SessionID] = max(l.maxRound[d.SessionID], d.Round)
		}
	})
	return l
}

// TestServerRounds: a device held at draft budget 0 lets the verifier run its
// next rounds itself (server_rounds on its drafts, server_next on the
// results). On the wire: every result that says server_next is followed by
// an ok result of the next round which the device never sent, no chain runs
// past what the device's last own round allowed, and the device's own rounds
// are numbered above the chain; a session's verdicts arrive in round order
// (the worker publishes a pass's results beside the next pass, and a device
// drops a verdict of a round it is not waiting on); the devices count exactly
// the rounds they did not send as server rounds. The output is the target's (greedy,
// compared with centralized serving), and with server rounds off no result
// says server_next.
func TestServerRounds(t *testing.T) {
	ps := prompts[:4]
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Devices: 2})
	want := runAll(t, central, ps, 64)
	central.Close()

	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 2, ServerRounds: 8})
	l := watchServerRounds(t, s)
	got := runAll(t, s, ps, 64)
	results := make([]textgen.Result, len(got))
	deviceServed := 0
	for i, o := range got {
		results[i] = o.res
		deviceServed += o.res.Stats.ServerRounds
	}
	sameAsCentralized(t, ps, results, want, "server rounds")
	// The devices have their results; the watcher's copies may still be on
	// their way.
	testwait.Eventually(5*time.Second, 10*time.Millisecond, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		n := 0
		for session, oks := range l.ok {
			for r := range oks {
				if _, mine := l.sent[session][r]; !mine {
					n++
				}
			}
		}
		return n >= deviceServed
	})
	l.mu.Lock()
	if len(l.late) > 0 {
		t.Errorf("verdicts out of round order: %v", l.late)
	}
	served := 0
	for session, oks := range l.ok {
		sent := l.sent[session]
		var own []uint64 // the device's own rounds, in order
		for r := range sent {
			own = append(own, r)
		}
		slices.Sort(own)
		for r, next := range oks {
			_, mine := sent[r]
			if !mine {
				served++
				// A served round lies within the chain its device's last own
				// round allowed.
				i, _ := slices.BinarySearch(own, r)
				if i == 0 || r > own[i-1]+uint64(sent[own[i-1]]) {
					t.Errorf("session %s: round %d run by the verifier beyond what the device allowed (own rounds %v)", session, r, own)
				}
				if !oks[r-1] {
					t.Errorf("session %s: round %d run by the verifier without server_next on round %d", session, r, r-1)
				}
			}
			if next && r < l.maxRound[session] {
				if _, ok := oks[r+1]; !ok {
					t.Errorf("session %s: round %d said server_next, no ok result of round %d", session, r, r+1)
				}
				if _, sentNext := sent[r+1]; sentNext {
					t.Errorf("session %s: round %d said server_next, yet the device sent round %d itself", session, r, r+1)
				}
			}
		}
		for _, r := range own {
			if sent[r] > 8 {
				t.Errorf("session %s round %d allows %d server rounds, the device's limit is 8", session, r, sent[r])
			}
		}
	}
	l.mu.Unlock()
	t.Logf("%d rounds run by the verifier (the devices count %d)", served, deviceServed)
	if served < 10 {
		t.Fatalf("only %d rounds run by the verifier: budgets at 0 on this server should leave most rounds to it", served)
	}
	if served != deviceServed {
		t.Errorf("the devices count %d server rounds, the wire shows %d", deviceServed, served)
	}
	s.Close()

	off := start(t, services.UpConfig{Drafts: drafts, Devices: 2, ServerRounds: -1})
	lo := watchServerRounds(t, off)
	gotOff := runAll(t, off, ps[:2], 32)
	lo.mu.Lock()
	defer lo.mu.Unlock()
	for session, oks := range lo.ok {
		for r, next := range oks {
			if next {
				t.Fatalf("server rounds off: session %s round %d says server_next", session, r)
			}
			if _, mine := lo.sent[session][r]; !mine {
				t.Fatalf("server rounds off: session %s round %d answered, never sent", session, r)
			}
		}
	}
	for i, o := range gotOff {
		if o.res.Stats.ServerRounds != 0 {
			t.Fatalf("server rounds off: generation %d counts %d server rounds", i, o.res.Stats.ServerRounds)
		}
	}
}
