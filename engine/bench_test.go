package engine

import (
	"context"
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
func smollm(b *testing.B) string {
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

func benchModel(b *testing.B, which string) *Model {
	if which == "stories260k" {
		return load(b, testmodels.Target)
	}
	p := smollm(b)
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

// benchDecode runs rounds of `seqs` sequences x `per` tokens, each round one Decode,
// on a context pre-filled with a 32-token prefix per sequence.
func benchDecode(b *testing.B, which string, seqs, per int) {
	m := benchModel(b, which)
	c, err := m.NewContext(ContextOptions{Slots: seqs, SlotContext: 512})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	const prefix = 32
	reset := func() {
		var es []Entry
		for s := range seqs {
			c.Clear(s)
			for p := range prefix {
				es = append(es, Entry{Seq: s, Pos: p, Token: Token(3 + (s*7+p)%200)})
			}
		}
		if _, err := c.Decode(ctx, es); err != nil {
			b.Fatal(err)
		}
	}
	reset()
	pos := prefix
	b.ResetTimer()
	for range b.N {
		if pos+per > 500 {
			b.StopTimer()
			reset()
			pos = prefix
			b.StartTimer()
		}
		es := make([]Entry, 0, seqs*per)
		for s := range seqs {
			for i := range per {
				es = append(es, Entry{Seq: s, Pos: pos + i, Token: Token(5 + (s+i)%300), Logits: true})
			}
		}
		if _, err := c.Decode(ctx, es); err != nil {
			b.Fatal(err)
		}
		pos += per
	}
	b.ReportMetric(float64(b.N*seqs*per)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/pass")
}

func BenchmarkDecodeStories1x1(b *testing.B) { benchDecode(b, "stories260k", 1, 1) }
func BenchmarkDecodeStories8x5(b *testing.B) { benchDecode(b, "stories260k", 8, 5) }
func BenchmarkDecodeSmolLM1x1(b *testing.B)  { benchDecode(b, "smollm-135m", 1, 1) }
func BenchmarkDecodeSmolLM8x5(b *testing.B)  { benchDecode(b, "smollm-135m", 8, 5) }
