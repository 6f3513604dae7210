package centralized

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/engine/gguf"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/textgen"
)

// BenchmarkChurn is the centralized server under churn: 16 clients, each
// generating 64 tokens per request, one request after another, on the
// smollm-135m shape (F16, random weights). It compares a KV stream per slot
// (the default) with one unified cache, where every token's attention scans
// every cell in use, and reports ms per step (forward pass).
//
//	go test -run '^$' -bench Churn -benchtime 4x -count 2 ./centralized/
func BenchmarkChurn(b *testing.B) {
	shape, err := gguf.LookupShape("smollm-135m")
	if err != nil {
		b.Fatal(err)
	}
	tok, err := gguf.Open(testmodels.Path(b, testmodels.Target))
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	f16, _ := gguf.ParseType("F16")
	path := filepath.Join(b.TempDir(), "smollm-135m.gguf")
	if err := gguf.Synth(path, shape, gguf.SynthOptions{Type: f16, Tokenizer: tok, ContextLength: 2048}); err != nil {
		b.Fatal(err)
	}
	m, err := engine.LoadModel(path, engine.ModelOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	prompt, _ := m.Tokenize("Once upon a time, there was a little girl named Lily.", true)
	for _, unified := range []bool{false, true} {
		b.Run(fmt.Sprintf("unified=%v", unified), func(b *testing.B) {
			const clients, tokens = 16, 64
			s, err := New(m, Config{Slots: clients, UnifiedKV: unified})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = s.Run(ctx) }()
			defer func() { cancel(); <-done; s.Close() }()
			steps0, t0 := s.Steps(), time.Now()
			b.ResetTimer()
			for range b.N { // every client runs one request per iteration; they start together
				var wg sync.WaitGroup
				for c := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						p := append(append([]engine.Token(nil), prompt...), engine.Token(10+c))
						if _, err := s.Generate(ctx, textgen.Request{Prompt: p, MaxTokens: tokens}, func(textgen.Chunk) error { return nil }); err != nil {
							b.Error(err)
						}
					}()
				}
				wg.Wait()
			}
			el := time.Since(t0)
			b.ReportMetric(float64(el.Microseconds())/1000/float64(s.Steps()-steps0), "ms/step")
			b.ReportMetric(float64(b.N*clients*tokens)/el.Seconds(), "tokens/s")
		})
	}
}
