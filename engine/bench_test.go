package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sled-project/sled/engine/gguf"
	"github.com/sled-project/sled/internal/testmodels"
)

// The decode benchmarks compare one sequence decoded a token at a time (what a
// target does without speculation) with one forward pass over 8 sequences x 5
// tokens (what a SLED verifier does for a batch of 8 devices' 4-token drafts plus
// their committed token). Both report tokens/s; the ratio is the point.
//
//	go test -run '^$' -bench 'Decode' -benchtime 20x ./engine/

var (
	synthOnce sync.Once
	synthPath string
	synthErr  error
	benchDir  string // removed by TestMain
)

// smollm writes a smollm-135m-shaped model with random F16 weights and the test
// vocabulary, once per process.
func smollm(b testing.TB) string {
	synthOnce.Do(func() {
		shape, err := gguf.LookupShape("smollm-135m")
		if err != nil {
			synthErr = err
			return
		}
		dir, err := os.MkdirTemp("", "sled-bench-")
		benchDir = dir
		if err != nil {
			synthErr = err
			return
		}
		tok, err := gguf.Open(testmodels.Path(b, testmodels.Target))
		if err != nil {
			synthErr = err
			return
		}
		defer tok.Close()
		f16, _ := gguf.ParseType("F16")
		synthPath = filepath.Join(dir, "smollm-135m.gguf")
		synthErr = gguf.Synth(synthPath, shape, gguf.SynthOptions{Type: f16, Tokenizer: tok, ContextLength: 2048})
	})
	if synthErr != nil {
		b.Fatal(synthErr)
	}
	return synthPath
}

func benchModel(b testing.TB, which string) *Model {
	if which == "stories260k" {
		return load(b, testmodels.Target)
	}
	return loadShared(b, smollm(b))
}

// passBench describes a decode benchmark: rounds of Seqs sequences x Per tokens,
// each round one Decode, on a context pre-filled with History tokens per sequence.
type passBench struct {
	Seqs, Per, History int
	Ragged             bool // slot s gets 1+s%Per tokens per pass instead of Per
	Opts               ContextOptions
}

// benchDecode runs rounds of `seqs` sequences x `per` tokens on a 32-token history.
func benchDecode(b *testing.B, which string, seqs, per int) {
	benchDecodeOpts(b, which, seqs, per, false, false)
}

// benchDecodeOpts is benchDecode with a choice of KV layout and raggedness.
func benchDecodeOpts(b *testing.B, which string, seqs, per int, separate, ragged bool) {
	runPassBench(b, benchModel(b, which), passBench{Seqs: seqs, Per: per, History: 32, Ragged: ragged, Opts: ContextOptions{SeparateKV: separate}})
}

func runPassBench(b *testing.B, m *Model, pb passBench) {
	opts := pb.Opts
	opts.Slots = pb.Seqs
	if opts.SlotContext == 0 {
		opts.SlotContext = max(512, pb.History+128)
	}
	c, err := m.NewContext(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	reset := func() {
		for s := range pb.Seqs {
			c.Clear(s)
		}
		// Prefill in passes of at most BatchSize tokens.
		var es []Entry
		flush := func() {
			if _, err := c.Decode(ctx, es); err != nil {
				b.Fatal(err)
			}
			es = es[:0]
		}
		for s := range pb.Seqs {
			for p := range pb.History {
				es = append(es, Entry{Seq: s, Pos: p, Token: Token(3 + (s*7+p)%200)})
				if len(es) == c.Options().BatchSize {
					flush()
				}
			}
		}
		if len(es) > 0 {
			flush()
		}
	}
	reset()
	limit := opts.SlotContext - pb.Per
	tokens := 0
	b.ResetTimer()
	for range b.N {
		if c.Len(0)+pb.Per > limit || c.Len(0) > pb.History+96 {
			b.StopTimer()
			reset()
			b.StartTimer()
		}
		es := make([]Entry, 0, pb.Seqs*pb.Per)
		for s := range pb.Seqs {
			n := pb.Per
			if pb.Ragged {
				n = 1 + s%pb.Per
			}
			for i := range n {
				es = append(es, Entry{Seq: s, Pos: c.Len(s) + i, Token: Token(5 + (s+i)%300), Logits: true})
			}
		}
		if _, err := c.Decode(ctx, es); err != nil {
			b.Fatal(err)
		}
		tokens += len(es)
	}
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/pass")
}

func BenchmarkDecodeStories1x1(b *testing.B) { benchDecode(b, "stories260k", 1, 1) }
func BenchmarkDecodeStories8x5(b *testing.B) { benchDecode(b, "stories260k", 8, 5) }
func BenchmarkDecodeSmolLM1x1(b *testing.B)  { benchDecode(b, "smollm-135m", 1, 1) }
func BenchmarkDecodeSmolLM8x5(b *testing.B)  { benchDecode(b, "smollm-135m", 8, 5) }

// KV layout: the unified cache (default) against a stream per slot, on equal and
// ragged batches.
func BenchmarkDecodeStories8x5Separate(b *testing.B) {
	benchDecodeOpts(b, "stories260k", 8, 5, true, false)
}
func BenchmarkDecodeStories8x5Ragged(b *testing.B) {
	benchDecodeOpts(b, "stories260k", 8, 5, false, true)
}
func BenchmarkDecodeStories8x5RaggedSeparate(b *testing.B) {
	benchDecodeOpts(b, "stories260k", 8, 5, true, true)
}
func BenchmarkDecodeSmolLM8x5Separate(b *testing.B) {
	benchDecodeOpts(b, "smollm-135m", 8, 5, true, false)
}
func BenchmarkDecodeSmolLM8x5Ragged(b *testing.B) {
	benchDecodeOpts(b, "smollm-135m", 8, 5, false, true)
}
func BenchmarkDecodeSmolLM8x5RaggedSeparate(b *testing.B) {
	benchDecodeOpts(b, "smollm-135m", 8, 5, true, true)
}

// BenchmarkDecodeThreads compares one and two llama.cpp threads on the small target
// (one sequence, 5 tokens a pass). Run it with another process busy to see why
// small models default to one thread (Model.DefaultThreads):
//
//	go test -run '^$' -bench DecodeThreads -benchtime 200x ./engine/
func BenchmarkDecodeThreads(b *testing.B) {
	m := load(b, testmodels.Target)
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			c, err := m.NewContext(ContextOptions{SlotContext: 512, Threads: threads})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			for range b.N {
				if c.Len(0)+5 > 500 {
					c.Clear(0)
				}
				es := make([]Entry, 5)
				for i := range es {
					es[i] = Entry{Seq: 0, Pos: c.Len(0) + i, Token: Token(5 + i), Logits: true}
				}
				if _, err := c.Decode(ctx, es); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/pass")
		})
	}
}

// BenchmarkDecodeThreadpool is a one-token pass (what a centralized server does
// for one client, and a device's draft step) with the context's persistent ggml
// threadpool against ggml creating and joining its threads for every pass, on
// the smollm-135m shape and the real Qwen 1.5B (2 threads, 32-token history).
//
//	go test -run '^$' -bench DecodeThreadpool -benchtime 200x -count 3 ./engine/
func BenchmarkDecodeThreadpool(b *testing.B) {
	for _, name := range []string{"smollm-135m", "qwen-1.5b"} {
		for _, perPass := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/pool=%v", name, !perPass), func(b *testing.B) {
				var m *Model
				if name == "qwen-1.5b" {
					m = loadShared(b, testmodels.Real(b, testmodels.QwenTarget))
				} else {
					m = benchModel(b, name)
				}
				opts := ContextOptions{Threads: 2, SeparateKV: true, perPassThreads: perPass}
				runPassBench(b, m, passBench{Seqs: 1, Per: 1, History: 32, Opts: opts})
			})
		}
	}
}

// loadShared loads the model at p once per process.
func loadShared(b testing.TB, p string) *Model {
	if m, ok := loadOnce.Load(p); ok {
		return m.(*Model)
	}
	m, err := LoadModel(p, ModelOptions{})
	if err != nil {
		b.Fatal(err)
	}
	loadOnce.Store(p, m)
	return m
}

// BenchmarkPassHistory measures what a verifier pass costs as the devices'
// histories grow: 16 sequences x 5 tokens (equal and ragged) with 32 and 512
// tokens of history each, on the smollm-135m shape, for the KV layouts and
// attention kernels the engine can use. The goal is a 512-token pass within 1.2x
// of a 32-token one.
//
//	go test -run '^$' -bench PassHistory -benchtime 20x -count 3 ./engine/
func BenchmarkPassHistory(b *testing.B) {
	m := benchModel(b, "smollm-135m")
	layouts := []struct {
		name string
		opts ContextOptions
	}{
		{"unified-plain", ContextOptions{Attention: AttentionPlain}},
		{"unified-flash", ContextOptions{}},
		{"separate-plain", ContextOptions{SeparateKV: true, Attention: AttentionPlain}},
		{"separate-flash", ContextOptions{SeparateKV: true}},
	}
	for _, l := range layouts {
		for _, ragged := range []bool{false, true} {
			for _, hist := range []int{32, 512} {
				name := fmt.Sprintf("%s/ragged=%v/history=%d", l.name, ragged, hist)
				b.Run(name, func(b *testing.B) {
					runPassBench(b, m, passBench{Seqs: 16, Per: 5, History: hist, Ragged: ragged, Opts: l.opts})
				})
			}
		}
	}
}

// BenchmarkPassManySessions is a verifier's pass at budget 0 over a large
// fleet: 40 sequences x 1 token with 32 and 64 tokens of history each, on
// the smollm-135m shape, unified KV against a stream per slot. In the unified
// cache every token attends over every sequence's cells, so the pass grows
// with the fleet's total history; with a stream per slot it grows with each
// sequence's own.
//
//	go test -run '^$' -bench PassManySessions -benchtime 20x -count 2 ./engine/
func BenchmarkPassManySessions(b *testing.B) {
	m := benchModel(b, "smollm-135m")
	for _, l := range []struct {
		name string
		opts ContextOptions
	}{
		{"unified-flash", ContextOptions{Threads: 1}},
		{"separate-flash", ContextOptions{SeparateKV: true, Threads: 1}},
	} {
		for _, hist := range []int{32, 64} {
			b.Run(fmt.Sprintf("%s/history=%d", l.name, hist), func(b *testing.B) {
				runPassBench(b, m, passBench{Seqs: 40, Per: 1, History: hist, Opts: l.opts})
			})
		}
	}
}

// BenchmarkPassHistoryQwen is BenchmarkPassHistory on the real 1.5B target (16
// sequences x 5 tokens; the 512-token prefill takes minutes on 2 cores).
//
//	go test -run '^$' -bench PassHistoryQwen -benchtime 5x -timeout 60m ./engine/
func BenchmarkPassHistoryQwen(b *testing.B) {
	p := testmodels.Real(b, testmodels.QwenTarget)
	m, err := LoadModel(p, ModelOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for _, l := range []struct {
		name string
		opts ContextOptions
	}{
		{"unified-plain", ContextOptions{Attention: AttentionPlain}},
		{"unified-flash", ContextOptions{}},
		{"separate-plain", ContextOptions{SeparateKV: true, Attention: AttentionPlain}},
		{"separate-flash", ContextOptions{SeparateKV: true}},
	} {
		for _, hist := range []int{32, 512} {
			b.Run(fmt.Sprintf("%s/history=%d", l.name, hist), func(b *testing.B) {
				runPassBench(b, m, passBench{Seqs: 16, Per: 5, History: hist, Opts: l.opts})
			})
		}
	}
}

// BenchmarkDecodeQwen is the engine on the real 1.5B target (Q4_K_M): one
// sequence a token at a time, 16 sequences a token each (a centralized server's
// step), and 16 x 5 (a verifier's pass), each on a 32-token history.
//
//	go test -run '^$' -bench DecodeQwen -benchtime 10x ./engine/
func BenchmarkDecodeQwen(b *testing.B) {
	p := testmodels.Real(b, testmodels.QwenTarget)
	m, err := LoadModel(p, ModelOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for _, s := range [][2]int{{1, 1}, {16, 1}, {16, 5}} {
		b.Run(fmt.Sprintf("%dx%d", s[0], s[1]), func(b *testing.B) {
			runPassBench(b, m, passBench{Seqs: s[0], Per: s[1], History: 32})
		})
	}
}

// BenchmarkPassCostQwen is the real 1.5B target's pass-cost curve: one forward
// pass over 1 to 128 tokens (up to 16 sequences, each on a 32-token history),
// every token with logits as in a verification pass; the 1xN shapes are one
// device's draft of N-1 tokens and its committed token. Where ms/pass grows in
// proportion to the tokens, the pass is compute-bound and batching more tokens
// into it stops paying.
//
//	go test -run '^$' -bench PassCostQwen -benchtime 5x -count 2 ./engine/
func BenchmarkPassCostQwen(b *testing.B) {
	p := testmodels.Real(b, testmodels.QwenTarget)
	m, err := LoadModel(p, ModelOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for _, s := range [][2]int{{1, 1}, {1, 2}, {1, 4}, {1, 8}, {2, 1}, {4, 1}, {8, 1}, {16, 1}, {16, 2}, {16, 4}, {16, 8}} {
		b.Run(fmt.Sprintf("tokens=%d/%dx%d", s[0]*s[1], s[0], s[1]), func(b *testing.B) {
			runPassBench(b, m, passBench{Seqs: s[0], Per: s[1], History: 32})
		})
	}
}

// BenchmarkSwapQwen is Context.Swap of two slots holding 256 positions each,
// on the real 1.5B target (16 slots of 4096 positions, a KV stream each): what
// the centralized server pays to bring a cached prompt next to its busy slots.
//
//	go test -run '^$' -bench SwapQwen -benchtime 20x ./engine/
func BenchmarkSwapQwen(b *testing.B) {
	m := loadShared(b, testmodels.Real(b, testmodels.QwenTarget))
	c, err := m.NewContext(ContextOptions{Slots: 16, SlotContext: 4096, SeparateKV: true, Threads: 2})
	if err != nil {
		b.Fatal(err)
	}
	const n = 256
	var es []Entry
	for p := range n {
		es = append(es, Entry{Seq: 0, Pos: p, Token: Token(3 + p%200)}, Entry{Seq: 1, Pos: p, Token: Token(5 + p%200)})
	}
	if _, err := c.Decode(context.Background(), es); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if err := c.Swap(0, 1); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/swap")
	c.Close() // outside the timing: freeing 1.8 GB of KV cache takes longer than the swaps
}

// BenchmarkGapsQwen is one pass of one-token rows on the real 1.5B target with
// a KV stream per slot: 1 to 9 rows in consecutive slots (one micro-batch: the
// cost of each row), then 4 rows in slots 0, 2, 4, 6, padded into one
// micro-batch of 7 rows (PassTokens 4, the default) or left as 4 micro-batches
// (PassTokens near 0). Why the centralized server keeps its busy slots
// consecutive (prefixcache.Place).
//
//	go test -run '^$' -bench GapsQwen -benchtime 30x -count 2 ./engine/
func BenchmarkGapsQwen(b *testing.B) {
	m := loadShared(b, testmodels.Real(b, testmodels.QwenTarget))
	type gapCase struct {
		name  string
		slots []int
		pass  float64
	}
	var cases []gapCase
	for n := 1; n <= 9; n++ {
		slots := make([]int, n)
		for i := range slots {
			slots[i] = i
		}
		cases = append(cases, gapCase{fmt.Sprintf("rows=%d", n), slots, 0})
	}
	cases = append(cases, gapCase{"gaps-padded", []int{0, 2, 4, 6}, 0}, gapCase{"gaps-split", []int{0, 2, 4, 6}, 0.01})
	for _, k := range cases {
		b.Run(k.name, func(b *testing.B) {
			c, err := m.NewContext(ContextOptions{Slots: 16, SlotContext: 512, SeparateKV: true, Threads: 2, PassTokens: k.pass})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			var es []Entry
			for _, s := range k.slots {
				for p := range 32 {
					es = append(es, Entry{Seq: s, Pos: p, Token: Token(3 + (s*7+p)%200)})
				}
			}
			if _, err := c.Decode(ctx, es); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				es = es[:0]
				for _, s := range k.slots {
					if c.Len(s) >= 500 {
						b.StopTimer()
						c.Remove(s, 32)
						b.StartTimer()
					}
					es = append(es, Entry{Seq: s, Pos: c.Len(s), Token: Token(5 + s), Logits: true})
				}
				if _, err := c.Decode(ctx, es); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/pass")
		})
	}
}
