package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
)

// Options configure every experiment. Zero fields take the documented defaults;
// Quick shrinks every sweep to CI size.
type Options struct {
	// Quick runs CI-sized sweeps with short trials.
	Quick bool
	// ModelDir holds the shared models (stories260k*.gguf). Default
	// services.DefaultModelDir(): $SLED_MODEL_DIR, else ../shared/models.
	ModelDir string
	// Pair selects the target and the acceptance source. modelcache.PairQwen: the
	// real Qwen2.5-Coder 1.5B verifies, and the drafts follow the 0.5B's acceptance
	// measured on it (chat prompts, code and prose); device profiles are rescaled
	// for the 0.5B. modelcache.PairTiny: a synthetic target of Shape and Type, with
	// the acceptance of Draft against stories260k.gguf. Default: qwen when both of
	// its models are in the model cache (`make models`), else tiny.
	Pair string
	// Shape and Type select the synthetic target (gguf.Synth) of the tiny pair.
	// Defaults "smollm-135m" and "F16". With the qwen pair, Type requantizes the
	// target (default: as fetched, Q4_K_M).
	Shape, Type string
	// Draft is the draft model file (in ModelDir) whose agreement with
	// stories260k.gguf drives the drafts of the tiny pair. Default
	// "stories260k-draft-4L.gguf".
	Draft string
	// Profiles are the device profiles (names of Profiles()). Default "rpi4b"
	// ("rpi5" with Quick); capacity runs every built-in profile unless Quick.
	Profiles []string
	// ProfileRate, when > 0, overrides every profile's draft tokens/s.
	ProfileRate float64
	// GPUResultMs is `sled sim`'s worker time per draft on the simulated GPU
	// servers (decoding the draft, encoding and publishing its result). 0:
	// DefaultGPUResultMs; negative: this machine's fitted Messaging.ResultMs,
	// which also holds what a 2-core box loses to the NATS server and the
	// fleet's goroutines sharing the cores with llama.cpp.
	GPUResultMs float64
	// GPUPublishers is how many goroutines publish a pass's results beside
	// the next pass on the simulated GPU servers (sim.Config.Publishers; the
	// verifier's default, min(GOMAXPROCS, 8), on a host of 8 cores or more).
	// 0: DefaultGPUPublishers; negative: none, the result work paid inside
	// the pass loop as on a CPU server.
	GPUPublishers int
	// SimMaxDevices bounds `sled sim`'s capacity searches (every server it
	// models, the simulated GPU servers included). Default 4096 (quick: 512).
	// A search that reaches it reports ">= bound".
	SimMaxDevices int
	// Required is the tokens/s every device must get for the fleet to be within
	// capacity. Default 5 (about human reading speed).
	Required float64
	// Policy is the devices' drafting policy (drafter's defaults: θ 0.4, at most 8).
	Policy drafter.DraftPolicy
	// Budget is the verifier's goodput policy (draft budgets by default).
	// Budget.Static: the paper's fixed speculation length only.
	Budget goodput.Policy
	// UnifiedKV gives the verifier one KV cache for all slots instead of a
	// stream per slot, the centralized server's layout
	// (verifier.Config.UnifiedKV).
	UnifiedKV bool
	// PassTokens is the verifier's micro-batch price with a stream per slot
	// (verifier.Config.PassTokens; 0 its default).
	PassTokens float64
	// Fleets replaces wstgr's fleet sizes (batch size = devices; default
	// 1, 2, 4, 8, 16, 32, quick 1, 4, 8).
	Fleets []int
	// Repeats measures each of wstgr's fleet sizes this many times, the two
	// systems' order alternating from one repeat to the next, so that a shared
	// machine's drift over minutes falls on both; the report then adds, per
	// size, the ratio of the mean rates and the range of the repeats' ratios.
	// Default 1.
	Repeats int
	// GatherMax bounds each verifier worker's wait for the rounds it expects
	// back (verifier.WorkerConfig.GatherMax): 0 its default, negative never
	// wait (every queued batch runs as soon as the verifier frees).
	GatherMax time.Duration
	// NoStatic skips the static-length SLED that capacity and wstgr measure
	// beside the budgeted one (Budget.Static in the same run), so that the
	// policy's gain is measured. Quick implies it for capacity.
	NoStatic bool
	// TPOTMs gives every device a latency objective, ms per output token (0:
	// none).
	TPOTMs float64
	// ServerRounds is every simulated device's Trial.ServerRounds (0: the
	// drafter's default; negative: every round is the device's own).
	ServerRounds int
	// Rates, for capacity, makes the capacity a curve: the largest fleet
	// served at each required per-device rate (tokens/s), SLED beside
	// centralized. Empty: Required only.
	Rates []float64
	// Batch is the batcher's policy. Default size 32 and a 20ms deadline: with the
	// batcher's own 1ms default, batches under load stay near one draft (the
	// batcher does not see the verifier is busy) and the server saturates.
	Batch batcher.Policy
	// Warmup and Duration of every trial. Defaults 1s and 4s (quick: 0.5s, 1.5s);
	// with the qwen pair, whose passes take up to seconds here, 5s and 20s (quick:
	// 2s, 8s).
	Warmup, Duration time.Duration
	// MaxDevices bounds the capacity search. Default 256 (quick too: with
	// steady-state windows the centralized server serves over 100 small-model
	// clients on 2 cores, so a lower bound would cap both systems alike).
	MaxDevices int
	// Threads is the server's llama.cpp thread count. Default: all cores; 1 with
	// Quick, because llama.cpp's spinning worker threads slow down by orders of
	// magnitude on a CI machine whose cores other tests also use.
	Threads int
	// Seed seeds the devices.
	Seed uint64
	// PlotDir, when set, receives PNG plots.
	PlotDir string
	// Progress draws a progress bar on stderr (only on a terminal).
	Progress bool
	// Logger defaults to a logger that discards.
	Logger *slog.Logger

	allProfiles bool // Profiles was left to its default outside Quick
}

// DefaultBatch is the batch policy the experiments use unless told otherwise.
var DefaultBatch = batcher.Policy{Size: 32, MaxWait: 20 * time.Millisecond}

func (o Options) withDefaults() Options {
	if o.ModelDir == "" {
		o.ModelDir = services.DefaultModelDir()
	}
	if o.Pair == "" {
		o.Pair = modelcache.PairTiny
		if qwenCached() {
			o.Pair = modelcache.PairQwen
		}
	}
	if o.Shape == "" {
		o.Shape = "smollm-135m"
	}
	if o.Type == "" {
		o.Type = map[bool]string{true: "Q4_K_M", false: "F16"}[o.qwen()]
	}
	if o.Draft == "" {
		o.Draft = "stories260k-draft-4L.gguf"
	}
	if len(o.Profiles) == 0 {
		o.allProfiles = !o.Quick && o.ProfileRate == 0
		o.Profiles = []string{"rpi4b"}
		if o.Quick {
			// A faster board leaves SLED a margin above Required on a loaded CI
			// machine, where RPi 4B-rate devices sit close to it even alone.
			o.Profiles = []string{"rpi5"}
		}
	}
	if o.Required <= 0 {
		o.Required = 5
	}
	if o.Batch == (batcher.Policy{}) {
		o.Batch = DefaultBatch
	}
	if o.Warmup <= 0 {
		o.Warmup = map[bool]time.Duration{false: time.Second, true: 500 * time.Millisecond}[o.Quick]
		if o.qwen() {
			o.Warmup = map[bool]time.Duration{false: 5 * time.Second, true: 2 * time.Second}[o.Quick]
		}
	}
	if o.Duration <= 0 {
		o.Duration = map[bool]time.Duration{false: 4 * time.Second, true: 1500 * time.Millisecond}[o.Quick]
		if o.qwen() {
			o.Duration = map[bool]time.Duration{false: 20 * time.Second, true: 8 * time.Second}[o.Quick]
		}
	}
	if o.MaxDevices <= 0 {
		o.MaxDevices = 256
	}
	if o.SimMaxDevices <= 0 {
		o.SimMaxDevices = map[bool]int{false: 4096, true: 512}[o.Quick]
	}
	if o.Repeats <= 0 {
		o.Repeats = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Threads <= 0 && o.Quick {
		o.Threads = 1
	}
	return o
}

// targetName names the target for titles.
func (o Options) targetName() string {
	if o.qwen() {
		return "qwen2.5-coder-1.5b"
	}
	return o.Shape
}

// qwen reports whether the experiments run on the real pair.
func (o Options) qwen() bool { return o.Pair == modelcache.PairQwen }

// qwenCached reports whether both models of the qwen pair are in the model cache.
func qwenCached() bool {
	for _, n := range []string{modelcache.QwenTarget, modelcache.QwenDraft} {
		m, _ := modelcache.Lookup(n)
		if ok, _ := modelcache.Open("").Verified(m); !ok {
			return false
		}
	}
	return true
}

// qwenPrompts are the real pair's prompts (chat user turns, code and prose).
func qwenPrompts(quick bool) (texts, kinds []string) {
	ps := DefaultLosslessPrompts()
	if quick {
		ps = []Prompt{ps[0], ps[1], ps[4], ps[5]}
	}
	for _, p := range ps {
		texts, kinds = append(texts, p.Text), append(kinds, p.Kind)
	}
	return texts, kinds
}

// profiles returns the run's device profiles: o.Profiles, or every built-in one
// where the experiment runs all of them (allProfiles), rescaled for the qwen
// pair's draft.
func (o Options) profiles() ([]Profile, error) {
	names := o.Profiles
	if o.allProfiles {
		names = nil
		for _, p := range Profiles() {
			names = append(names, p.Name)
		}
	}
	var out []Profile
	for _, n := range names {
		p, err := LookupProfile(n)
		if err != nil {
			return nil, err
		}
		if o.qwen() {
			m, _ := modelcache.Lookup(modelcache.QwenDraft)
			p = p.ForDraft("qwen2.5-coder-0.5b-instruct Q4_K_M", m.Size)
		}
		if o.ProfileRate > 0 {
			p.TokensPerSec = o.ProfileRate
			p.Source = fmt.Sprintf("rate overridden to %.1f tok/s (--profile-rate)", o.ProfileRate)
		}
		out = append(out, p)
	}
	return out, nil
}

func (o Options) trial(devices int, p Profile) Trial {
	t := Trial{Devices: devices, Profile: p, Policy: o.Policy, Batch: o.Batch, Budget: o.Budget, UnifiedKV: o.UnifiedKV, GatherMax: o.GatherMax, PassTokens: o.PassTokens, TPOTMs: o.TPOTMs, ServerRounds: o.ServerRounds, Warmup: o.Warmup, Duration: o.Duration, Seed: o.Seed}
	if o.qwen() {
		t.Timeout = time.Minute // a loaded 1.5B pass takes seconds on a small CPU
	}
	return t
}

// Experiments lists the experiment names Run knows.
var Experiments = []string{"capacity", "wstgr", "speclen", "cost", "transport", "device", "workers"}

// Run runs the named experiment and returns its report; plots go to o.PlotDir.
func Run(ctx context.Context, name string, o Options) (*Report, error) {
	o = o.withDefaults()
	switch name {
	case "capacity":
		return runCapacity(ctx, o)
	case "wstgr":
		return runWSTGR(ctx, o)
	case "speclen":
		return runSpecLen(ctx, o)
	case "cost":
		return runCost(ctx, o)
	case "transport":
		return runTransport(ctx, o)
	case "device":
		return runDevice(ctx, o)
	case "workers":
		return runWorkers(ctx, o)
	}
	return nil, fmt.Errorf("bench: unknown experiment %q (known: %v)", name, Experiments)
}

// env builds the environment for target type typ.
func (o Options) env(ctx context.Context, typ string) (*Env, error) {
	if o.qwen() {
		find := services.FindOptions{Dir: o.ModelDir}
		target, err := services.FindModel(ctx, modelcache.QwenTarget, find)
		if err != nil {
			return nil, err
		}
		draft, err := services.FindModel(ctx, modelcache.QwenDraft, find)
		if err != nil {
			return nil, err
		}
		accTarget := target
		if typ != "" && !strings.EqualFold(typ, "Q4_K_M") {
			if target, err = services.Requantized(target, typ, modelcache.DefaultDir()); err != nil {
				return nil, err
			}
		}
		texts, kinds := qwenPrompts(o.Quick)
		cfg := EnvConfig{Target: target, AcceptTarget: accTarget, AcceptDraft: draft, Threads: o.Threads, Logger: o.Logger,
			Prompts: texts, Kinds: kinds, Chat: true}
		if o.Quick {
			cfg.ContinuationLen, cfg.AcceptanceLen = 64, 64
		}
		return NewEnv(ctx, cfg)
	}
	if o.ModelDir == "" {
		return nil, errors.New("bench: no model directory: set SLED_MODEL_DIR or --models")
	}
	tok := filepath.Join(o.ModelDir, "stories260k.gguf")
	target, err := SynthTarget(CacheDir(), o.Shape, typ, tok)
	if err != nil {
		return nil, err
	}
	cfg := EnvConfig{Target: target, AcceptTarget: tok, AcceptDraft: filepath.Join(o.ModelDir, o.Draft), Threads: o.Threads, Logger: o.Logger}
	if o.Quick {
		cfg.Prompts, cfg.ContinuationLen = DefaultPrompts[:4], 96
	}
	return NewEnv(ctx, cfg)
}

func (o Options) report(name string, e *Env) *Report {
	r := &Report{Experiment: name, Time: time.Now().UTC(), Machine: machine(), Quick: o.Quick}
	if e != nil {
		r.Target = filepath.Base(e.Cfg.Target)
		r.Pair = e.Acceptance.Draft + " → " + e.Acceptance.Target
		s := e.Acceptance.Summary(o.Policy)
		r.Acceptance = &s
		what := "the synthetic-shape target"
		if o.qwen() {
			what = "the real target"
		}
		r.Measured = []string{
			"server: real batcher + verifier over embedded NATS JetStream (file storage), llama.cpp forward passes of " + what + " on this CPU",
			"centralized baseline: real centralized.Server (continuous batching) on the same engine and target",
			"acceptance: draft/target agreement of the real pair " + r.Pair + " along the target's greedy continuations",
		}
		r.Modelled = []string{
			"devices: Poisson sources of draft tokens at the profile's rate (no draft model runs); drafts are built from the target's own greedy continuation so the verifier accepts what the measured acceptance distribution says (verdicts checked: see mismatches)",
		}
		if kinds := e.Acceptance.KindNames(); len(kinds) > 1 {
			t := Table{Title: "Acceptance of " + r.Pair + " by prompt kind (drafting policy of this run)",
				Header: []string{"prompts", "mean draft", "accepted/round", "acceptance rate"}}
			for _, k := range append(kinds, "") {
				s := e.Acceptance.SummaryOf(k, o.Policy)
				name := k
				if k == "" {
					name = "all"
				}
				t.Rows = append(t.Rows, []string{name, f2(s.MeanLen), f2(s.MeanAccepted), f2(s.Rate)})
			}
			r.Tables = append(r.Tables, t)
		}
	}
	return r
}

func (o Options) plot(r *Report, f func(dir string) ([]string, error)) error {
	if o.PlotDir == "" {
		return nil
	}
	if err := os.MkdirAll(o.PlotDir, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	ps, err := f(o.PlotDir)
	r.Plots = append(r.Plots, ps...)
	return err
}

// CapacityResult is the outcome of the capacity experiment. The first three
// fields are for the first profile (the one --quick runs).
type CapacityResult struct {
	SLED        int     `json:"sled_capacity"`
	Centralized int     `json:"centralized_capacity"`
	Ratio       float64 `json:"ratio"`
	// Required is the tokens/s every device had to get.
	Required float64 `json:"required_tokens_per_sec"`
	// Bound is the search's upper bound: a capacity equal to it means "at least".
	Bound    int               `json:"bound"`
	Profiles []ProfileCapacity `json:"profiles"`
	// Curve, with Options.Rates, holds every rate's capacities, rate by rate.
	Curve      []ProfileCapacity `json:"curve,omitempty"`
	Trials     []*Measurement    `json:"trials"`
	Mismatches int               `json:"mismatches"`
}

// ProfileCapacity is SLED's capacity with devices of one profile.
type ProfileCapacity struct {
	Profile Profile `json:"profile"`
	// Rate is the tokens/s every device had to get.
	Rate        float64 `json:"required_tokens_per_sec"`
	SLED        int     `json:"sled_capacity"`
	Centralized int     `json:"centralized_capacity"`
	Ratio       float64 `json:"ratio"`
	// Static is the capacity of SLED with the static speculation length (no
	// draft budgets) in the same run, StaticRatio its ratio to centralized;
	// absent when not measured (Quick, NoStatic).
	Static      *int    `json:"sled_static_capacity,omitempty"`
	StaticRatio float64 `json:"static_ratio,omitempty"`
	// Edge is the edge-only baseline: every device alone at its draft rate, so
	// unbounded in count, and within the requirement only if its rate meets it.
	EdgeMeets bool `json:"edge_meets_required"`
}

// withinCapacity reports whether a trial met the requirement: the 5th percentile
// of per-device rates (the minimum below 20 devices) at or above required, and
// no failed rounds.
func withinCapacity(m *Measurement, required float64) bool {
	return m.P5PerDevice >= required && m.Failures == 0
}

func capTol(quick bool) func(int) int {
	if quick {
		return func(n int) int { return max(1, n/4) }
	}
	return func(n int) int { return max(1, n/16) }
}

func runCapacity(ctx context.Context, o Options) (*Report, error) {
	ps, err := o.profiles()
	if err != nil {
		return nil, err
	}
	e, err := o.env(ctx, o.Type)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	res := &CapacityResult{Required: o.Required, Bound: o.MaxDevices}
	bar := o.progress(6 + 6*len(ps))
	defer bar.Done()
	// system: "centralized", "sled" (with the goodput policy, o.Budget) or
	// "sled-static" (the paper's fixed length, Budget.Static).
	probe := func(system string, p Profile, rate float64) func(int) (bool, error) {
		return func(n int) (bool, error) {
			bar.Step(fmt.Sprintf("%s %s %.1f tok/s n=%d", system, p.Name, rate, n))
			var m *Measurement
			var err error
			t := o.trial(n, p)
			switch system {
			case "centralized":
				m, err = e.RunCentralized(ctx, t)
			case "sled-static":
				t.Budget.Static = true
				fallthrough
			default:
				m, err = e.RunSLED(ctx, t)
				if m != nil {
					m.System = system
					res.Mismatches += m.Mismatches
				}
			}
			if err != nil {
				return false, err
			}
			res.Trials = append(res.Trials, m)
			o.Logger.Info("capacity trial", "system", system, "profile", p.Name, "rate", rate, "devices", n, "p5", m.P5PerDevice, "wstgr", m.TokensPerSec)
			return withinCapacity(m, rate), nil
		}
	}
	rates := o.Rates
	if len(rates) == 0 {
		rates = []float64{o.Required}
	}
	static := !o.NoStatic && !o.Quick && !o.Budget.Static
	for ri, rate := range rates {
		// One search per system, taking turns trial by trial (Interleave):
		// on this shared machine a system searched after another would be
		// handed the machine's drift.
		probes := []func(int) (bool, error){probe("centralized", Profile{Name: "thin-client"}, rate)}
		for _, p := range ps {
			probes = append(probes, probe("sled", p, rate))
			if static {
				probes = append(probes, probe("sled-static", p, rate))
			}
		}
		searches := make([]*Search, len(probes))
		for i := range searches {
			searches[i] = NewSearch(1, o.MaxDevices, capTol(o.Quick))
		}
		if err := Interleave(searches, func(i, n int) (bool, error) { return probes[i](n) }); err != nil {
			return nil, err
		}
		central, next := searches[0].Result(), 1
		for _, p := range ps {
			n := searches[next].Result()
			next++
			pc := ProfileCapacity{Profile: p, Rate: rate, SLED: n, Centralized: central, EdgeMeets: p.TokensPerSec >= rate}
			if central > 0 {
				pc.Ratio = float64(n) / float64(central)
			}
			if static {
				ns := searches[next].Result()
				next++
				pc.Static = &ns
				if central > 0 {
					pc.StaticRatio = float64(ns) / float64(central)
				}
			}
			if ri == 0 {
				res.Profiles = append(res.Profiles, pc)
			}
			if len(o.Rates) > 0 {
				res.Curve = append(res.Curve, pc)
			}
		}
	}
	res.Required = rates[0]
	res.SLED, res.Centralized, res.Ratio = res.Profiles[0].SLED, res.Profiles[0].Centralized, res.Profiles[0].Ratio
	r := o.report("capacity", e)
	r.Result = res
	r.Modelled = append(r.Modelled, fmt.Sprintf("capacity criterion: the 5th-percentile device gets >= %.1f tokens/s over a %s window and no round fails; search: doubling then bisection to within %s", o.Required, o.Duration, map[bool]string{true: "25%", false: "6%"}[o.Quick]))
	capRows := func(pcs []ProfileCapacity) [][]string {
		var rows [][]string
		for _, pc := range pcs {
			st, sr := "-", "-"
			if pc.Static != nil {
				st, sr = capStr(*pc.Static, o.MaxDevices), f2(pc.StaticRatio)
			}
			rows = append(rows, []string{f1(pc.Rate), pc.Profile.Name, f1(pc.Profile.TokensPerSec), capStr(pc.SLED, o.MaxDevices), st, capStr(pc.Centralized, o.MaxDevices), f2(pc.Ratio), sr, fmt.Sprint(pc.EdgeMeets)})
		}
		return rows
	}
	header := []string{"required tok/s", "device profile", "draft tok/s", "SLED (budgets)", "SLED (static length)", "centralized", "SLED / centralized", "static / centralized", "edge-only meets rate"}
	t := Table{Title: fmt.Sprintf("System capacity (devices each getting >= %.1f tokens/s), target %s", res.Required, r.Target), Header: header, Rows: capRows(res.Profiles)}
	r.Tables = append(r.Tables, t)
	if len(res.Curve) > 0 {
		r.Tables = append(r.Tables, Table{Title: "Capacity curve: the largest fleet served at each required rate, target " + r.Target, Header: header, Rows: capRows(res.Curve)})
	}
	r.Tables = append(r.Tables, trialsTable(res.Trials))
	err = o.plot(r, func(dir string) ([]string, error) {
		var cats []string
		var s, c Series
		s.Name, c.Name = "SLED", "centralized"
		for _, pc := range res.Profiles {
			cats = append(cats, pc.Profile.Name)
			s.Y = append(s.Y, float64(pc.SLED))
			c.Y = append(c.Y, float64(pc.Centralized))
		}
		p, err := barPlot(dir, "capacity", "System capacity, "+r.Target, "devices", cats, s, c)
		return []string{p}, err
	})
	return r, err
}

func capStr(n, bound int) string {
	if n >= bound {
		return fmt.Sprintf(">= %d", n)
	}
	return itoa(n)
}

func trialsTable(ms []*Measurement) Table {
	t := Table{Title: "Trials", Header: []string{"system", "devices", "WSTGR tok/s", "min/device", "p5/device", "mean/device", "mean batch", "round p50 ms", "mismatches", "failures"}}
	for _, m := range ms {
		t.Rows = append(t.Rows, []string{m.System, itoa(m.Devices), f1(m.TokensPerSec), f1(m.MinPerDevice), f1(m.P5PerDevice), f1(m.MeanPerDevice), f1(m.MeanBatch), f1(m.RoundMs.P50), itoa(m.Mismatches), itoa(m.Failures)})
	}
	return t
}

func (o Options) progress(total int) *Progress {
	if !o.Progress {
		return nil
	}
	return NewProgress(os.Stderr, total)
}
