package engine_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/engine/gguf"
	"github.com/sled-project/sled/internal/testmodels"
)

// A vocabulary-only load tokenizes and detokenizes as the full model does
// (control tokens spelled out by DetokenizeSpecial, and read back by
// TokenizeSpecial), and refuses to evaluate.
func TestVocabOnly(t *testing.T) {
	path := testmodels.Real(t, testmodels.QwenDraft)
	full, err := engine.LoadModel(path, engine.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	vo, err := engine.LoadModel(path, engine.ModelOptions{VocabOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vo.Close()
	if !vo.VocabOnly() || full.VocabOnly() || vo.Fingerprint() != full.Fingerprint() || vo.VocabSize() != full.VocabSize() {
		t.Fatalf("vocab-only %v/%v, fingerprints %s %s", vo.VocabOnly(), full.VocabOnly(), vo.Fingerprint(), full.Fingerprint())
	}
	chat, _ := full.FormatChat([]engine.ChatMessage{{Role: "user", Content: "Write a Go function that reverses a string."}}, true)
	a, err := full.TokenizeSpecial(chat, true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := vo.TokenizeSpecial(chat, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a, b) {
		t.Fatalf("tokens differ:\n%v\n%v", a, b)
	}
	text := vo.DetokenizeSpecial(a)
	if !strings.Contains(text, "<|im_start|>") || strings.Contains(vo.Detokenize(a), "<|im_start|>") {
		t.Fatalf("DetokenizeSpecial %q, Detokenize %q", text, vo.Detokenize(a))
	}
	if back, err := vo.TokenizeSpecial(text, false); err != nil || !slices.Equal(back, a) {
		t.Fatalf("round trip: %v (%v), want %v", back, err, a)
	}
	if _, err := vo.NewContext(engine.ContextOptions{}); err == nil || !strings.Contains(err.Error(), "vocabulary-only") {
		t.Fatalf("NewContext on a vocabulary-only model: %v", err)
	}
}

// A tokenizer-only file (gguf.ExtractVocab) loads vocabulary-only and
// tokenizes as the full model does, at a small fraction of its size.
func TestExtractedVocab(t *testing.T) {
	path := testmodels.Real(t, testmodels.QwenTarget)
	dst := filepath.Join(t.TempDir(), "qwen-vocab.gguf")
	if err := gguf.ExtractVocab(path, dst); err != nil {
		t.Fatal(err)
	}
	full, err := engine.LoadModel(path, engine.ModelOptions{VocabOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	vo, err := engine.LoadModel(dst, engine.ModelOptions{VocabOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vo.Close()
	st, _ := os.Stat(dst)
	src, _ := os.Stat(path)
	t.Logf("tokenizer file %d bytes, model %d", st.Size(), src.Size())
	if vo.Fingerprint() != full.Fingerprint() || st.Size() > src.Size()/20 {
		t.Fatalf("fingerprint %s vs %s, %d bytes", vo.Fingerprint(), full.Fingerprint(), st.Size())
	}
	text := "def reverse(s: str) -> str:\n    return s[::-1]  # ünïcode ✓"
	a, _ := full.Tokenize(text, true)
	b, _ := vo.Tokenize(text, true)
	if !slices.Equal(a, b) || vo.Detokenize(b) != full.Detokenize(a) {
		t.Fatalf("tokens differ: %v vs %v", a, b)
	}
}
