package gguf_test

// These tests load files written by package gguf into llama.cpp (through
// cgo), the reader that matters. They live in the external test package so
// that package gguf itself stays pure Go.

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/llama"
	"github.com/ollama/ollama/ml"

	"github.com/sled-project/sled/engine/gguf"
)

const prompt = "Once upon a time"

func modelPath(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("SLED_MODEL_DIR")
	if dir == "" {
		t.Fatalf("SLED_MODEL_DIR is not set: point it at the test models (../shared/models beside the checkout; see README.md)")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model missing: %v (SLED_MODEL_DIR=%s)", err, dir)
	}
	return p
}

var backend sync.Once

// lm is a model loaded into llama.cpp with one context. The bindings cannot
// free a context, so tests leave both to the end of the process.
type lm struct {
	m   *llama.Model
	ctx *llama.Context
}

func load(t *testing.T, path string) *lm {
	t.Helper()
	backend.Do(llama.BackendInit)
	// Validate in Go first, as SLED does before handing a file to llama.cpp.
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	m, err := llama.LoadModelFromFile(path, llama.ModelParams{UseMmap: true})
	if err != nil {
		t.Fatal(err)
	}
	// One thread: on a busy machine llama.cpp's spinning worker threads can
	// make each single-token decode take a second.
	ctx, err := llama.NewContextWithModel(m, llama.NewContextParams(512, 512, 1, 1, ml.FlashAttentionDisabled, ""))
	if err != nil {
		t.Fatal(err)
	}
	return &lm{m, ctx}
}

// decode runs toks (at positions from pos) through the model and returns
// the logits of each, failing the test on non-finite values.
func (l *lm) decode(t *testing.T, toks []int, pos int) [][]float32 {
	t.Helper()
	b, err := llama.NewBatch(len(toks), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	for i, tok := range toks {
		b.Add(tok, nil, pos+i, true, 0)
	}
	if err := l.ctx.Decode(b); err != nil {
		t.Fatal(err)
	}
	out := make([][]float32, len(toks))
	for i := range toks {
		out[i] = l.ctx.GetLogitsIth(i)
		for j, x := range out[i] {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("logit %d at position %d is %v", j, pos+i, x)
			}
		}
	}
	return out
}

func argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// greedy continues prompt by n tokens, starting from a clear cache.
func (l *lm) greedy(t *testing.T, n int) (toks []int, text string) {
	t.Helper()
	l.ctx.KvCacheClear()
	in, err := l.m.Tokenize(prompt, true, true)
	if err != nil {
		t.Fatal(err)
	}
	logits := l.decode(t, in, 0)
	next := argmax(logits[len(logits)-1])
	var sb strings.Builder
	for pos := len(in); len(toks) < n; pos++ {
		toks = append(toks, next)
		sb.WriteString(l.m.TokenToPiece(next))
		next = argmax(l.decode(t, []int{next}, pos)[0])
	}
	return toks, sb.String()
}

func cosine(a, b []float32) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	return ab / math.Sqrt(aa*bb)
}

func TestLlamaDerivedDraft(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "4L.gguf")
	if _, err := gguf.Derive(modelPath(t, "stories260k.gguf"), dst, gguf.DeriveOptions{Layers: 4}); err != nil {
		t.Fatal(err)
	}
	derived, shipped := load(t, dst), load(t, modelPath(t, "stories260k-draft-4L.gguf"))
	got, text := derived.greedy(t, 24)
	want, _ := shipped.greedy(t, 24)
	t.Logf("4-layer draft: %s%s", prompt, text)
	if !slices.Equal(got, want) {
		t.Errorf("derived draft continues %v, shipped draft %v", got, want)
	}
	if len(strings.TrimSpace(text)) == 0 {
		t.Error("empty continuation")
	}
	if _, text := load(t, modelPath(t, "stories260k.gguf")).greedy(t, 12); !strings.HasPrefix(text, ", there was a little girl") {
		t.Errorf("target continues %q; the README says %q", text, ", there was a little girl named Lily.")
	}
}

// TestLlamaQuantized checks that requantized models load and compute nearly
// what the F32 model does, which also checks the quantizers' block layouts
// against llama.cpp's.
func TestLlamaQuantized(t *testing.T) {
	src := modelPath(t, "stories260k.gguf")
	in, err := load(t, src).m.Tokenize(prompt, true, true)
	if err != nil {
		t.Fatal(err)
	}
	ref := load(t, src).decode(t, in, 0)
	for _, tc := range []struct {
		typ    gguf.Type
		minCos float64
	}{
		{gguf.TypeF16, 0.9999},
		{gguf.TypeQ8_0, 0.999},
		{gguf.TypeQ4_0, 0.95},
	} {
		dst := filepath.Join(t.TempDir(), tc.typ.String()+".gguf")
		if _, err := gguf.Derive(src, dst, gguf.DeriveOptions{Type: &tc.typ}); err != nil {
			t.Fatal(err)
		}
		l := load(t, dst)
		logits := l.decode(t, in, 0)
		worst := 1.0
		for i := range logits {
			worst = min(worst, cosine(logits[i], ref[i]))
		}
		_, text := l.greedy(t, 16)
		t.Logf("%s: worst logit cosine to F32 %.5f; continues %q", tc.typ, worst, text)
		if worst < tc.minCos {
			t.Errorf("%s: logits diverge from F32: cosine %.5f < %.5f", tc.typ, worst, tc.minCos)
		}
	}
}

func TestLlamaSynth(t *testing.T) {
	tok, err := gguf.Open(modelPath(t, "stories260k.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	in := []int{1, 100, 200, 300, 400, 511}
	for _, tc := range []struct {
		shape string
		typ   gguf.Type
	}{
		{"test-tiny", gguf.TypeF32},
		{"test-tiny", gguf.TypeQ4_0},
		{"smollm-135m", gguf.TypeF16},
	} {
		s, err := gguf.LookupShape(tc.shape)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), tc.shape+".gguf")
		start := time.Now()
		if err := gguf.Synth(dst, s, gguf.SynthOptions{Type: tc.typ, Seed: 7, ContextLength: 512, Tokenizer: tok}); err != nil {
			t.Fatal(err)
		}
		wrote := time.Since(start)
		l := load(t, dst)
		if n := l.m.NumVocab(); n != 512 {
			t.Errorf("%s: vocabulary of %d", tc.shape, n)
		}
		if n := l.m.NEmbd(); n != s.Embedding {
			t.Errorf("%s: n_embd %d, want %d", tc.shape, n, s.Embedding)
		}
		logits := l.decode(t, in, 0)
		st, _ := os.Stat(dst)
		t.Logf("%s %s: %d bytes written in %v; loaded and decoded in %v; argmax %d",
			tc.shape, tc.typ, st.Size(), wrote.Round(time.Millisecond), (time.Since(start) - wrote).Round(time.Millisecond), argmax(logits[len(logits)-1]))
	}
}
