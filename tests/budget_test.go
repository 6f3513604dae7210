package tests

import (
	"sync"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/internal/testmodels"
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

func watchBudgets(t *testing.T, s *services.System) *budgetLog {
	t.Helper()
	nc, err := nats.Connect(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l := &budgetLog{drafts: map[string]map[uint64]int{}, budgets: map[string]map[uint64]*int{}}
	dec := &events.Decoder{VocabSize: s.Target().VocabSize()}
	_, err = nc.Subscribe("sled.>", func(m *nats.Msg) {
		ev, err := dec.DecodeMsg(m)
		if err != nil {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		switch d := ev.Data.(type) {
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
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
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
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 3, Budget: goodput.Policy{MaxBudget: 6}})
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
