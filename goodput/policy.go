package goodput

import "slices"

// Policy chooses draft budgets. The zero Policy is ready to use with the
// documented defaults.
type Policy struct {
	// MaxBudget is the largest budget given. Default DefaultMaxBudget; at most
	// MaxDraftTokens.
	MaxBudget int
	// Static turns the policy off: every device gets MaxBudget whatever the
	// load (the paper's fixed speculation length, kept for comparison).
	Static bool
	// ProbeEvery: a device held at budget 0 for this many rounds gets one round
	// of ProbeLen, so that its acceptance, which budget 0 cannot measure, stays
	// known, if a probe could change its budget (WorthProbing); otherwise the
	// interval starts over. Default DefaultProbeEvery; negative: never.
	ProbeEvery int
	// ProbeLen is a probe round's budget. Default DefaultProbeLen.
	ProbeLen int
	// ProbeMax bounds the probe interval: each probe after which the policy
	// still chooses budget 0 doubles the device's interval (ProbeEvery, then
	// twice that, ...) up to ProbeMax rounds, since a probe costs a slow
	// drafter its drafting time and, on a device whose rounds the server runs
	// itself (Device.ServerRounds), a trip; a budget above 0 of the policy's
	// own brings the interval back to ProbeEvery. Default DefaultProbeMax, at
	// least ProbeEvery.
	ProbeMax int
}

// Defaults of Policy.
const (
	DefaultMaxBudget  = 8
	DefaultProbeEvery = 16
	DefaultProbeLen   = 2
	DefaultProbeMax   = 256
	// MaxDraftTokens is the event schema's bound on a draft
	// (schemas.MaxDraftTokens; a test holds them equal, so that this package
	// imports nothing and events may carry its Curve).
	MaxDraftTokens = 64
)

// WithDefaults fills zero fields. It is idempotent.
func (p Policy) WithDefaults() Policy {
	if p.MaxBudget <= 0 {
		p.MaxBudget = DefaultMaxBudget
	}
	p.MaxBudget = min(p.MaxBudget, MaxDraftTokens)
	if p.ProbeEvery == 0 {
		p.ProbeEvery = DefaultProbeEvery
	}
	if p.ProbeLen <= 0 {
		p.ProbeLen = DefaultProbeLen
	}
	p.ProbeLen = min(p.ProbeLen, p.MaxBudget)
	if p.ProbeMax <= 0 {
		p.ProbeMax = DefaultProbeMax
	}
	p.ProbeMax = max(p.ProbeMax, p.ProbeEvery)
	return p
}

// Device is what Choose knows of one device of the next pass.
type Device struct {
	// Accept[j] is the probability that draft position j is accepted given
	// that every earlier one was (Acceptance.Rates). Positions beyond its
	// length are taken as never accepted.
	Accept []float64
	// Carried is how many tokens the round carries besides its draft (the
	// committed token, normally 1). Default 1.
	Carried int
	// TPOTMs is the device's latency objective, milliseconds per output token;
	// 0: none.
	TPOTMs float64
	// ExternalMs is the device's time per round outside the server with no
	// draft (the result's trip down, the draft's trip up, queueing at the
	// batcher), DraftMs what each draft token adds to it (drafting, where the
	// device cannot draft while it waits). See Tracker.
	ExternalMs, DraftMs float64
	// ServerRounds: at budget 0 the server runs the device's next round
	// itself (the device allows it; events.DraftReady.ServerRounds), so that
	// round takes the pass alone: no ExternalMs. A round of its own (k > 0)
	// then comes back to a server kept busy by the rounds it runs for
	// everyone else, and waits on average half a pass for the one in flight
	// before its own.
	ServerRounds bool
}

// roundMs is the time of a round of k draft tokens in a pass of passMs.
func (d Device) roundMs(k int, passMs float64) float64 {
	switch {
	case d.ServerRounds && k == 0:
		return passMs
	case d.ServerRounds:
		return d.ExternalMs + d.DraftMs*float64(k) + 1.5*passMs
	}
	return d.ExternalMs + d.DraftMs*float64(k) + passMs
}

// Expected is the expected number of draft tokens accepted when a device with
// conditional acceptance accept drafts k tokens: sum over j < k of
// accept[0] * ... * accept[j].
func Expected(accept []float64, k int) float64 {
	e, run := 0.0, 1.0
	for j := 0; j < k && j < len(accept); j++ {
		run *= clamp01(accept[j])
		e += run
	}
	return e
}

func clamp01(p float64) float64 { return min(max(p, 0), 1) }

// Plan is a Choose decision.
type Plan struct {
	// Budgets[i] is device i's budget for its next round.
	Budgets []int
	// Tokens is the planned pass's size and PassMs its estimated cost
	// (overhead included).
	Tokens int
	PassMs float64
	// Expected is the expected output tokens of the pass (one per device plus
	// the expected accepted draft tokens); Goodput is the fleet's expected
	// output tokens per second with these budgets (see Choose).
	Expected, Goodput float64
	// Missed counts devices whose objective the plan does not meet.
	Missed int
	// Reason names what decided: ReasonGoodput, ReasonSLO (an objective made a
	// smaller pass than goodput alone), ReasonNoEstimate (no cost curve yet:
	// every device gets MaxBudget) or ReasonStatic.
	Reason string
}

// Plan reasons.
const (
	ReasonGoodput    = "goodput"
	ReasonSLO        = "slo"
	ReasonNoEstimate = "no_estimate"
	ReasonStatic     = "static"
)

// CostFunc is a pass-cost estimate in milliseconds (Curve.Ms), false when
// there is none.
type CostFunc func(tokens int) (float64, bool)

// Choose picks every device's budget for the next pass of devs, maximising
// the fleet's goodput: the sum over devices of expected output tokens per
// round, 1 + Expected(Accept, k), over the round's time, ExternalMs +
// DraftMs*k + cost(tokens) + overheadMs (the pass alone at k = 0 for a
// device whose budget-0 rounds the server runs itself). When the server is the bottleneck
// (the pass dominates every round) that is expected output tokens per second
// of server time, and a draft token pays only where the pass-cost curve makes
// it cheaper than the acceptance it brings; where the devices are (the
// server idles between rounds), it is the devices' own rates, and a device
// that drafts slowly gets a shorter budget. Among the choices, those meeting
// the most latency objectives win: a device meets its objective when its
// round delivers its expected tokens within TPOTMs each. Devices that would
// miss their objective at every budget get theirs cut first, so that their
// drafts do not make the others miss.
//
// The search evaluates every pass size along the order of marginal
// acceptance (a device's (k+1)-th draft token is accepted with probability
// accept[0]*...*accept[k], which never grows with k, so for each pass size
// this is the allocation that expects the most tokens), then improves the
// best one a device at a time while that raises the objective. A vector's
// evaluation costs a pass over the devices, so for fleets beyond
// ExactDevices the scan samples at most scanPoints pass sizes and refines
// around the best, and the improvement scores a one-device move in constant
// time against the sums it changes: a plan for thousands of devices costs
// milliseconds, not seconds, on the verifier's hot path.
func (p Policy) Choose(devs []Device, cost CostFunc, overheadMs float64) Plan {
	return p.choose(devs, cost, overheadMs, ExactDevices)
}

// choose is Choose searching fleets of up to exact devices exhaustively.
func (p Policy) choose(devs []Device, cost CostFunc, overheadMs float64, exact int) Plan {
	p = p.WithDefaults()
	plan := Plan{Budgets: make([]int, len(devs))}
	if len(devs) == 0 {
		return plan
	}
	base := carriedTokens(devs)
	ev := evaluator{devs: devs, cost: cost, overhead: overheadMs, base: base, exact: exact}
	if _, ok := cost(base); p.Static || !ok {
		for i := range plan.Budgets {
			plan.Budgets[i] = p.MaxBudget
		}
		if p.Static {
			return ev.plan(plan.Budgets, ReasonStatic)
		}
		return ev.plan(plan.Budgets, ReasonNoEstimate)
	}
	best := p.search(&ev, p.order(devs, nil))
	if hopeless := ev.hopeless(); len(hopeless) > 0 {
		// Those that cannot be served in time give way first.
		best = p.search(&ev, p.order(devs, hopeless))
	}
	reason := ReasonGoodput
	// Only objectives can make the plan differ from goodput's own: the second
	// search that tells which runs only when a device has one.
	if ev.objectives() && ev.missed(best.Budgets) < ev.missed(ev.free(p)) {
		reason = ReasonSLO
	}
	return ev.plan(best.Budgets, reason)
}

// WorthProbing reports, for each device of due (indices into devs, each
// held at budget 0), whether a probe (a round of ProbeLen) could change its
// budget: whether, were every draft token of its accepted, some budget above
// 0 would score better than 0 with the other devices' budgets fixed. When
// not, no acceptance a probe could measure makes drafting pay for it (a
// compute-bound pass, a device that drafts slower than the server decodes),
// and the probe would only cost the fleet: its drafting time, and a pass made
// ragged (with a KV stream per slot, a pass of unequal rounds runs as extra
// micro-batches, each reading every weight). budgets are Choose's for devs.
// Without a cost curve every answer is true. The fleet is scored once per
// pass size, so the answers cost O(len(devs) * MaxBudget) together.
func (p Policy) WorthProbing(devs []Device, budgets []int, due []int, cost CostFunc, overheadMs float64) []bool {
	p = p.WithDefaults()
	worth := make([]bool, len(due))
	if len(due) == 0 || len(budgets) != len(devs) {
		return worth
	}
	base := carriedTokens(devs)
	if _, ok := cost(base); !ok {
		for j := range worth {
			worth[j] = true
		}
		return worth
	}
	e := evaluator{devs: devs, cost: cost, overhead: overheadMs, base: base}
	t := base
	for _, n := range budgets {
		t += n
	}
	// The fleet's score as it is, at each pass size a probe's draft makes.
	sums := make([]score, p.MaxBudget+1)
	for n := range sums {
		sums[n] = e.scoreAt(budgets, t+n)
	}
	for j, i := range due {
		if i < 0 || i >= len(devs) || budgets[i] != 0 {
			continue
		}
		d := &devs[i]
		for n := 1; n <= p.MaxBudget && !worth[j]; n++ {
			s := sums[n]
			g0, _, m0 := e.term(i, 0, s.passMs)
			g1, m1 := d.share(n, float64(1+n), s.passMs) // every draft token accepted
			s.goodput += g1 - g0
			if m0 {
				s.met--
			}
			if m1 {
				s.met++
			}
			worth[j] = better(s, sums[0])
		}
	}
	return worth
}

// carriedTokens is what devs' rounds carry besides their drafts: the pass
// size at budget 0.
func carriedTokens(devs []Device) int {
	n := 0
	for _, d := range devs {
		n += carried(d)
	}
	return n
}

func carried(d Device) int {
	if d.Carried <= 0 {
		return 1
	}
	return d.Carried
}

// ExactDevices is the largest fleet whose plan Choose searches exhaustively
// (every pass size along the order, every device in the improvement).
const ExactDevices = 64

// scanPoints bounds the pass sizes Choose's scan evaluates beyond
// ExactDevices.
const scanPoints = 256

// evaluator scores budget vectors for Choose.
type evaluator struct {
	devs     []Device
	cost     CostFunc
	overhead float64
	base     int
	metEver  []bool      // devices whose objective some evaluated vector met
	outs     [][]float64 // outs[i][k]: device i's expected output tokens at budget k
	exact    int         // the largest fleet searched exhaustively
}

// out is device i's expected output of a round at budget k: its target
// token and the expected accepted draft tokens, computed once per device.
func (e *evaluator) out(i, k int) float64 {
	if e.outs == nil {
		e.outs = make([][]float64, len(e.devs))
	}
	o := e.outs[i]
	for len(o) <= k {
		o = append(o, 1+Expected(e.devs[i].Accept, len(o)))
	}
	e.outs[i] = o
	return o[k]
}

type score struct {
	met          int
	goodput      float64
	tokens       int
	passMs, want float64
}

func (e *evaluator) score(k []int) score {
	t := e.base
	for _, n := range k {
		t += n
	}
	return e.scoreAt(k, t)
}

// scoreAt scores k as if its pass held tokens tokens.
func (e *evaluator) scoreAt(k []int, tokens int) score {
	ms, _ := e.cost(tokens)
	ms += e.overhead
	s := score{tokens: tokens, passMs: ms}
	for i := range e.devs {
		g, out, met := e.term(i, k[i], ms)
		s.goodput += g
		s.want += out
		if met {
			s.met++
		}
	}
	return s
}

// moved is the score of k with device i's budget n instead of k[i], from
// base, k's own score at the pass size the move makes.
func (e *evaluator) moved(base score, k []int, i, n int) score {
	g0, o0, m0 := e.term(i, k[i], base.passMs)
	g1, o1, m1 := e.term(i, n, base.passMs)
	s := base
	s.goodput += g1 - g0
	s.want += o1 - o0
	if m0 {
		s.met--
	}
	if m1 {
		s.met++
	}
	return s
}

// term is device i's share of a score at budget k in a pass of ms: its
// goodput, its expected output, and whether its objective is met (which
// marks it in metEver).
func (e *evaluator) term(i, k int, ms float64) (goodput, out float64, met bool) {
	if e.metEver == nil {
		e.metEver = make([]bool, len(e.devs))
	}
	out = e.out(i, k)
	goodput, met = e.devs[i].share(k, out, ms)
	if met {
		e.metEver[i] = true
	}
	return goodput, out, met
}

// share is the device's goodput (output tokens per second) from a round of k
// draft tokens expecting out tokens in a pass of ms, and whether that meets
// its objective.
func (d *Device) share(k int, out, ms float64) (goodput float64, met bool) {
	round := d.roundMs(k, ms)
	if round > 0 {
		goodput = out / round * 1000
	}
	return goodput, d.TPOTMs > 0 && round <= out*d.TPOTMs
}

func better(a, b score) bool {
	return a.met > b.met || (a.met == b.met && a.goodput > b.goodput)
}

func (e *evaluator) objectives() bool {
	for _, d := range e.devs {
		if d.TPOTMs > 0 {
			return true
		}
	}
	return false
}

func (e *evaluator) missed(k []int) int {
	n := 0
	for _, d := range e.devs {
		if d.TPOTMs > 0 {
			n++
		}
	}
	return n - e.score(k).met
}

// free is the budgets goodput alone would choose.
func (e *evaluator) free(p Policy) []int {
	devs := make([]Device, len(e.devs))
	for i, d := range e.devs {
		d.TPOTMs = 0
		devs[i] = d
	}
	f := evaluator{devs: devs, cost: e.cost, overhead: e.overhead, base: e.base, outs: e.outs, exact: e.exact}
	return p.search(&f, p.order(devs, nil)).Budgets
}

func (e *evaluator) hopeless() map[int]bool {
	var h map[int]bool
	for i, d := range e.devs {
		if d.TPOTMs > 0 && !e.metEver[i] {
			if h == nil {
				h = map[int]bool{}
			}
			h[i] = true
		}
	}
	return h
}

func (e *evaluator) plan(k []int, reason string) Plan {
	s := e.score(k)
	return Plan{Budgets: k, Tokens: s.tokens, PassMs: s.passMs, Expected: s.want, Goodput: s.goodput,
		Missed: e.missed(k), Reason: reason}
}

// gain is one more draft token for device dev, its k-th (from 1).
type gain struct {
	dev, k int
	g      float64
}

// order lists every possible draft token by marginal gain, largest first;
// the devices in last go after all others.
func (p Policy) order(devs []Device, last map[int]bool) []gain {
	var gs []gain
	for i, d := range devs {
		run := 1.0
		for k := 1; k <= p.MaxBudget; k++ {
			if k-1 < len(d.Accept) {
				run *= clamp01(d.Accept[k-1])
			} else {
				run = 0
			}
			gs = append(gs, gain{dev: i, k: k, g: run})
		}
	}
	// A total order (device and position break ties), so an unstable sort is
	// deterministic; sort.SliceStable's reflection cost most of a large plan.
	slices.SortFunc(gs, func(a, b gain) int {
		if la, lb := last[a.dev], last[b.dev]; la != lb {
			if lb {
				return -1
			}
			return 1
		}
		if a.g != b.g {
			if a.g > b.g {
				return -1
			}
			return 1
		}
		if a.dev != b.dev {
			return a.dev - b.dev
		}
		return a.k - b.k
	})
	return gs
}

// search evaluates the pass sizes along order (every one up to ExactDevices
// devices, else a sample refined around the best), keeps the best, then
// moves one device's budget up or down while that improves it.
func (p Policy) search(e *evaluator, order []gain) Plan {
	// prefix[t] is the budget vector of the first t tokens of order.
	at := func(t int) []int {
		k := make([]int, len(e.devs))
		for _, g := range order[:t] {
			k[g.dev] = g.k
		}
		return k
	}
	useful := func(t int) bool { return t == 0 || order[t-1].g > 0 } // a token never accepted only adds cost
	best, bestT := at(0), 0
	bs := e.score(best)
	try := func(from, to, step int) {
		k := at(from)
		for t := from; t <= to; t++ {
			if t > from {
				g := order[t-1]
				k[g.dev] = g.k
			}
			if (t-from)%step != 0 && t != to || !useful(t) {
				continue
			}
			if s := e.score(k); better(s, bs) {
				bs, bestT = s, t
				copy(best, k)
			}
		}
	}
	if len(order) == 0 {
		return Plan{Budgets: best}
	}
	exact := len(e.devs) <= e.exact
	step := 1
	if !exact {
		step = max(1, len(order)/scanPoints)
	}
	try(1, len(order), step)
	if step > 1 {
		try(max(1, bestT-step), min(len(order), bestT+step), 1)
	}
	// Local improvement: rarely more than one round moves anything. A move
	// changes the pass size by one token, so each candidate is scored against
	// the unchanged vector's sums at that size (e.moved): the improvement
	// costs a pass over the fleet per move made, not per move tried.
	t := e.base
	for _, n := range best {
		t += n
	}
	var up, down score
	fresh := false
	for range 4 {
		moved := false
		for i := range best {
			for _, step := range []int{1, -1} {
				n := best[i] + step
				if n < 0 || n > p.MaxBudget {
					continue
				}
				if !fresh {
					up, down, fresh = e.scoreAt(best, t+1), e.scoreAt(best, t-1), true
				}
				base := up
				if step < 0 {
					base = down
				}
				if s := e.moved(base, best, i, n); better(s, bs) {
					best[i], t, bs, moved, fresh = n, t+step, s, true, false
				}
			}
		}
		if !moved {
			break
		}
	}
	return Plan{Budgets: best}
}

// Acceptance is a device's decaying estimate of its drafts' acceptance per
// position: of the rounds that reached position j (every earlier draft token
// accepted), the share that had it accepted, recent rounds weighing more. A
// position never reached takes the estimate of the one before it. The zero
// value is ready to use with the defaults (a prior of DefaultPrior, decay
// DefaultDecay). Not safe for concurrent use.
type Acceptance struct {
	// Prior is the estimate of position 0 before any round. Default
	// DefaultPrior.
	Prior float64
	// Decay is the weight past rounds keep per new round. Default DefaultDecay.
	Decay float64

	reached, accepted [MaxDraftTokens]float64
}

// Defaults of Acceptance.
const (
	DefaultPrior = 0.5
	DefaultDecay = 0.9
)

// Observe records a round of drafted draft tokens with the first accepted of
// them accepted.
func (a *Acceptance) Observe(drafted, accepted int) {
	decay := a.Decay
	if decay <= 0 || decay >= 1 {
		decay = DefaultDecay
	}
	drafted = min(drafted, MaxDraftTokens)
	for j := 0; j < drafted && j <= accepted; j++ {
		a.reached[j] = a.reached[j]*decay + 1
		a.accepted[j] *= decay
		if j < accepted {
			a.accepted[j]++
		}
	}
}

// Rates returns the conditional acceptance of positions 0 ... n-1 (see
// Device.Accept), each smoothed towards the one before it by one pseudo-round.
func (a *Acceptance) Rates(n int) []float64 {
	prior := a.Prior
	if prior <= 0 || prior > 1 {
		prior = DefaultPrior
	}
	n = min(n, MaxDraftTokens)
	out := make([]float64, n)
	for j := range out {
		out[j] = (a.accepted[j] + prior) / (a.reached[j] + 1)
		prior = out[j]
	}
	return out
}

// Mean is the estimated accepted draft tokens per round of k draft tokens.
func (a *Acceptance) Mean(k int) float64 { return Expected(a.Rates(k), k) }
