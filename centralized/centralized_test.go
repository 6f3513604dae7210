package centralized

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/prefixcache"
	"github.com/sled-project/sled/textgen"
)

func load(t *testing.T) *engine.Model {
	t.Helper()
	m, err := engine.LoadModel(testmodels.Path(t, testmodels.Target), engine.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// serve runs a server on m until the test ends.
func serve(t *testing.T, m *engine.Model, cfg Config) *Server {
	t.Helper()
	s, err := New(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		s.Close()
	})
	return s
}

func generate(t *testing.T, s *Server, prompt []engine.Token, n int) []engine.Token {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := s.Generate(ctx, textgen.Request{Prompt: prompt, MaxTokens: n}, func(textgen.Chunk) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return res.Tokens
}

func tokenize(t *testing.T, m *engine.Model, text string) []engine.Token {
	t.Helper()
	toks, err := m.Tokenize(text, true)
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

// The prompt cache serves a repeated prompt, and a prompt that extends an
// earlier one, from the cells the earlier request left, and the text is the one
// a server without the cache generates.
func TestPromptCache(t *testing.T) {
	m := load(t)
	base := tokenize(t, m, "Once upon a time, there was a little girl named Lily. She loved to play")
	longer := tokenize(t, m, "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog")
	other := tokenize(t, m, "The sun was hot and the big red ball rolled down the hill")
	if prefixcache.CommonPrefix(base, longer) < len(base)-1 {
		t.Fatalf("test prompts: %v is not a prefix of %v", base, longer)
	}

	cold := serve(t, m, Config{Slots: 2, NoPromptCache: true})
	want := map[string][]engine.Token{}
	for name, p := range map[string][]engine.Token{"base": base, "longer": longer, "other": other} {
		want[name] = generate(t, cold, p, 24)
	}
	if cold.ReusedPromptTokens() != 0 {
		t.Fatalf("NoPromptCache: %d prompt tokens reused", cold.ReusedPromptTokens())
	}

	s := serve(t, m, Config{Slots: 2})
	steps := []struct {
		name   string
		prompt []engine.Token
		reuse  int // prompt tokens the cache must serve at least (more where the earlier text continued into this prompt)
	}{
		{"base", base, 0},
		{"other", other, 0}, // shares only BOS with base: goes to the other slot
		{"base", base, len(base) - 1},
		{"longer", longer, prefixcache.CommonPrefix(base, longer)},
	}
	before := uint64(0)
	for _, st := range steps {
		got := generate(t, s, st.prompt, 24)
		if fmt.Sprint(got) != fmt.Sprint(want[st.name]) {
			t.Errorf("%s: %v with the prompt cache, %v without", st.name, got, want[st.name])
		}
		reused := s.ReusedPromptTokens() - before
		before = s.ReusedPromptTokens()
		most := len(st.prompt) - 1
		if st.reuse == 0 {
			most = 0
		}
		if reused < uint64(st.reuse) || reused > uint64(most) {
			t.Errorf("%s: %d prompt tokens reused, want %d", st.name, reused, st.reuse)
		}
	}
}

// sharedOpenings is n (at most 4) tokenized prompts that share their first words.
func sharedOpenings(t *testing.T, m *engine.Model, n int) [][]engine.Token {
	var out [][]engine.Token
	for _, text := range []string{
		"Once upon a time, there was a little girl named Lily.",
		"Once upon a time, there was a little boy named Tim.",
		"Once upon a time, there was a big dog.",
		"Once upon a time, there was a red ball in the park.",
	}[:n] {
		out = append(out, tokenize(t, m, text))
	}
	return out
}

// Prompts that share their first words, sent in turn to a server with a slot
// for each: a prompt's second time finds all of it cached. (A cache that gives
// each request the slot with the longest shared prefix, however short, lets
// every prompt evict the one before it: measured, 2-8 of 28-53 tokens reused.)
// In both KV layouts, and every text is the one a server without the cache
// generates; with a stream per slot the first round's shared words are copied
// from the slot holding them (prefixcache.Placement.Copy).
func TestPromptCacheSharedOpenings(t *testing.T) {
	m := load(t)
	prompts := sharedOpenings(t, m, 4)
	cold := serve(t, m, Config{Slots: len(prompts), NoPromptCache: true})
	var want [][]engine.Token
	for _, p := range prompts {
		want = append(want, generate(t, cold, p, 32))
	}
	for _, unified := range []bool{false, true} {
		s := serve(t, m, Config{Slots: len(prompts), UnifiedKV: unified})
		for round := range 2 {
			for i, p := range prompts {
				before := s.ReusedPromptTokens()
				got := generate(t, s, p, 32)
				reused := int(s.ReusedPromptTokens() - before)
				if round == 0 && i > 0 && !unified && reused == 0 {
					t.Errorf("prompt %d: its opening, cached in another slot, not copied", i)
				}
				if round == 1 && reused != len(p)-1 {
					t.Errorf("unified %v: prompt %d again: %d of its %d tokens reused, want %d", unified, i, reused, len(p), len(p)-1)
				}
				if fmt.Sprint(got) != fmt.Sprint(want[i]) {
					t.Errorf("unified %v: round %d prompt %d: %v with the cache, %v without", unified, round, i, got, want[i])
				}
			}
		}
	}
}

// With a stream per slot a request goes next to the busy slots: a repeated
// prompt whose cells sit away from the one running request has them exchanged
// into the slot beside it (prefixcache.Place, engine.Context.Swap), reuses them
// all, and generates the text a server without the cache does; the cells the
// slot beside held stay cached and serve their own prompt's repeat too.
func TestPromptCacheExchangesNextToBusySlots(t *testing.T) {
	m := load(t)
	p1 := tokenize(t, m, "Once upon a time, there was a little girl named Lily.")
	p2 := tokenize(t, m, "The sun was hot and the big red ball rolled down the hill.")
	long := tokenize(t, m, "One day, a boy named Tim went to the park with his mom.")
	const longTokens = 60
	cold := serve(t, m, Config{Slots: 3, NoPromptCache: true})
	want1, want2 := generate(t, cold, p1, 24), generate(t, cold, p2, 24)
	if n := len(generate(t, cold, long, longTokens)); n != longTokens {
		t.Fatalf("test prompt: the long request stops after %d tokens, want %d", n, longTokens)
	}

	s := serve(t, m, Config{Slots: 3})
	generate(t, s, p1, 24) // slot 0
	generate(t, s, p2, 24) // slot 1 (empty, so p1's cells stay)
	// The long request takes slot 2 and keeps it busy while p1 comes again:
	// slot 1 borders it, slot 0 (p1's cells) does not.
	started, done := make(chan struct{}), make(chan error, 1)
	go func() {
		var once sync.Once
		_, err := s.Generate(context.Background(), textgen.Request{Prompt: long, MaxTokens: longTokens}, func(textgen.Chunk) error {
			once.Do(func() { close(started) })
			return nil
		})
		done <- err
	}()
	<-started
	before := s.ReusedPromptTokens()
	got1 := generate(t, s, p1, 24)
	reused := int(s.ReusedPromptTokens() - before)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if sw := s.Swaps(); sw != 1 {
		t.Errorf("%d KV exchanges, want 1 (p1's cells into slot 1)", sw)
	}
	if reused != len(p1)-1 || fmt.Sprint(got1) != fmt.Sprint(want1) {
		t.Errorf("p1 again beside the busy slot: %d of %d tokens reused (want %d), text %v, want %v", reused, len(p1), len(p1)-1, got1, want1)
	}
	before = s.ReusedPromptTokens()
	got2 := generate(t, s, p2, 24)
	if reused := int(s.ReusedPromptTokens() - before); reused != len(p2)-1 || fmt.Sprint(got2) != fmt.Sprint(want2) {
		t.Errorf("p2 again, its cells exchanged to slot 0: %d of %d tokens reused (want %d), text %v, want %v", reused, len(p2), len(p2)-1, got2, want2)
	}
}

// With a stream per slot, a request that ends amid the busy slots leaves a gap
// that the server closes by moving a later request's cells into it
// (prefixcache.Cache.Compact, engine.Context.Swap); the moved request's text is
// the one it generates alone.
func TestCompactsBusySlots(t *testing.T) {
	m := load(t)
	prompts := []string{
		"One day, a boy named Tim went to the park with his mom.",
		"The sun was hot and the big red ball rolled down the hill.",
		"Once upon a time, there was a little girl named Lily.",
	}
	lens := []int{100, 30, 100} // the middle one ends first
	cold := serve(t, m, Config{Slots: 3, NoPromptCache: true})
	var toks, want [][]engine.Token
	for i, p := range prompts {
		toks = append(toks, tokenize(t, m, p))
		want = append(want, generate(t, cold, toks[i], lens[i]))
		if len(want[i]) != lens[i] {
			t.Fatalf("test prompt %d stops after %d tokens, want %d", i, len(want[i]), lens[i])
		}
	}
	s := serve(t, m, Config{Slots: 3})
	got := make([][]engine.Token, len(prompts))
	errs := make(chan error, len(prompts))
	for i := range prompts {
		started := make(chan struct{})
		go func() {
			var once sync.Once
			res, err := s.Generate(context.Background(), textgen.Request{Prompt: toks[i], MaxTokens: lens[i]}, func(textgen.Chunk) error {
				once.Do(func() { close(started) })
				return nil
			})
			got[i] = res.Tokens
			errs <- err
		}()
		<-started // admitted in order: slots 0, 1, 2
	}
	for range prompts {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if sw := s.Swaps(); sw != 1 {
		t.Errorf("%d KV exchanges, want 1 (the last request into the middle slot)", sw)
	}
	for i := range prompts {
		if fmt.Sprint(got[i]) != fmt.Sprint(want[i]) {
			t.Errorf("request %d: %v, alone %v", i, got[i], want[i])
		}
	}
}

// Concurrent requests keep their own slots: a request admitted while another
// decodes takes the cached slot only if it is free, and every text equals the
// one it gets alone.
func TestPromptCacheConcurrent(t *testing.T) {
	m := load(t)
	prompts := sharedOpenings(t, m, 3)
	cold := serve(t, m, Config{Slots: 3, NoPromptCache: true})
	var want [][]engine.Token
	for _, p := range prompts {
		want = append(want, generate(t, cold, p, 32))
	}
	s := serve(t, m, Config{Slots: 3})
	for round := range 3 {
		var wg sync.WaitGroup
		got := make([][]engine.Token, len(prompts))
		for i, p := range prompts {
			wg.Add(1)
			go func() { defer wg.Done(); got[i] = generate(t, s, p, 32) }()
		}
		wg.Wait()
		for i := range prompts {
			if fmt.Sprint(got[i]) != fmt.Sprint(want[i]) {
				t.Errorf("round %d, prompt %d: %v concurrently with the cache, %v alone", round, i, got[i], want[i])
			}
		}
	}
	if s.ReusedPromptTokens() == 0 {
		t.Error("no prompt tokens reused over three rounds of the same prompts")
	}
}
