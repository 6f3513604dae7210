package httpapi

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// reference is the text an assembler must end with: generation ends after the
// first piece that completes a stop string, and the text is cut before the
// earliest stop string occurring in the text so far.
func reference(pieces, stops []string) (string, bool) {
	var s string
	for _, p := range pieces {
		s += p
		cut := -1
		for _, st := range stops {
			if i := strings.Index(s, st); st != "" && i >= 0 && (cut < 0 || i < cut) {
				cut = i
			}
		}
		if cut >= 0 {
			return s[:cut], true
		}
	}
	return s, false
}

func TestTextAssemblerRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "b", "ab", "ba", "é", "ü", " "}
	word := func(n int) string {
		var b strings.Builder
		for range n {
			b.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		return b.String()
	}
	for iter := range 20000 {
		var pieces []string
		for range r.IntN(8) {
			pieces = append(pieces, word(r.IntN(3)))
		}
		var stops []string
		for range r.IntN(4) {
			stops = append(stops, word(1+r.IntN(3)))
		}
		want, wantStop := reference(pieces, stops)

		a := newTextAssembler(stops)
		var out strings.Builder
		stopped := false
		for _, p := range pieces {
			stopped = a.add(p, false)
			out.WriteString(a.release())
			if out.Len() > len(want) || !strings.HasPrefix(want, out.String()) {
				t.Fatalf("%d: pieces %q stops %q: released %q before the end, want prefix of %q", iter, pieces, stops, out.String(), want)
			}
			if stopped {
				break
			}
		}
		out.WriteString(a.finish())
		if out.String() != want || a.text() != want || stopped != wantStop {
			t.Fatalf("%d: pieces %q stops %q: got %q (stopped %v), want %q (%v)", iter, pieces, stops, out.String(), stopped, want, wantStop)
		}
	}
}

func TestTextAssemblerHoldsBackOnlyStopPrefixes(t *testing.T) {
	a := newTextAssembler([]string{"STOP"})
	if a.add("hello S", false) {
		t.Fatal("stopped early")
	}
	if got := a.release(); got != "hello " {
		t.Fatalf("released %q, want the tail \"S\" held back", got)
	}
	if !a.add("TOP", false) || a.release() != "" || a.text() != "hello " {
		t.Fatalf("text %q", a.text())
	}
	b := newTextAssembler(nil)
	b.add("abc", false)
	if got := b.release(); got != "abc" {
		t.Fatalf("no stops: released %q", got)
	}
}

func TestTextAssemblerSpans(t *testing.T) {
	a := newTextAssembler([]string{"END"})
	a.add("héllo ", false) // 6 code points, 7 bytes
	a.add("wör", true)
	a.add("ld", true)
	a.add(" ok ", false)
	a.add("xxEN", true)
	a.add("D!", false)
	a.finish()
	got := a.unverifiedSpans()
	want := [][2]int{{6, 11}, {15, 17}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("spans %v, want %v (text %q)", got, want, a.text())
	}
}

func TestQuantName(t *testing.T) {
	for in, want := range map[string]string{"Q4_K - Medium": "Q4_K_M", "Q5_K - Small": "Q5_K_S", "all F32": "F32", "Q8_0": "Q8_0", "F16": "F16"} {
		if got := quantName(in); got != want {
			t.Errorf("quantName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoneSurrogate(t *testing.T) {
	for in, want := range map[string]int{
		`{"prompt":"caf\u00e9"}`:         -1,
		`{"prompt":"\ud83d\ude00"}`:      -1, // a pair: U+1F600
		`{"prompt":"\\ud800"}`:           -1, // an escaped backslash, then text
		`{"prompt":"\ud800"}`:            11,
		`{"prompt":"x\udc00"}`:           12,
		`{"prompt":"\ud83d\u0041"}`:      11,
		`{"a":"\"","prompt":"\uD800 x"}`: 20,
		`{"prompt":"\ud83d"} `:           11,
	} {
		if got := loneSurrogate([]byte(in)); got != want {
			t.Errorf("loneSurrogate(%s) = %d, want %d", in, got, want)
		}
	}
}
