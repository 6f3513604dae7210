package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/engine/gguf"
)

// DefaultPrompts are the prompts every experiment generates from (TinyStories
// style, since the shared models and every synthetic target use the stories260K
// tokenizer).
var DefaultPrompts = []string{
	"Once upon a time, there was a little girl named Lily.",
	"One day, a big dog went to the park to play with a ball.",
	"Tom and his mom went to the store to buy some milk.",
	"There was a small bird who lived in a tall tree.",
	"Sam had a red car. He liked to drive it fast.",
	"The sun was hot, so Anna and Ben went to the beach.",
	"A little cat found a box in the garden.",
	"Max wanted to help his dad fix the old boat.",
}

// EnvConfig configures NewEnv. Zero fields take the documented defaults.
type EnvConfig struct {
	// Target is the target model file the server runs. Required.
	Target string
	// AcceptTarget and AcceptDraft are the real pair whose agreement drives the
	// simulated devices' drafts (see MeasureAcceptance). Required.
	AcceptTarget, AcceptDraft string
	// Prompts default to DefaultPrompts.
	Prompts []string
	// Kinds label Prompts ("code", "prose"), for acceptance reported by kind.
	// Optional; when set, one per prompt.
	Kinds []string
	// Chat formats every prompt as a user's turn with the target's chat template.
	Chat bool
	// ContinuationLen is the length of the target's greedy continuation of each
	// prompt: the most tokens one simulated session generates. Default 128.
	ContinuationLen int
	// AcceptanceLen is the continuation length over which acceptance is measured.
	// Default 256.
	AcceptanceLen int
	// Threads is the server's llama.cpp thread count. Default engine.DefaultThreads().
	Threads int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Env is what every trial of an experiment shares: the loaded target, the prompts,
// the target's greedy continuation of each, and the measured acceptance.
type Env struct {
	Cfg        EnvConfig
	Target     *engine.Model
	Prompts    [][]engine.Token
	Conts      [][]engine.Token
	Acceptance *Acceptance
}

// NewEnv loads the target, measures acceptance on the real pair and precomputes
// the target's continuations. Close frees the target.
func NewEnv(ctx context.Context, cfg EnvConfig) (*Env, error) {
	if cfg.Target == "" || cfg.AcceptTarget == "" || cfg.AcceptDraft == "" {
		return nil, errors.New("bench: EnvConfig needs Target, AcceptTarget and AcceptDraft")
	}
	if len(cfg.Prompts) == 0 {
		cfg.Prompts = DefaultPrompts
	}
	if cfg.ContinuationLen <= 0 {
		cfg.ContinuationLen = 128
	}
	if cfg.AcceptanceLen <= 0 {
		cfg.AcceptanceLen = 256
	}
	if cfg.Threads <= 0 {
		cfg.Threads = engine.DefaultThreads()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Kinds) != 0 && len(cfg.Kinds) != len(cfg.Prompts) {
		return nil, fmt.Errorf("bench: %d kinds for %d prompts", len(cfg.Kinds), len(cfg.Prompts))
	}
	acc, err := measurePair(ctx, cfg.AcceptTarget, cfg.AcceptDraft, cfg.Prompts, cfg.Chat, cfg.AcceptanceLen, cfg.Threads)
	if err != nil {
		return nil, err
	}
	t, err := engine.LoadModel(cfg.Target, engine.ModelOptions{})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	acc.Kinds = cfg.Kinds
	e := &Env{Cfg: cfg, Target: t, Acceptance: acc}
	if e.Prompts, err = tokenize(t, cfg.Prompts, cfg.Chat); err != nil {
		t.Close()
		return nil, err
	}
	if e.Conts, err = cachedContinuations(ctx, t, cfg.Target, e.Prompts, cfg.ContinuationLen, cfg.Threads); err != nil {
		t.Close()
		return nil, err
	}
	for i, c := range e.Conts {
		if len(c) < 2 {
			t.Close()
			return nil, fmt.Errorf("bench: the target ends prompt %d after %d tokens; use another prompt", i, len(c))
		}
	}
	return e, nil
}

// Close frees the target model.
func (e *Env) Close() error { return e.Target.Close() }

// SlotContext is the context one session needs on the server.
func (e *Env) SlotContext() int {
	n := 0
	for i, p := range e.Prompts {
		n = max(n, len(p)+len(e.Conts[i]))
	}
	return n + 72 // a whole draft (and the bonus row) past the last committed token
}

// cachedContinuations is Continuations, kept as JSON in CacheDir under a key of
// the model file (name, size, modification time), the prompts and n.
func cachedContinuations(ctx context.Context, m *engine.Model, path string, prompts [][]engine.Token, n, threads int) ([][]engine.Token, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s|%d|%d|%d|%v", filepath.Base(path), fi.Size(), fi.ModTime().UnixNano(), n, prompts)
	file := filepath.Join(CacheDir(), "cont-"+hex.EncodeToString(h.Sum(nil)[:8])+".json")
	var conts [][]engine.Token
	if b, err := os.ReadFile(file); err == nil && json.Unmarshal(b, &conts) == nil && len(conts) == len(prompts) {
		return conts, nil
	}
	conts, err = Continuations(ctx, m, prompts, n, threads)
	if err != nil {
		return nil, err
	}
	if b, err := json.Marshal(conts); err == nil && os.MkdirAll(CacheDir(), 0o755) == nil {
		_ = os.WriteFile(file, b, 0o644)
	}
	return conts, nil
}

func tokenize(m *engine.Model, texts []string, chat bool) ([][]engine.Token, error) {
	out := make([][]engine.Token, len(texts))
	for i, s := range texts {
		t, err := promptTokens(m, s, chat)
		if err != nil {
			return nil, fmt.Errorf("bench: tokenize prompt %d: %w", i, err)
		}
		out[i] = t
	}
	return out, nil
}

func measurePair(ctx context.Context, targetPath, draftPath string, prompts []string, chat bool, n, threads int) (*Acceptance, error) {
	t, err := engine.LoadModel(targetPath, engine.ModelOptions{})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer t.Close()
	d, err := engine.LoadModel(draftPath, engine.ModelOptions{})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer d.Close()
	ps, err := tokenize(t, prompts, chat)
	if err != nil {
		return nil, err
	}
	a, err := MeasureAcceptance(ctx, t, d, ps, n, threads)
	if err != nil {
		return nil, err
	}
	a.Target, a.Draft = filepath.Base(targetPath), filepath.Base(draftPath)
	return a, nil
}

// CacheDir is where synthetic targets are kept: $SLED_BENCH_CACHE, else
// <user cache dir>/sled-bench, else the temporary directory.
func CacheDir() string {
	if d := os.Getenv("SLED_BENCH_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "sled-bench")
	}
	return filepath.Join(os.TempDir(), "sled-bench")
}

// SynthTarget returns the path of a synthetic target of the given shape and weight
// type (F16, Q8_0, Q4_0) with tokenizer's vocabulary, writing it into dir the first
// time (seed 1, context 1024). Its forward pass costs what the real model's does,
// less the vocabulary projection; its text is noise.
func SynthTarget(dir, shape, typ, tokenizer string) (string, error) {
	s, err := gguf.LookupShape(shape)
	if err != nil {
		return "", err
	}
	t, err := gguf.ParseType(typ)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.gguf", shape, strings.ToLower(t.String()), strings.TrimSuffix(filepath.Base(tokenizer), ".gguf")))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("bench: %w", err)
	}
	tf, err := gguf.Open(tokenizer)
	if err != nil {
		return "", err
	}
	defer tf.Close()
	if err := gguf.Synth(path, s, gguf.SynthOptions{Type: t, ContextLength: 1024, Seed: 1, Tokenizer: tf}); err != nil {
		return "", fmt.Errorf("bench: synth %s %s: %w", shape, t, err)
	}
	return path, nil
}
