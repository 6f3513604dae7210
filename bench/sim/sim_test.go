package sim

import (
	"math"
	"testing"
	"time"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/goodput"
)

func TestLoopOrder(t *testing.T) {
	var l Loop
	l.At(2, 0, 1)
	l.At(1, 0, 2)
	l.At(2, 0, 3) // same time as dev 1, scheduled later: runs after it
	l.At(0.5, 0, 4)
	l.At(2, 0, 5)
	var got []int
	last := 0.0
	for {
		_, dev, ok := l.Next()
		if !ok {
			break
		}
		if l.Now < last {
			t.Fatalf("time went back: %v after %v", l.Now, last)
		}
		last = l.Now
		got = append(got, dev)
	}
	want := []int{4, 2, 1, 3, 5}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order %v, want %v", got, want)
		}
	}
}

type fixedRounds Round

func (f fixedRounds) Next() Round { return Round(f) }

func TestSLEDOneDevice(t *testing.T) {
	// One device, deterministic cost: each round is draft time (Erlang, mean
	// 4/20 s) + up + pass + down; the early close ("all active devices") makes the
	// batch close at once. tokens/round = 3.
	cfg := Config{
		Devices: 1, DraftRate: 20, Rounds: func(int) RoundSource { return fixedRounds{Len: 4, Accepted: 2} },
		Batch: batcher.Policy{Size: 8, MaxWait: 20 * time.Millisecond},
		Cost:  PassCost{FixedMs: 10, PerTokenMs: 1}, UpMs: 2, DownMs: 3, Duration: 2000, Seed: 1,
		Budget: goodput.Policy{Static: true}, // every round as drawn
	}
	r := SLED(cfg)
	round := 4.0/20 + (2+10+5+3)/1000.0
	if want := 3 / round; math.Abs(r.TokensPerSec-want)/want > 0.03 {
		t.Errorf("tokens/s %.2f, want %.2f", r.TokensPerSec, want)
	}
	if r.MeanBatch != 1 {
		t.Errorf("mean batch %v, want 1", r.MeanBatch)
	}
	if want := (2 + 10 + 5 + 3.0); math.Abs(r.RoundMs-want) > 0.01 {
		t.Errorf("round %.3f ms, want %.3f", r.RoundMs, want)
	}
}

func TestSLEDSaturates(t *testing.T) {
	// Instant drafting: the server is the bottleneck and batches fill to Size.
	cfg := Config{
		Devices: 64, DraftRate: 1e6, Rounds: func(int) RoundSource { return fixedRounds{Len: 3, Accepted: 1} },
		Batch: batcher.Policy{Size: 16, MaxWait: time.Millisecond, NoEarlyClose: true}, Slots: 16,
		Cost: PassCost{FixedMs: 20, PerTokenMs: 0.5}, Duration: 100,
		Budget: goodput.Policy{Static: true},
	}
	r := SLED(cfg)
	// Full batches of 16 x 4 tokens: 52 ms per pass, 32 output tokens.
	if want := 32 / 0.052; math.Abs(r.TokensPerSec-want)/want > 0.02 {
		t.Errorf("tokens/s %.1f, want %.1f (mean batch %.1f)", r.TokensPerSec, want, r.MeanBatch)
	}
}

// The simulator runs the verifier's goodput policy: on a compute-bound server
// with drafts that are rarely accepted, budgets fall to 0 and SLED matches
// plain decoding (centralized) instead of losing to it as the static length
// does; on a server whose passes cost little more for many tokens, with good
// drafts, budgets stay long and SLED gets well ahead of centralized.
func TestSLEDBudgets(t *testing.T) {
	base := Config{
		Devices: 16, DraftRate: 1e4, Batch: batcher.Policy{Size: 32, MaxWait: 5 * time.Millisecond},
		UpMs: 1, DownMs: 1, Duration: 30, Seed: 3,
	}
	run := func(cost PassCost, round Round, static bool) float64 {
		c := base
		c.Cost = cost
		c.Rounds = func(int) RoundSource { return fixedRounds(round) }
		c.Budget.Static = static
		return SLED(c).TokensPerSec
	}
	linear := PassCost{FixedMs: 1, PerTokenMs: 4}
	central := Centralized(Config{Devices: 16, Cost: linear, Duration: 30}).TokensPerSec
	bad := Round{Len: 6, Accepted: 1}
	st, bu := run(linear, bad, true), run(linear, bad, false)
	t.Logf("compute-bound, poor drafts: static %.0f, budgets %.0f, centralized %.0f tokens/s", st, bu, central)
	if bu < 1.5*st || bu < 0.85*central {
		t.Errorf("budgets %.0f tokens/s: want well above static %.0f and near centralized %.0f", bu, st, central)
	}
	cheap := PassCost{FixedMs: 40, PerTokenMs: 0.05}
	good := Round{Len: 8, Accepted: 7}
	st, bu = run(cheap, good, true), run(cheap, good, false)
	central = Centralized(Config{Devices: 16, Cost: cheap, Duration: 30}).TokensPerSec
	t.Logf("memory-bound, good drafts: static %.0f, budgets %.0f, centralized %.0f tokens/s", st, bu, central)
	if bu < 0.95*st || bu < 3*central {
		t.Errorf("budgets %.0f tokens/s: want about static %.0f and far above centralized %.0f", bu, st, central)
	}
}

func TestCentralized(t *testing.T) {
	r := Centralized(Config{Devices: 10, Cost: PassCost{FixedMs: 5, PerTokenMs: 0.5}, Duration: 10})
	// 10 ms per step: 100 tokens/s per device.
	if math.Abs(r.MeanPerDevice-100) > 0.5 || math.Abs(r.TokensPerSec-1000) > 5 {
		t.Errorf("per device %.1f, system %.1f", r.MeanPerDevice, r.TokensPerSec)
	}
}

func TestFit(t *testing.T) {
	truth := PassCost{FixedMs: 7, PerTokenMs: 1.9, PerSeqMs: 0.3}
	var s []Sample
	for _, n := range []int{1, 2, 4, 8} {
		for _, k := range []int{1, 3, 5} {
			s = append(s, Sample{Seqs: n, Tokens: n * k, Ms: truth.Ms(n*k, n, 0)})
		}
	}
	got, e, _ := Fit(s)
	if math.Abs(got.FixedMs-7) > 1e-6 || math.Abs(got.PerTokenMs-1.9) > 1e-6 || math.Abs(got.PerSeqMs-0.3) > 1e-6 || e > 1e-9 {
		t.Errorf("fit %+v err %v, want %+v", got, e, truth)
	}
}

func TestSLEDCoalesces(t *testing.T) {
	// Instant drafting, batches of 4 closed at once, a slow pass: batches queue
	// while the worker is busy, and it takes them all (up to 16 drafts) into its
	// next pass, as verifier.Worker does.
	cfg := Config{
		Devices: 32, DraftRate: 1e6, Rounds: func(int) RoundSource { return fixedRounds{Len: 1, Accepted: 1} },
		Batch: batcher.Policy{Size: 4, MaxWait: time.Millisecond, NoEarlyClose: true}, Slots: 16,
		Cost: PassCost{FixedMs: 50}, Duration: 50,
	}
	r := SLED(cfg)
	if r.MeanClosed != 4 {
		t.Errorf("closed batches of %.2f drafts, want 4", r.MeanClosed)
	}
	if r.MeanBatch < 15.9 || r.MeanBatch > 16 {
		t.Errorf("%.2f drafts per pass, want 16 (the slots)", r.MeanBatch)
	}
	// 16 drafts x 2 tokens per 50 ms pass.
	if want := 32 / 0.05; math.Abs(r.TokensPerSec-want)/want > 0.02 {
		t.Errorf("tokens/s %.1f, want %.1f", r.TokensPerSec, want)
	}
}

func TestSLEDActiveWindow(t *testing.T) {
	// Two devices, one of which drafts only every 10 s: outside the 1 s active
	// window, so the fast one's drafts close batches alone at once ("all")
	// instead of waiting out the 100 ms deadline.
	rounds := func(int) RoundSource { return fixedRounds{Len: 1, Accepted: 0} }
	cfg := Config{
		Devices: 1, DraftRate: 1e6, Rounds: rounds,
		Batch: batcher.Policy{Size: 8, MaxWait: 100 * time.Millisecond},
		Cost:  PassCost{FixedMs: 1}, Duration: 20,
	}
	one := SLED(cfg)
	cfg.Devices = 2
	two := SLED(cfg)
	if math.Abs(one.RoundMs-1) > 0.01 {
		t.Errorf("one device: round %.2f ms, want 1 (closed at once)", one.RoundMs)
	}
	if two.RoundMs < 1 || two.RoundMs > 2.5 {
		t.Errorf("two busy devices: round %.2f ms, want about 1-2 (both active, closed when both are in)", two.RoundMs)
	}
}

func TestCentralizedPrefill(t *testing.T) {
	// Requests of 10 tokens after a 20-token prompt, cost 1 ms + 1 ms per token:
	// one client repeats prefill (21 ms, first token), 9 decode steps (2 ms each),
	// then one idle step while its next request arrives... which, with a single
	// client, costs nothing: 39 ms per 10 tokens.
	r := Centralized(Config{Devices: 1, Cost: PassCost{FixedMs: 1, PerTokenMs: 1}, PromptLen: 20, ContLen: 10, Warmup: 1, Duration: 100})
	if want := 10 / 0.039; math.Abs(r.TokensPerSec-want)/want > 0.02 {
		t.Errorf("tokens/s %.1f, want %.1f", r.TokensPerSec, want)
	}
}

func TestFitAttention(t *testing.T) {
	truth := PassCost{FixedMs: 7, PerTokenMs: 1.9, PerSeqMs: 0.3, AttnMs: 0.05}
	var s []Sample
	for _, hist := range []int{100, 2000} {
		for _, n := range []int{1, 2, 4, 8} {
			for _, k := range []int{1, 3, 5} {
				c := hist + n*k
				s = append(s, Sample{Seqs: n, Tokens: n * k, Cells: c, Ms: truth.Ms(n*k, n, c)})
			}
		}
	}
	got, e, _ := Fit(s)
	if math.Abs(got.AttnMs-0.05) > 1e-6 || math.Abs(got.FixedMs-7) > 1e-6 || e > 1e-9 {
		t.Errorf("fit %+v err %v, want %+v", got, e, truth)
	}
}

func TestFitDropsOutliers(t *testing.T) {
	truth := PassCost{FixedMs: 7, PerTokenMs: 1.9, PerSeqMs: 0.3, AttnMs: 0.05}
	var s []Sample
	for _, hist := range []int{100, 2000} {
		for _, n := range []int{1, 2, 4, 8} {
			for _, k := range []int{1, 3, 5} {
				c := hist + n*k
				s = append(s, Sample{Seqs: n, Tokens: n * k, Cells: c, Ms: truth.Ms(n*k, n, c)})
			}
		}
	}
	s[3].Ms, s[17].Ms = 9000, 5000 // stalls
	got, e, dropped := Fit(s)
	if dropped != 2 || math.Abs(got.PerTokenMs-1.9) > 1e-6 || e > 1e-9 {
		t.Errorf("fit %+v err %v dropped %d, want %+v, 2 dropped", got, e, dropped, truth)
	}
}

func TestPassCostKnots(t *testing.T) {
	c := PassCost{PerTokenMs: 2, PerSeqMs: 0.5, AttnMs: 1, Knots: []Knot{{1, 9}, {2, 13}, {8, 25}}}
	for _, tc := range []struct {
		tokens, seqs, cells int
		want                float64
	}{
		{1, 1, 0, 9.5},
		{2, 2, 0, 14},
		{5, 1, 0, 19.5},            // halfway between 2 and 8 tokens
		{10, 1, 0, 29.5},           // beyond the last knot: its slope, PerTokenMs
		{8, 1, 1000, 25 + 0.5 + 8}, // attention: 1 ms per token per 1000 cells
	} {
		if got := c.Ms(tc.tokens, tc.seqs, tc.cells); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("Ms(%d, %d, %d) = %v, want %v", tc.tokens, tc.seqs, tc.cells, got, tc.want)
		}
	}
}

func TestCentralizedChunkedPrefill(t *testing.T) {
	// Two clients with 300-token prompts and a 512-token step budget: the first
	// step prefills all of the first prompt and 212 tokens of the second, the
	// second step the rest of it alongside the first client's decoding.
	// A 1 ms settle bound: the window opens at 2 ms rather than when both
	// clients have a token.
	cfg := Config{Devices: 2, Cost: PassCost{PerTokenMs: 1}, PromptLen: 300, ContLen: 1000, Warmup: 0.001, Settle: 0.001, Duration: 0.9}
	r := Centralized(cfg)
	// Steps: 512 ms (client 0's first token), 89 ms (1 + 88: both get one), then
	// 2 ms each: in [2 ms, 902 ms), client 0 gets 1 + 1 + (901-603)/2 + 1 tokens.
	if want := 2 + 150; int(r.PerDevice[0]*0.9+0.5) != want {
		t.Errorf("client 0 got %.0f tokens, want %d", r.PerDevice[0]*0.9, want)
	}
	// Settled, the window opens with client 1's first token, at 601 ms: each
	// client then gets a token every 2 ms.
	cfg.Settle = 0
	r = Centralized(cfg)
	if got := r.PerDevice[0] * 0.9; math.Abs(got-450) > 1 {
		t.Errorf("settled window: client 0 got %.0f tokens, want 449-450", got)
	}
}

// TestSLEDWorkersScale: a server-bound fleet (devices draft instantly, every
// worker's passes full at its Slots) gets about W times the tokens/s from W
// workers, each pass over its own devices' drafts, and exactly one worker's
// figure with Workers 1. Every round is the device's own: with more devices
// than Slots, rounds a worker ran itself would hold its slots, and the model
// has no session eviction to share them out (the real verifier evicts the
// least recently used session).
func TestSLEDWorkersScale(t *testing.T) {
	cfg := Config{
		Devices: 48, DraftRate: 1e6, Rounds: func(int) RoundSource { return fixedRounds{Len: 3, Accepted: 1} },
		Batch: batcher.Policy{Size: 8, MaxWait: time.Millisecond, NoEarlyClose: true}, Slots: 8,
		Cost: PassCost{FixedMs: 20, PerTokenMs: 1}, Duration: 200, Seed: 1, ServerRounds: -1,
	}
	one := SLED(cfg)
	cfg.Workers = 1
	if again := SLED(cfg); again.TokensPerSec != one.TokensPerSec {
		t.Fatalf("Workers 1: %.1f tokens/s, default: %.1f", again.TokensPerSec, one.TokensPerSec)
	}
	for _, w := range []int{2, 3} {
		cfg.Workers = w
		r := SLED(cfg)
		if ratio := r.TokensPerSec / one.TokensPerSec; ratio < 0.85*float64(w) || ratio > 1.05*float64(w) {
			t.Errorf("%d workers: %.1f tokens/s, %.2fx one worker's %.1f, want about %dx", w, r.TokensPerSec, ratio, one.TokensPerSec, w)
		}
	}
}

// budgetZeroFleet is 32 devices at budget 0 (no draft is ever accepted, no
// probes) whose round trip outside the server (8 ms) is shorter than the
// pass's fixed part (30 ms).
func budgetZeroFleet() Config {
	return Config{
		Devices: 32, DraftRate: 1e6, Rounds: func(int) RoundSource { return fixedRounds{Len: 4, Accepted: 0} },
		Batch:  batcher.Policy{Size: 64, MaxWait: time.Millisecond},
		Budget: goodput.Policy{ProbeEvery: -1},
		Cost:   PassCost{FixedMs: 30, PerTokenMs: 1},
		UpMs:   3, HopMs: 1, DownMs: 3, Duration: 30, Seed: 5,
	}
}

// TestSLEDGathers: a fleet at budget 0 whose round trip outside the server
// (8 ms) is shorter than the pass's fixed part (30 ms), every round the
// device's own. Running every queued batch as soon as the worker frees
// splits the fleet into waves, each paying the fixed part; the worker's
// gather rule (goodput.Gather, as verifier.Worker) waits for the wave it just
// answered, so passes hold the fleet and it gets more tokens per second.
func TestSLEDGathers(t *testing.T) {
	cfg := budgetZeroFleet()
	cfg.ServerRounds = -1
	off := cfg
	off.GatherMax = -1
	split, gathered := SLED(off), SLED(cfg)
	t.Logf("without gathering: %.0f tokens/s, %.1f drafts per pass; gathering: %.0f tokens/s, %.1f per pass",
		split.TokensPerSec, split.MeanBatch, gathered.TokensPerSec, gathered.MeanBatch)
	if gathered.MeanBatch < 0.9*32 || gathered.TokensPerSec < 1.1*split.TokensPerSec {
		t.Errorf("gathering: %.1f drafts per pass, %.0f tokens/s; want nearly the whole fleet per pass and above %.0f",
			gathered.MeanBatch, gathered.TokensPerSec, 1.1*split.TokensPerSec)
	}
}

// TestSLEDServerRounds: the fleet of TestSLEDGathers, held at budget 0,
// without gathering. When the worker runs the budget-0 rounds itself (as
// verifier.Worker does with server rounds) no round waits for a trip, so
// the fleet gets more tokens per second than with every round the device's
// own, and its round takes about the pass alone.
func TestSLEDServerRounds(t *testing.T) {
	cfg := budgetZeroFleet()
	cfg.GatherMax = -1
	own := cfg
	own.ServerRounds = -1
	trips, served := SLED(own), SLED(cfg)
	central := Centralized(cfg)
	t.Logf("own rounds: %.0f tokens/s, round %.1f ms; server rounds: %.0f tokens/s, round %.1f ms, %.1f per pass; centralized %.0f",
		trips.TokensPerSec, trips.RoundMs, served.TokensPerSec, served.RoundMs, served.MeanBatch, central.TokensPerSec)
	if served.TokensPerSec < 1.2*trips.TokensPerSec {
		t.Errorf("server rounds %.0f tokens/s, own rounds %.0f: want at least 1.2x", served.TokensPerSec, trips.TokensPerSec)
	}
	if served.TokensPerSec < 0.85*central.TokensPerSec {
		t.Errorf("server rounds %.0f tokens/s, centralized %.0f: want within 15%%", served.TokensPerSec, central.TokensPerSec)
	}
}

// TestSLEDPublishers: on a server whose passes leave host cores free, the
// worker publishes a pass's results beside the next pass (Publishers), so a
// per-result host cost larger than the pass no longer adds to every pass;
// and the drafts' decoding at the worker's one consumer, beside the passes
// too, bounds the rounds a worker takes per second.
func TestSLEDPublishers(t *testing.T) {
	cfg := budgetZeroFleet()
	cfg.Devices, cfg.Slots = 512, 512
	cfg.Batch.Size = 512
	cfg.Cost = PassCost{FixedMs: 10, PerTokenMs: 0.05}
	cfg.ResultMs = 0.1 // 51 ms a pass of 512: more than the 36 ms pass
	serial := SLED(cfg)
	off := cfg
	off.Publishers, off.DecodeMs = 8, 0.06
	beside := SLED(off)
	t.Logf("results in the pass loop: %.0f tokens/s, %d passes; beside the passes: %.0f tokens/s, %d passes", serial.TokensPerSec, serial.Passes, beside.TokensPerSec, beside.Passes)
	if beside.TokensPerSec < 1.5*serial.TokensPerSec {
		t.Errorf("publishing beside the passes: %.0f tokens/s, in the loop %.0f: want at least 1.5x", beside.TokensPerSec, serial.TokensPerSec)
	}
	// Every round the device's own: each draft is decoded at the consumer,
	// 0.2 ms each, so at most 5 000 rounds a second reach the worker.
	own := off
	own.ServerRounds, own.DecodeMs, own.ResultMs = -1, 0.2, 0.25
	r := SLED(own)
	t.Logf("own rounds, decoding 0.2 ms a draft: %.0f tokens/s", r.TokensPerSec)
	if r.TokensPerSec > 1.02*5000 || r.TokensPerSec < 0.5*5000 {
		t.Errorf("own rounds with a 0.2 ms decode: %.0f tokens/s, want at most 5000 (the consumer's bound) and near it", r.TokensPerSec)
	}
}
