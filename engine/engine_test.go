package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/sled-project/sled/internal/testmodels"
)

var (
	loadOnce sync.Map // path -> *Model, shared across tests (models are read-only)
)

func load(t testing.TB, name string) *Model {
	t.Helper()
	p := testmodels.Path(t, name)
	if m, ok := loadOnce.Load(p); ok {
		return m.(*Model)
	}
	m, err := LoadModel(p, ModelOptions{})
	if err != nil {
		t.Fatalf("LoadModel(%s): %v", name, err)
	}
	loadOnce.Store(p, m)
	return m
}

func newCtx(t testing.TB, m *Model, opts ContextOptions) *Context {
	t.Helper()
	c, err := m.NewContext(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// greedy feeds prompt into slot 0 of c and generates n tokens greedily.
func greedy(t testing.TB, c *Context, prompt []Token, n int) []Token {
	t.Helper()
	ctx := context.Background()
	entries := make([]Entry, len(prompt))
	for i, tok := range prompt {
		entries[i] = Entry{Seq: 0, Pos: i, Token: tok, Logits: i == len(prompt)-1}
	}
	rows, err := c.Decode(ctx, entries)
	if err != nil {
		t.Fatal(err)
	}
	var out []Token
	pos := len(prompt)
	for range n {
		next := Argmax(rows[0])
		out = append(out, next)
		if c.Model().IsEOG(next) {
			break
		}
		if rows, err = c.Decode(ctx, []Entry{{Seq: 0, Pos: pos, Token: next, Logits: true}}); err != nil {
			t.Fatal(err)
		}
		pos++
	}
	return out
}

func TestGreedyContinuation(t *testing.T) {
	m := load(t, testmodels.Target)
	prompt, err := m.Tokenize("Once upon a time", true)
	if err != nil {
		t.Fatal(err)
	}
	if prompt[0] != m.BOS() {
		t.Fatalf("prompt %v does not start with BOS %d", prompt, m.BOS())
	}
	want := ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."
	for run := range 2 { // deterministic: the same twice, in fresh contexts
		got := m.Detokenize(greedy(t, newCtx(t, m, ContextOptions{}), prompt, 40))
		if !strings.HasPrefix(got, want) {
			t.Fatalf("run %d: continuation\n got %q\nwant %q...", run, got, want)
		}
	}
}

func TestModelInfo(t *testing.T) {
	m := load(t, testmodels.Target)
	info := m.Info()
	if info.VocabSize != 512 || info.Layers != 5 || info.ContextTrain != 512 || info.BOS != 1 || info.EOS != 2 {
		t.Fatalf("unexpected info %+v", info)
	}
	if !m.IsEOG(m.EOS()) || m.IsEOG(100) || m.IsEOG(-1) || m.IsEOG(1<<20) {
		t.Fatal("IsEOG wrong")
	}
	for _, d := range []string{testmodels.Draft4L, testmodels.Draft3L} {
		dm := load(t, d)
		if err := m.CheckCompatible(dm); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if dm.Info().Layers >= info.Layers {
			t.Fatalf("%s has %d layers", d, dm.Info().Layers)
		}
	}
}

func TestTokenizeRoundTrip(t *testing.T) {
	m := load(t, testmodels.Target)
	for _, s := range []string{
		"Once upon a time",
		"Lily and Ben went to the park.\nThey played!",
		"naïve café, 日本語 and emoji 🙂 survive byte fallback",
		"<s> is plain text here",
	} {
		toks, err := m.Tokenize(s, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range toks {
			if !m.ValidToken(tok) || tok == m.BOS() {
				t.Fatalf("%q: bad token %d in %v", s, tok, toks)
			}
		}
		got := m.Detokenize(toks)
		if strings.TrimPrefix(got, " ") != s {
			t.Fatalf("round trip of %q gave %q", s, got)
		}
		// Streaming gives the same text, and every chunk is whole UTF-8.
		st := m.NewTextStream()
		var b strings.Builder
		for _, tok := range toks {
			chunk := st.Add(tok)
			if !utf8.ValidString(chunk) {
				t.Fatalf("%q: stream chunk %q is not valid UTF-8", s, chunk)
			}
			b.WriteString(chunk)
		}
		b.WriteString(st.Flush())
		if b.String() != got {
			t.Fatalf("stream gave %q, want %q", b.String(), got)
		}
		again, _ := m.Tokenize(strings.TrimPrefix(got, " "), false)
		if fmt.Sprint(again) != fmt.Sprint(toks) {
			t.Fatalf("re-tokenizing %q: %v != %v", s, again, toks)
		}
	}
}

func TestTextStreamHoldsSplitCharacters(t *testing.T) {
	m := load(t, testmodels.Target)
	toks, _ := m.Tokenize("日本", false)
	split := false
	for _, tok := range toks {
		if p := m.Piece(tok); len(p) > 0 && !utf8.Valid(p) {
			split = true
		}
	}
	if !split {
		t.Fatalf("expected byte-fallback tokens for CJK in %v", toks)
	}
	st := m.NewTextStream()
	var got []string
	for _, tok := range toks {
		if c := st.Add(tok); c != "" {
			got = append(got, c)
		}
	}
	if strings.Join(got, "") != " 日本" && strings.Join(got, "") != "日本" {
		t.Fatalf("chunks %q", got)
	}
	for _, c := range got {
		if !utf8.ValidString(c) {
			t.Fatalf("chunk %q split a character", c)
		}
	}
}

// maxDiff is the largest absolute difference between two logits rows.
func maxDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// batchTolerance is how far a logit may move between a lone decode and the same
// sequence inside a multi-sequence batch: llama.cpp's batched matrix kernels sum in
// a different order, so results agree closely but not bit for bit.
const batchTolerance = 5e-3

func TestMultiSequenceDecodeMatchesSingle(t *testing.T) {
	m := load(t, testmodels.Target)
	ctx := context.Background()
	texts := []string{"Once upon a time", "The cat sat on the mat and", "Tom had a big red", "One day"}
	prompts := make([][]Token, len(texts))
	for i, s := range texts {
		prompts[i], _ = m.Tokenize(s, true)
	}
	// Alone: each prompt in its own context, logits at every position.
	alone := make([][][]float32, len(prompts))
	for i, p := range prompts {
		c := newCtx(t, m, ContextOptions{})
		var es []Entry
		for j, tok := range p {
			es = append(es, Entry{Seq: 0, Pos: j, Token: tok, Logits: true})
		}
		rows, err := c.Decode(ctx, es)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			alone[i] = append(alone[i], append([]float32(nil), r...))
		}
	}
	// Together: ragged, interleaved decodes over all prompts, in two passes (the
	// second continues the first), in a unified cache and in a stream per slot
	// with the prompts in slots with gaps between them (which Decode may pad).
	for _, layout := range []struct {
		name  string
		opts  ContextOptions
		slots []int
	}{
		{"unified", ContextOptions{Slots: len(prompts)}, []int{0, 1, 2, 3}},
		{"separate", ContextOptions{Slots: 7, SeparateKV: true}, []int{0, 2, 3, 6}},
		{"separate, always padding", ContextOptions{Slots: 7, SeparateKV: true, PassTokens: 1000}, []int{1, 2, 4, 5}},
	} {
		t.Run(layout.name, func(t *testing.T) {
			c := newCtx(t, m, layout.opts)
			worst := 0.0
			for _, part := range [][2]int{{0, 3}, {3, 1 << 20}} {
				var es []Entry
				var who []int
				for j := part[0]; j < part[1]; j++ {
					for i, p := range prompts {
						if j < len(p) {
							es = append(es, Entry{Seq: layout.slots[i], Pos: j, Token: p[j], Logits: true})
							who = append(who, i)
						}
					}
				}
				rows, err := c.Decode(ctx, es)
				if err != nil {
					t.Fatal(err)
				}
				for k, e := range es {
					d := maxDiff(rows[k], alone[who[k]][e.Pos])
					worst = math.Max(worst, d)
					if Argmax(rows[k]) != Argmax(alone[who[k]][e.Pos]) {
						t.Errorf("prompt %d pos %d: argmax differs", who[k], e.Pos)
					}
				}
			}
			for i, p := range prompts {
				if got := c.Len(layout.slots[i]); got != len(p) {
					t.Errorf("slot %d holds %d positions, want %d (padding left behind?)", layout.slots[i], got, len(p))
				}
			}
			t.Logf("max |logit difference| batched vs alone: %.2e (tolerance %.0e)", worst, batchTolerance)
			if worst > batchTolerance {
				t.Fatalf("batched logits differ from single by %.2e", worst)
			}
		})
	}
}

func TestRemoveThenRedecodeEqualsFresh(t *testing.T) {
	m := load(t, testmodels.Target)
	ctx := context.Background()
	prompt, _ := m.Tokenize("Once upon a time there was a", true)
	a := newCtx(t, m, ContextOptions{Slots: 2})
	// A neighbour sequence in slot 1 must be untouched by slot 0's rollback.
	var es []Entry
	for i, tok := range prompt {
		es = append(es, Entry{Seq: 0, Pos: i, Token: tok}, Entry{Seq: 1, Pos: i, Token: tok})
	}
	if _, err := a.Decode(ctx, es); err != nil {
		t.Fatal(err)
	}
	// Extend slot 0 with five "rejected" tokens, roll back, and decode others.
	base := len(prompt)
	var rejected []Entry
	for i, tok := range []Token{100, 200, 300, 400, 450} {
		rejected = append(rejected, Entry{Seq: 0, Pos: base + i, Token: tok})
	}
	if _, err := a.Decode(ctx, rejected); err != nil {
		t.Fatal(err)
	}
	if err := a.Remove(0, base); err != nil {
		t.Fatal(err)
	}
	if a.Len(0) != base {
		t.Fatalf("Len after Remove = %d, want %d", a.Len(0), base)
	}
	tail := []Token{17, 18, 19}
	var es2 []Entry
	for i, tok := range tail {
		es2 = append(es2, Entry{Seq: 0, Pos: base + i, Token: tok, Logits: true})
	}
	es2 = append(es2, Entry{Seq: 1, Pos: base, Token: tail[0], Logits: true})
	got, err := a.Decode(ctx, es2)
	if err != nil {
		t.Fatal(err)
	}
	gotRows := make([][]float32, len(got))
	for i := range got {
		gotRows[i] = append([]float32(nil), got[i]...)
	}
	// Fresh: the same full sequence in a new context.
	f := newCtx(t, m, ContextOptions{})
	var fes []Entry
	full := append(append([]Token(nil), prompt...), tail...)
	for i, tok := range full {
		fes = append(fes, Entry{Seq: 0, Pos: i, Token: tok, Logits: i >= base})
	}
	want, err := f.Decode(ctx, fes)
	if err != nil {
		t.Fatal(err)
	}
	for i := range tail {
		if d := maxDiff(gotRows[i], want[i]); d > batchTolerance {
			t.Fatalf("position %d after rollback differs from fresh by %.2e", base+i, d)
		}
	}
	// Slot 1 saw prompt + tail[0]: same as fresh position base.
	if d := maxDiff(gotRows[3], want[0]); d > batchTolerance {
		t.Fatalf("neighbour slot disturbed: %.2e", d)
	}
	if err := a.Clear(0); err != nil || a.Len(0) != 0 {
		t.Fatalf("Clear: %v, Len %d", err, a.Len(0))
	}
}

// twoSlots is a 4-slot context (both KV layouts) whose slot 0 holds prompt
// and slot 2 twenty other tokens, for the tests of moving cells between slots.
func twoSlots(t *testing.T, m *Model, separate bool) (c *Context, prompt, other []Token) {
	t.Helper()
	prompt, _ = m.Tokenize("Once upon a time there was a little girl named Lily", true)
	other = make([]Token, 20)
	for i := range other {
		other[i] = Token(40 + i)
	}
	c = newCtx(t, m, ContextOptions{Slots: 4, SeparateKV: separate})
	var es []Entry
	for i, tok := range prompt {
		es = append(es, Entry{Seq: 0, Pos: i, Token: tok})
	}
	for i, tok := range other {
		es = append(es, Entry{Seq: 2, Pos: i, Token: tok})
	}
	if _, err := c.Decode(context.Background(), es); err != nil {
		t.Fatal(err)
	}
	return c, prompt, other
}

// TestSwapContinuesAsTheOther exchanges two slots' cells in both KV layouts:
// each slot then continues as the other did, from the same one-row pass: bit
// for bit with a stream per slot, and within batchTolerance in a unified cache,
// where the cells land elsewhere in the one buffer and attention adds them up in
// another order. An empty slot swaps too, and bad slots are refused.
func TestSwapContinuesAsTheOther(t *testing.T) {
	m := load(t, testmodels.Target)
	ctx := context.Background()
	for _, separate := range []bool{false, true} {
		t.Run(fmt.Sprintf("separate=%v", separate), func(t *testing.T) {
			c, prompt, other := twoSlots(t, m, separate)
			// next evaluates one token at the end of seq and takes it back.
			next := func(seq int, tok Token) []float32 {
				t.Helper()
				pos := c.Len(seq)
				rows, err := c.Decode(ctx, []Entry{{Seq: seq, Pos: pos, Token: tok, Logits: true}})
				if err != nil {
					t.Fatal(err)
				}
				row := append([]float32(nil), rows[0]...)
				if err := c.Remove(seq, pos); err != nil {
					t.Fatal(err)
				}
				return row
			}
			tol := 0.0
			if !separate {
				tol = batchTolerance
			}
			wantA, wantB := next(0, 300), next(2, 301)
			if err := c.Swap(0, 2); err != nil {
				t.Fatal(err)
			}
			if c.Len(0) != len(other) || c.Len(2) != len(prompt) {
				t.Fatalf("Len after Swap: slot 0 %d (want %d), slot 2 %d (want %d)", c.Len(0), len(other), c.Len(2), len(prompt))
			}
			if d := maxDiff(next(2, 300), wantA); d > tol {
				t.Fatalf("slot 2 continues slot 0's cells with logits %.2e off", d)
			}
			if d := maxDiff(next(0, 301), wantB); d > tol {
				t.Fatalf("slot 0 continues slot 2's cells with logits %.2e off", d)
			}
			// With an empty slot: the cells move, the other slot is empty.
			if err := c.Swap(3, 2); err != nil || c.Len(3) != len(prompt) || c.Len(2) != 0 {
				t.Fatalf("Swap with an empty slot: %v, Len(3) %d, Len(2) %d", err, c.Len(3), c.Len(2))
			}
			if d := maxDiff(next(3, 300), wantA); d > tol {
				t.Fatalf("slot 3 continues slot 0's first cells with logits %.2e off", d)
			}
			if err := c.Swap(0, 4); !errors.Is(err, ErrSeqRange) {
				t.Fatalf("Swap with slot 4 of 4: %v, want ErrSeqRange", err)
			}
		})
	}
}

// TestCopyContinuesAsTheSource copies the first n positions of a slot into
// another (holding other cells) in both KV layouts: the copy continues exactly as
// the source does from position n (the same logits, bit for bit, from the same
// one-row pass), the source is unchanged, and bad arguments are refused.
func TestCopyContinuesAsTheSource(t *testing.T) {
	m := load(t, testmodels.Target)
	ctx := context.Background()
	for _, separate := range []bool{false, true} {
		t.Run(fmt.Sprintf("separate=%v", separate), func(t *testing.T) {
			c, prompt, _ := twoSlots(t, m, separate)
			n := len(prompt) - 3
			if err := c.Copy(0, 2, n); err != nil {
				t.Fatal(err)
			}
			if c.Len(2) != n || c.Len(0) != len(prompt) {
				t.Fatalf("Len after Copy: dst %d (want %d), src %d (want %d)", c.Len(2), n, c.Len(0), len(prompt))
			}
			next := func(seq, pos int) []float32 {
				t.Helper()
				rows, err := c.Decode(ctx, []Entry{{Seq: seq, Pos: pos, Token: prompt[pos], Logits: true}})
				if err != nil {
					t.Fatal(err)
				}
				return append([]float32(nil), rows[0]...)
			}
			if err := c.Remove(0, n); err != nil {
				t.Fatal(err)
			}
			for pos := n; pos < len(prompt); pos++ {
				if d := maxDiff(next(0, pos), next(2, pos)); d != 0 {
					t.Fatalf("position %d: the copy's logits differ from the source's by %.2e", pos, d)
				}
			}
			if err := c.Copy(0, 4, 1); !errors.Is(err, ErrSeqRange) {
				t.Fatalf("Copy to slot 4 of 4: %v, want ErrSeqRange", err)
			}
			if err := c.Copy(0, 1, -1); !errors.Is(err, ErrPosition) {
				t.Fatalf("Copy of -1 positions: %v, want ErrPosition", err)
			}
			if err := c.Copy(3, 2, 10); err != nil || c.Len(2) != 0 {
				t.Fatalf("Copy of an empty slot: %v, Len %d, want 0", err, c.Len(2))
			}
		})
	}
}

func TestDecodeRejectsBadInput(t *testing.T) {
	m := load(t, testmodels.Target)
	ctx := context.Background()
	c := newCtx(t, m, ContextOptions{Slots: 2, SlotContext: 64, BatchSize: 16})
	cases := []struct {
		name    string
		entries []Entry
		want    error
	}{
		{"token too large", []Entry{{Seq: 0, Pos: 0, Token: 512}}, ErrTokenRange},
		{"negative token", []Entry{{Seq: 0, Pos: 0, Token: -1}}, ErrTokenRange},
		{"slot out of range", []Entry{{Seq: 2, Pos: 0, Token: 1}}, ErrSeqRange},
		{"negative slot", []Entry{{Seq: -1, Pos: 0, Token: 1}}, ErrSeqRange},
		{"gap in positions", []Entry{{Seq: 0, Pos: 1, Token: 1}}, ErrPosition},
		{"repeated position", []Entry{{Seq: 0, Pos: 0, Token: 1}, {Seq: 0, Pos: 0, Token: 1}}, ErrPosition},
		{"batch too large", make([]Entry, 17), ErrBatchTooLarge},
	}
	for _, tc := range cases {
		if _, err := c.Decode(ctx, tc.entries); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Past the slot's context: fill 64 positions, then one more.
	for p := 0; p < 64; p += 16 {
		es := make([]Entry, 16)
		for i := range es {
			es[i] = Entry{Seq: 0, Pos: p + i, Token: 5}
		}
		if _, err := c.Decode(ctx, es); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Decode(ctx, []Entry{{Seq: 0, Pos: 64, Token: 5}}); !errors.Is(err, ErrContextFull) {
		t.Fatalf("past slot context: %v", err)
	}
	// Nothing above changed the context: slot 1 is still empty and usable.
	if c.Len(1) != 0 {
		t.Fatalf("slot 1 has %d positions", c.Len(1))
	}
	if _, err := c.Decode(ctx, []Entry{{Seq: 1, Pos: 0, Token: 1, Logits: true}}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Decode(cctx, []Entry{{Seq: 1, Pos: 1, Token: 1}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
	if err := c.Remove(5, 0); !errors.Is(err, ErrSeqRange) {
		t.Fatalf("Remove bad slot: %v", err)
	}
}

func TestLoadModelRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.gguf")
	os.WriteFile(text, []byte("this is a text file, not a model\n"), 0o644)
	real, err := os.ReadFile(testmodels.Path(t, testmodels.Target))
	if err != nil {
		t.Fatal(err)
	}
	trunc := filepath.Join(dir, "truncated.gguf")
	os.WriteFile(trunc, real[:len(real)/2], 0o644)
	header := filepath.Join(dir, "header-only.gguf")
	os.WriteFile(header, real[:24], 0o644)
	empty := filepath.Join(dir, "empty.gguf")
	os.WriteFile(empty, nil, 0o644)
	for _, p := range []string{filepath.Join(dir, "missing.gguf"), text, trunc, header, empty, dir} {
		_, err := LoadModel(p, ModelOptions{})
		if !errors.Is(err, ErrModelFile) {
			t.Errorf("LoadModel(%s) = %v, want ErrModelFile", filepath.Base(p), err)
			continue
		}
		t.Logf("%s: %v", filepath.Base(p), err)
	}
}

func TestProbabilities(t *testing.T) {
	logits := []float32{1, 3, 2, 3}
	if Argmax(logits) != 1 {
		t.Fatal("argmax tie should go to the lowest id")
	}
	p := Softmax(nil, logits, 1)
	var sum float32
	for _, v := range p {
		sum += v
	}
	if math.Abs(float64(sum-1)) > 1e-6 || math.Abs(float64(p[1]-p[3])) > 1e-7 || p[0] >= p[2] {
		t.Fatalf("softmax %v", p)
	}
	tok, pr := Top1(logits)
	if tok != 1 || math.Abs(float64(pr-p[1])) > 1e-6 {
		t.Fatalf("Top1 = %d %v", tok, pr)
	}
	top := TopK(logits, 2, 1)
	if len(top) != 2 || top[0].Token != 1 || top[1].Token != 3 || math.Abs(float64(top[0].Prob-0.5)) > 1e-6 {
		t.Fatalf("TopK %v", top)
	}
	// Large logits do not overflow.
	if p := Prob([]float32{1000, 0}, 0); math.IsNaN(float64(p)) || p < 0.999 {
		t.Fatalf("Prob overflowed: %v", p)
	}
}
