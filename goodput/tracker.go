package goodput

import (
	"sync"
	"time"
)

// Round is what a server learned from one verified round of one device.
type Round struct {
	// Device names the device (its budget and acceptance are its own).
	Device string
	// Drafted draft tokens, the first Accepted of them accepted.
	Drafted, Accepted int
	// Carried is how many tokens the round carried besides its draft.
	// Default 1.
	Carried int
	// TPOTMs is the round's latency objective, milliseconds per output token;
	// 0: none.
	TPOTMs float64
	// Arrived is when the round reached the server (for the device's time
	// outside it, Device.ExternalMs).
	Arrived time.Time
	// ByServer: the server ran this round on the device's behalf
	// (events.VerifyResult.ServerNext), so it says nothing of the device's
	// time outside the server. ServerRounds: the device lets the server run
	// its next round at budget 0 (Device.ServerRounds).
	ByServer, ServerRounds bool
}

// TrackerConfig configures a Tracker. Zero fields take the documented
// defaults.
type TrackerConfig struct {
	// Policy decides the budgets.
	Policy Policy
	// Prior and Decay of every device's Acceptance (defaults as Acceptance's).
	Prior, Decay float64
	// MaxDevices bounds the devices whose state is kept; the one whose last
	// round is oldest is forgotten first. Default 4096.
	MaxDevices int
}

// Tracker keeps what Policy needs to know of each device (its Acceptance, its
// time outside the server, how long it has been held at budget 0) and the
// server's pass cost, and plans each pass's budgets. A verifier worker holds
// one; the simulator (bench/sim) holds one per simulated worker. A Tracker is
// safe for concurrent use.
type Tracker struct {
	cfg  TrackerConfig
	est  *CostEstimator
	mu   sync.Mutex
	devs map[string]*devState
}

type devState struct {
	acc      Acceptance
	answered time.Time // when its last result went out
	ext      lineFit   // time outside the server against the round's draft tokens
	zeros    int       // consecutive rounds planned at budget 0
	every    int       // rounds at budget 0 before the next probe (0: Policy.ProbeEvery)
	probing  bool      // its last plan was a probe
	// Its next round, expected at next with nextTokens tokens, until Arrived.
	next       time.Time
	nextTokens int
	waited     bool
}

// lineFit is a decaying least-squares line y = a + b*x, b >= 0: a device's
// time per round outside the server (y, ms) against its draft tokens (x).
// Rounds all of one length say nothing of b, which is then 0 until rounds of
// other lengths are seen.
type lineFit struct{ w, x, y, xx, xy float64 }

func (f *lineFit) add(x, y float64) {
	const decay = 0.9
	f.w, f.x, f.y, f.xx, f.xy = f.w*decay+1, f.x*decay+x, f.y*decay+y, f.xx*decay+x*x, f.xy*decay+x*y
}

func (f *lineFit) line() (a, b float64) {
	if f.w == 0 {
		return 0, 0
	}
	mx, my := f.x/f.w, f.y/f.w
	if v := f.xx/f.w - mx*mx; v > 0.25 { // draft lengths vary by at least about one token
		b = max((f.xy/f.w-mx*my)/v, 0)
	}
	return max(my-b*mx, 0), b
}

// NewTracker returns a tracker planning with cfg.Policy from est's curve.
func NewTracker(est *CostEstimator, cfg TrackerConfig) *Tracker {
	cfg.Policy = cfg.Policy.WithDefaults()
	if cfg.MaxDevices <= 0 {
		cfg.MaxDevices = 4096
	}
	return &Tracker{cfg: cfg, est: est, devs: map[string]*devState{}}
}

// Estimator is the tracker's cost estimator.
func (t *Tracker) Estimator() *CostEstimator { return t.est }

// Policy is the policy the tracker plans with (defaults filled).
func (t *Tracker) Policy() Policy { return t.cfg.Policy }

// Plan records the rounds of one verified pass and returns their devices'
// budgets for their next rounds (Plan.Budgets, in the order of rounds); their
// results go out at answered.
func (t *Tracker) Plan(rounds []Round, answered time.Time) Plan {
	curve := t.est.Curve()
	over := t.est.OverheadMs()
	t.mu.Lock()
	defer t.mu.Unlock()
	pol := t.cfg.Policy
	devs := make([]Device, len(rounds))
	states := make([]*devState, len(rounds))
	for i, r := range rounds {
		s := t.devs[r.Device]
		if s == nil {
			t.evict()
			s = &devState{acc: Acceptance{Prior: t.cfg.Prior, Decay: t.cfg.Decay}}
			t.devs[r.Device] = s
		}
		s.acc.Observe(r.Drafted, r.Accepted)
		if !s.answered.IsZero() && !r.ByServer {
			if gap := r.Arrived.Sub(s.answered); gap > 0 && gap < time.Minute {
				s.ext.add(float64(r.Drafted), float64(gap)/float64(time.Millisecond))
			}
		}
		s.answered = answered
		states[i] = s
		a, b := s.ext.line()
		devs[i] = Device{Accept: s.acc.Rates(pol.MaxBudget), Carried: r.Carried, TPOTMs: r.TPOTMs, ExternalMs: a, DraftMs: b,
			ServerRounds: r.ServerRounds}
	}
	plan := pol.Choose(devs, curve.Ms, over)
	var due []int // the devices a probe is due for
	for i, s := range states {
		if s.every == 0 || plan.Budgets[i] > 0 {
			s.every = pol.ProbeEvery
		} else if s.probing {
			s.every = min(2*s.every, pol.ProbeMax) // probed, and still not worth a draft
		}
		s.probing = false
		switch {
		case plan.Budgets[i] > 0:
			s.zeros = 0
		case pol.ProbeEvery > 0:
			if s.zeros++; s.zeros >= s.every {
				s.zeros = 0
				due = append(due, i)
			}
		}
	}
	// A due probe is sent only if what it may measure could change the
	// budget; if not, the interval starts over without growing: the load
	// that rules drafting out may pass.
	for j, ok := range pol.WorthProbing(devs, plan.Budgets, due, curve.Ms, over) {
		if ok {
			plan.Budgets[due[j]], states[due[j]].probing = pol.ProbeLen, true
		}
	}
	for i, s := range states {
		d := devs[i]
		// A round the server runs itself is not waited for.
		s.waited = !(plan.Budgets[i] == 0 && d.ServerRounds)
		s.nextTokens = plan.Budgets[i] + carried(d)
		s.next = answered.Add(time.Duration(d.roundMs(plan.Budgets[i], 0) * float64(time.Millisecond)))
	}
	return plan
}

// Arrived records that device's next round has reached the server: it is no
// longer Pending.
func (t *Tracker) Arrived(device string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.devs[device]; s != nil {
		s.waited = false
	}
}

// Gather is goodput.Gather for this tracker's server: how long a server free
// since freed, holding queued tokens of drafts, waits for the rounds it
// expects (Pending), from its estimator's curve and overhead; no longer than
// maxWait since freed, nor past due (the earliest due time of a queued
// draft; zero: none) less the queued pass's estimated cost. Both
// verifier.Worker and the simulator (bench/sim) decide with it.
func (t *Tracker) Gather(now, freed time.Time, queued int, due time.Time, maxWait time.Duration) time.Duration {
	limit := maxWait - now.Sub(freed)
	if limit <= 0 || queued <= 0 {
		return 0
	}
	curve := t.est.Curve()
	if !due.IsZero() {
		ms, _ := curve.Ms(queued)
		limit = min(limit, due.Sub(now)-time.Duration(ms*float64(time.Millisecond)))
	}
	expected := t.Pending(now)
	return Gather(now, queued, expected, curve.Ms, t.est.OverheadMs(), limit)
}

// pendingFor is how long past its expected time a round stays Pending: one
// that late is not coming soon (its session ended, its device went away).
const pendingFor = time.Second

// Pending lists the rounds the server expects (for Gather): every device
// answered by a Plan whose next round has not Arrived, expected at its
// answer time plus its time outside the server at its budget (ExternalMs +
// DraftMs * budget), carrying its budget and its committed token. A device
// first seen by that Plan has no outside time yet and is expected at once.
// Rounds more than a second overdue are left out.
func (t *Tracker) Pending(now time.Time) []Arrival {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Arrival
	for _, s := range t.devs {
		if s.waited && now.Sub(s.next) < pendingFor {
			out = append(out, Arrival{At: s.next, Tokens: s.nextTokens})
		}
	}
	return out
}

// Acceptance is the tracker's estimate for device: the expected accepted
// tokens of a round of k draft tokens, and whether the device is known.
func (t *Tracker) Acceptance(device string, k int) (float64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.devs[device]
	if s == nil {
		return 0, false
	}
	return s.acc.Mean(k), true
}

// evict forgets the device heard from least recently when the table is full.
func (t *Tracker) evict() {
	if len(t.devs) < t.cfg.MaxDevices {
		return
	}
	var oldest string
	var at time.Time
	for id, s := range t.devs {
		if oldest == "" || s.answered.Before(at) {
			oldest, at = id, s.answered
		}
	}
	delete(t.devs, oldest)
}
