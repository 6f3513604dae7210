package bench

import (
	"strings"
	"testing"

	"github.com/sled-project/sled/engine"
)

func TestParsePrompts(t *testing.T) {
	in := "\"plain\"\n\n{\"prompt\": \"two\\nlines\", \"kind\": \"code\"}\n  \"spaced\"  \n"
	ps, err := ParsePrompts(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Prompt{{Text: "plain"}, {Text: "two\nlines", Kind: "code"}, {Text: "spaced"}}
	if len(ps) != len(want) {
		t.Fatalf("got %+v", ps)
	}
	for i := range want {
		if ps[i] != want[i] {
			t.Errorf("prompt %d = %+v, want %+v", i, ps[i], want[i])
		}
	}
	for _, bad := range []string{"plain text\n", "\"ok\"\n{\"prompt\": \"x\", \"extra\": 1}\n", "\"\"\n", "", "[1,2]\n"} {
		if _, err := ParsePrompts(strings.NewReader(bad)); err == nil {
			t.Errorf("ParsePrompts(%q) accepted", bad)
		}
	}
	_, err = ParsePrompts(strings.NewReader("\"a\"\nnope\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error does not name the line: %v", err)
	}
	kinds := map[string]int{}
	for _, p := range DefaultLosslessPrompts() {
		kinds[p.Kind]++
	}
	if kinds["code"] < 3 || kinds["prose"] < 3 {
		t.Errorf("default prompts: %v, want at least 3 code and 3 prose", kinds)
	}
}

func TestCompare(t *testing.T) {
	ref := &Reference{
		Tokens: []engine.Token{10, 11, 12},
		Alts: [][]Alt{
			{{Token: 20, Gap: 3}},
			{{Token: 21, Gap: 0.1}, {Token: 22, Gap: 0.4}, {Token: 23, Gap: 2}},
			{{Token: 24, Gap: 1}},
		},
	}
	cases := []struct {
		name      string
		got       []engine.Token
		first     int
		nearTie   bool
		gotGap    float32
		identical bool
	}{
		{"identical", []engine.Token{10, 11, 12}, -1, false, 0, true},
		{"runner-up at a near-tie", []engine.Token{10, 21, 5}, 1, true, 0.1, false},
		{"third choice still within the bound", []engine.Token{10, 22}, 1, true, 0.4, false},
		{"a runner-up beyond the bound", []engine.Token{10, 23}, 1, false, 2, false},
		{"not a runner-up at all", []engine.Token{99}, 0, false, -1, false},
		{"shorter", []engine.Token{10, 11}, 2, false, -1, false},
		{"longer", []engine.Token{10, 11, 12, 13}, 3, false, -1, false},
	}
	for _, c := range cases {
		d := Compare(ref, c.got)
		if d.FirstDiff != c.first || d.Identical() != c.identical || d.NearTie() != c.nearTie || (!c.identical && d.GotGap != c.gotGap) {
			t.Errorf("%s: %+v (near-tie %v)", c.name, d, d.NearTie())
		}
	}
	if d := Compare(ref, []engine.Token{10, 21}); d.RefToken != 11 || d.GotToken != 21 || d.Gap != 0.1 {
		t.Errorf("diff fields: %+v", d)
	}
}
