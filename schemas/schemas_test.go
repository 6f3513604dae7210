package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

func TestAllCompile(t *testing.T) {
	want := []string{DraftReadyV1, VerifyBatchV1, VerifyResultV1}
	if got := Types(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Types() = %v, want %v", got, want)
	}
	for _, typ := range want {
		if _, err := Compiled(typ); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		raw, _ := Raw(typ)
		var doc struct {
			ID    string `json:"$id"`
			Title string `json:"title"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		if doc.ID != BaseURL+typ+".json" || doc.Title != typ {
			t.Errorf("%s: $id %q title %q do not name the type", typ, doc.ID, doc.Title)
		}
	}
	if _, err := Compiled("io.sled.nope.v1"); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("unknown type: %v", err)
	}
}

// TestLimitsMatchConstants keeps the Go constants in step with the JSON.
func TestLimitsMatchConstants(t *testing.T) {
	var d struct {
		Properties map[string]struct {
			MaxItems int    `json:"maxItems"`
			Maximum  int64  `json:"maximum"`
			Pattern  string `json:"pattern"`
		} `json:"properties"`
		Defs map[string]struct {
			Pattern string `json:"pattern"`
		} `json:"$defs"`
	}
	raw, _ := Raw(DraftReadyV1)
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	p := d.Properties
	checks := []struct {
		name      string
		got, want int64
	}{
		{"draft", int64(p["draft"].MaxItems), MaxDraftTokens},
		{"draft_probs", int64(p["draft_probs"].MaxItems), MaxDraftTokens},
		{"committed", int64(p["committed"].MaxItems), MaxCommittedTokens},
		{"prefix", int64(p["prefix"].MaxItems), MaxPrefixTokens},
		{"prefix_len", p["prefix_len"].Maximum, MaxPrefixTokens},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s limit: schema %d, constant %d", c.name, c.got, c.want)
		}
	}
	if d.Defs["id"].Pattern != IDPattern {
		t.Errorf("id pattern %q != IDPattern %q", d.Defs["id"].Pattern, IDPattern)
	}
}

func TestValidate(t *testing.T) {
	good := `{"device_id":"d1","session_id":"s1","round":1,"pool":"p","prefix_len":3,"prefix_hash":"0123456789abcdef",
	"committed":[1],"draft":[2,3],"draft_probs":[0.5,0.9],"sampling":{"temperature":0,"seed":18446744073709551615},
	"vocab_fingerprint":"v1:abc","deadline":"2026-01-02T03:04:05Z"}`
	cases := []struct {
		name string
		typ  string
		doc  string
		ok   bool
	}{
		{"draft ok", DraftReadyV1, good, true},
		{"bad id", DraftReadyV1, strings.Replace(good, `"d1"`, `"d.1"`, 1), false},
		{"neg token", DraftReadyV1, strings.Replace(good, `[2,3]`, `[2,-3]`, 1), false},
		{"bad deadline", DraftReadyV1, strings.Replace(good, `2026-01-02T03:04:05Z`, `tomorrow`, 1), false},
		{"extra field", DraftReadyV1, strings.Replace(good, `"round":1`, `"round":1,"x":1`, 1), false},
		{"round 0", DraftReadyV1, strings.Replace(good, `"round":1`, `"round":0`, 1), false},
		{"result ok", VerifyResultV1, `{"device_id":"d","session_id":"s","round":2,"status":"ok","accepted":3,"token":7}`, true},
		{"result ok missing token", VerifyResultV1, `{"device_id":"d","session_id":"s","round":2,"status":"ok","accepted":3}`, false},
		{"result error", VerifyResultV1, `{"device_id":"d","status":"invalid","reason":"schema","error":"x"}`, true},
		{"result error no reason", VerifyResultV1, `{"device_id":"d","status":"expired"}`, false},
		{"batch ok", VerifyBatchV1, `{"batch_id":"b","pool":"p","policy":"size","created_at":"2026-01-02T03:04:05Z","drafts":[` + good + `]}`, true},
		{"batch empty", VerifyBatchV1, `{"batch_id":"b","pool":"p","policy":"size","created_at":"2026-01-02T03:04:05Z","drafts":[]}`, false},
		{"batch bad draft", VerifyBatchV1, `{"batch_id":"b","pool":"p","policy":"size","created_at":"2026-01-02T03:04:05Z","drafts":[{}]}`, false},
	}
	for _, c := range cases {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader([]byte(c.doc)))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		err = Validate(c.typ, v)
		if (err == nil) != c.ok {
			t.Errorf("%s: err = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

func TestStructural(t *testing.T) {
	doc := `{"device_id":"d1","session_id":"s1","round":1,"pool":"p","prefix_len":3,"prefix_hash":"0123456789abcdef",
	"committed":[1],"draft":[2.5,-3],"draft_probs":[1.5,0.9],"sampling":{},"vocab_fingerprint":"v","deadline":"2026-01-02T03:04:05Z"}`
	v, _ := jsonschema.UnmarshalJSON(strings.NewReader(doc))
	if Validate(DraftReadyV1, v) == nil {
		t.Fatal("full schema accepts out-of-range elements")
	}
	s, err := Structural(DraftReadyV1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(v); err != nil {
		t.Fatalf("structural schema checks elements: %v", err)
	}
	bad, _ := jsonschema.UnmarshalJSON(strings.NewReader(`{"device_id":"d1"}`))
	if s.Validate(bad) == nil {
		t.Fatal("structural schema lost required fields")
	}
	for _, typ := range Types() {
		if _, err := Structural(typ); err != nil {
			t.Fatal(err)
		}
	}
}
