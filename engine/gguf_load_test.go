package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sled-project/sled/engine/gguf"
	"github.com/sled-project/sled/internal/testmodels"
)

// These tests load what engine/gguf writes (derived, requantized and synthetic
// models) into llama.cpp. They live here rather than in package gguf so that gguf's
// fuzz build does not rebuild llama.cpp with coverage instrumentation.

func cosine(a, b []float32) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	return ab / math.Sqrt(aa*bb)
}

func loadPath(t *testing.T, path string) *Model {
	t.Helper()
	m, err := LoadModel(path, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// allLogits evaluates toks from position 0 and copies every logits row.
func allLogits(t *testing.T, m *Model, toks []Token) [][]float32 {
	t.Helper()
	c := newCtx(t, m, ContextOptions{Threads: 1})
	es := make([]Entry, len(toks))
	for i, tok := range toks {
		es[i] = Entry{Seq: 0, Pos: i, Token: tok, Logits: true}
	}
	rows, err := c.Decode(context.Background(), es)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]float32, len(rows))
	for i, r := range rows {
		out[i] = slices.Clone(r)
	}
	return out
}

func greedyText(t *testing.T, m *Model, prompt string, n int) ([]Token, string) {
	t.Helper()
	in, _ := m.Tokenize(prompt, true)
	toks := greedy(t, newCtx(t, m, ContextOptions{Threads: 1}), in, n)
	return toks, m.Detokenize(toks)
}

func TestDerivedDraftMatchesShipped(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "4L.gguf")
	if _, err := gguf.Derive(testmodels.Path(t, testmodels.Target), dst, gguf.DeriveOptions{Layers: 4}); err != nil {
		t.Fatal(err)
	}
	got, text := greedyText(t, loadPath(t, dst), "Once upon a time", 24)
	want, _ := greedyText(t, load(t, testmodels.Draft4L), "Once upon a time", 24)
	t.Logf("derived 4-layer draft: Once upon a time%s", text)
	if !slices.Equal(got, want) {
		t.Errorf("derived draft continues %v, shipped draft %v", got, want)
	}
}

// TestRequantizedModels checks that requantized models load and compute nearly what
// the F32 model does, which also checks gguf's block layouts against llama.cpp's.
func TestRequantizedModels(t *testing.T) {
	src := testmodels.Path(t, testmodels.Target)
	target := load(t, testmodels.Target)
	in, _ := target.Tokenize("Once upon a time", true)
	ref := allLogits(t, target, in)
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
		m := loadPath(t, dst)
		logits := allLogits(t, m, in)
		worst := 1.0
		for i := range logits {
			worst = min(worst, cosine(logits[i], ref[i]))
		}
		_, text := greedyText(t, m, "Once upon a time", 16)
		t.Logf("%s: worst logit cosine to F32 %.5f; continues %q", tc.typ, worst, text)
		if worst < tc.minCos {
			t.Errorf("%s: logits diverge from F32: cosine %.5f < %.5f", tc.typ, worst, tc.minCos)
		}
	}
}

func TestSynthModelsLoadAndDecode(t *testing.T) {
	tok, err := gguf.Open(testmodels.Path(t, testmodels.Target))
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	in := []Token{1, 100, 200, 300, 400, 511}
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
		m := loadPath(t, dst)
		if m.VocabSize() != 512 || m.Info().Embedding != s.Embedding || m.Fingerprint() != load(t, testmodels.Target).Fingerprint() {
			t.Errorf("%s: vocabulary %d, n_embd %d (want %d), fingerprint %.12s", tc.shape, m.VocabSize(), m.Info().Embedding, s.Embedding, m.Fingerprint())
		}
		logits := allLogits(t, m, in)
		for _, row := range logits {
			for _, v := range row {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					t.Fatalf("%s %s: non-finite logit", tc.shape, tc.typ)
				}
			}
		}
		st, _ := os.Stat(dst)
		t.Logf("%s %s: %d bytes written in %v; loaded and decoded in %v",
			tc.shape, tc.typ, st.Size(), wrote.Round(time.Millisecond), (time.Since(start) - wrote).Round(time.Millisecond))
	}
}
