package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sled-project/sled/schemas"
)

// schemaDecode is how Decode validated a payload before the Go rules: the
// generic validator against schemas.Structural, then unmarshalling and the
// semantic checks. The Go rules must accept exactly what it accepts.
func schemaDecode(typ string, data []byte, p Payload) error {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	sch, err := schemas.Structural(typ)
	if err != nil {
		return err
	}
	if err := sch.Validate(doc); err != nil {
		return fmt.Errorf("%w: %v", ErrSchema, err)
	}
	if err := json.Unmarshal(data, p); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return p.check(32000)
}

// duplicateKeys reports whether some object of data (well-formed JSON) holds
// a key twice: the Go rules refuse those, where the generic validator judged
// the last value and the unmarshaller merged them.
func duplicateKeys(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		top := func() *frame {
			if len(stack) == 0 {
				return nil
			}
			return stack[len(stack)-1]
		}
		f := top()
		if s, ok := tok.(string); ok && f != nil && f.obj && f.key {
			if f.keys[s] {
				return true
			}
			f.keys[s] = true
			f.key = false
			continue
		}
		if f != nil && f.obj {
			f.key = true // a value ends (or opens, below): a key comes next
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, key: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if f := top(); f != nil && f.obj {
				f.key = true
			}
		}
	}
}

func newPayload(typ string) Payload {
	switch typ {
	case TypeDraftReady:
		return new(DraftReady)
	case TypeVerifyBatch:
		return new(VerifyBatch)
	}
	return new(VerifyResult)
}

// matchSchema checks Decode (the Go rules) against schemaDecode on one
// payload: both accept with the same value or both refuse, and a payload with
// a key twice is refused.
func matchSchema(t *testing.T, typ string, data []byte) {
	t.Helper()
	dec := &Decoder{VocabSize: 32000}
	p := newPayload(typ)
	err := dec.payload(typ, data, p)
	if err != nil && Reason(err) == "internal" {
		t.Fatalf("untyped error: %v", err)
	}
	old := newPayload(typ)
	oldErr := schemaDecode(typ, data, old)
	if json.Valid(data) && duplicateKeys(data) {
		if err == nil {
			t.Fatalf("a payload with a key twice was accepted: %s", data)
		}
		return
	}
	switch {
	case err == nil && oldErr != nil:
		t.Fatalf("the Go rules accept what the schema refuses (%v): %s", oldErr, data)
	case err != nil && oldErr == nil:
		t.Fatalf("the Go rules refuse what the schema accepts (%v): %s", err, data)
	case err == nil:
		a, _ := json.Marshal(p)
		b, _ := json.Marshal(old)
		if !bytes.Equal(a, b) {
			t.Fatalf("values differ:\n%s\n%s", a, b)
		}
	case errors.Is(oldErr, ErrSchema) && !errors.Is(err, ErrSchema):
		t.Fatalf("schema violation reported as %v: %s", err, data)
	}
}

func fuzzRules(f *testing.F, seed Payload, extra ...string) {
	f.Add(mustJSON(f, seed))
	for _, e := range append(extra, `{}`, `null`, `[]`, `""`, `1`) {
		f.Add([]byte(e))
	}
	f.Fuzz(func(t *testing.T, data []byte) { matchSchema(t, seed.EventType(), data) })
}

// The Go rules accept exactly what the generic JSON Schema validator with
// schemas.Structural accepted (with the same value), and refuse a key twice.
//
// A verify.batch seed is 1.5 KB and each run takes the old validator's
// millisecond, so minimizing a new input takes minutes and reads as a stall
// ("execs" stops growing); fuzz it with -fuzzminimizetime 2s.
func FuzzRulesMatchSchemaDraftReady(f *testing.F) {
	fuzzRules(f, sampleDraft("d1", "s1", 1), ruleCases(TypeDraftReady)...)
}

func FuzzRulesMatchSchemaVerifyBatch(f *testing.F) {
	fuzzRules(f, sampleBatch(), ruleCases(TypeVerifyBatch)...)
}

func FuzzRulesMatchSchemaVerifyResult(f *testing.F) {
	fuzzRules(f, sampleResult(), ruleCases(TypeVerifyResult)...)
}

// ruleCases are payloads at the edge of each rule of a type's schema: one
// edit of the sample each.
func ruleCases(typ string) []string {
	var base string
	var edits [][2]string
	switch typ {
	case TypeDraftReady:
		d := sampleDraft("d1", "s1", 1)
		d.Draft, d.DraftProbs = d.Draft[:2], d.DraftProbs[:2]
		d.TopK = []TopK{{IDs: []int32{5}, Probs: []float32{0.5}}, {IDs: []int32{6}, Probs: []float32{0.5}}}
		d.TraceParent = testTrace
		d.TraceState = "k=v"
		b, _ := json.Marshal(d)
		base = string(b)
		edits = [][2]string{
			{`"device_id":"d1"`, `"device_id":"d.1"`},
			{`"device_id":"d1"`, `"DEVICE_ID":"d1"`},
			{`"device_id":"d1"`, `"device_id":"d1","device_id":"d1"`},
			{`"device_id":"d1"`, `"device\u005fid":"d1"`},
			{`"device_id":"d1"`, `"device_id":null`},
			{`"round":1`, `"round":0`},
			{`"round":1`, `"round":9007199254740991`},
			{`"round":1`, `"round":9007199254740992`},
			{`"round":1`, `"round":1.0`},
			{`"round":1`, `"round":"1"`},
			{`"prefix_hash":"`, `"prefix_hash":"A`},
			{`"sampling":{`, `"sampling":{"temperature":100.5,`},
			{`"sampling":{`, `"sampling":{"temperature":100,`},
			{`"sampling":{`, `"sampling":{"mode":"",`},
			{`"sampling":{`, `"sampling":{"mode":"coupled",`},
			{`"sampling":{`, `"sampling":{"seed":-1,`},
			{`"sampling":{`, `"sampling":{"Top_P":0.5,`},
			{`"vocab_fingerprint":"`, `"vocab_fingerprint":"a b`},
			{`"vocab_fingerprint":"`, `"vocab_fingerprint":"` + strings.Repeat("v", 128)},
			// deadline takes the value tried, due the sample's deadline
			{`"deadline":"`, `"deadline":"2026-01-01T00:00:00.` + strings.Repeat("1", 40) + `Z","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01T00:00:00.` + strings.Repeat("1", 44) + `Z","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01T00:00:00.` + strings.Repeat("1", 45) + `Z","due":"`},
			{`"deadline":"`, `"deadline":"2026-02-30T00:00:00Z","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01t00:00:00z","due":"`},
			{`"deadline":"`, `"deadline":"2026-12-31T23:59:60Z","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01T00:00:00+24:00","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01T00:00:00+23:59","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01 00:00:00Z","due":"`},
			{`"deadline":"`, `"deadline":"0000-01-01T00:00:00Z","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01T00:00:00\u005a","due":"`},
			{`"deadline":"`, `"deadline":"2026-01-01T00:00:00.Z","due":"`},
			{`"deadline":"`, `"tpot_ms":1000001,"deadline":"`},
			{`"deadline":"`, `"server_rounds":1025,"deadline":"`},
			{`"deadline":"`, `"top_logprobs":21,"logprobs":true,"deadline":"`},
			{`"deadline":"`, `"end":1,"deadline":"`},
			{`"traceparent":"00`, `"traceparent":"0G`},
			{`"traceparent":"` + testTrace + `"`, `"traceparent":""`},
			{`"tracestate":"k=v"`, `"tracestate":"` + strings.Repeat("é", 300) + `"`},
			{`"prefix":[`, `"prefix":[],"x":[`},
			{`"committed":[`, `"committed":[` + strings.Repeat("1,", 1024)},
			{`"top_k":[`, `"top_k":[{"ids":[],"probs":[]},`},
			{`"top_k":[`, `"top_k":[{"ids":[1],"probs":[0.5],"p":1},`},
			{`"draft":[`, `"draft":[1.5,`},
			{`"draft":[`, `"draft":[1e3,`},
		}
	case TypeVerifyBatch:
		b, _ := json.Marshal(sampleBatch())
		base = string(b)
		edits = [][2]string{
			{`"policy":"size"`, `"policy":"Size"`},
			{`"policy":"size"`, `"policy":""`},
			{`"worker":"w1"`, `"worker":""`},
			{`"created_at":"`, `"created_at":"x`},
			{`"drafts":[`, `"drafts":[],"x":[`},
			{`"drafts":[{`, `"drafts":[null,{`},
			{`"drafts":[{`, `"drafts":[{"extra":1,`},
			{`"round":`, `"round":0,"x":`},
			{`"sampling":{`, `"sampling":{"temperature":-1,`},
		}
	case TypeVerifyResult:
		budget := 3
		r := sampleResult()
		r.DraftBudget = &budget
		r.Logprobs = make([]TokenLogprob, r.Accepted+1)
		r.Logprobs[0].Top = []TopLogprob{{Token: 4, Logprob: -1}}
		b, _ := json.Marshal(r)
		base = string(b)
		edits = [][2]string{
			{`"status":"ok"`, `"status":"OK"`},
			{`"status":"ok"`, `"status":"expired"`},
			{`"status":"ok"`, `"status":"expired","reason":""`},
			{`"status":"ok"`, `"status":"expired","reason":"x","accepted":65,"y":0`},
			{`"round":3`, `"round":0`},
			{`"token":1532`, `"token":-1`},
			{`"token":1532,`, ``},
			{`"draft_budget":3`, `"draft_budget":65`},
			{`"batch_size":4`, `"batch_size":257`},
			{`"queue_ms":0.4`, `"queue_ms":-0.4`},
			{`"server_timing":{`, `"server_timing":{"x":1,`},
			{`"device_id":"d1"`, `"device_id":"d1","reason":"","error":"` + strings.Repeat("é", 1000) + `"`},
			{`"device_id":"d1"`, `"device_id":"d1","error":"` + strings.Repeat("é", 1025) + `"`},
			{`"top":[{"token":4,"logprob":-1}]`, `"top":[{"token":4,"logprob":1}]`},
			{`"top":[{"token":4,"logprob":-1}]`, `"top":[{"token":4}]`},
			{`"logprob":0,`, `"logprob":1,`},
			{`"logprob":0,`, `"logprob":-1e300,`},
		}
	}
	out := []string{base}
	for _, e := range edits {
		if !strings.Contains(base, e[0]) {
			panic(fmt.Sprintf("rule case %q not in %s", e[0], base))
		}
		out = append(out, strings.Replace(base, e[0], e[1], 1))
	}
	return out
}

// Every rule case agrees with the schema (the fuzz targets' seeds, run as a
// test).
func TestRulesMatchSchema(t *testing.T) {
	for _, typ := range []string{TypeDraftReady, TypeVerifyBatch, TypeVerifyResult} {
		for _, data := range ruleCases(typ) {
			matchSchema(t, typ, []byte(data))
		}
	}
}

// A payload with a key twice is refused, where the schema validator judged
// one value and the unmarshaller used another.
func TestRulesRefuseDuplicateKeys(t *testing.T) {
	m := encodeT(t, sampleDraft("d1", "s1", 1))
	data := strings.Replace(string(m.Data), `"sampling":{`, `"sampling":{"mode":"beam"},"sampling":{`, 1)
	if _, err := Decode(m.Subject, m.Header, []byte(data)); !errors.Is(err, ErrSchema) {
		t.Fatalf("duplicate sampling: %v, want ErrSchema", err)
	}
	if !duplicateKeys([]byte(data)) || duplicateKeys(m.Data) {
		t.Fatal("duplicateKeys is wrong")
	}
}

// Each shape names exactly the keys, and the required keys, of its object in
// the published schema, at every depth: a field added to a schema and not to
// its shape (or the reverse) fails here, not in production.
func TestShapesMatchSchemaKeys(t *testing.T) {
	docs := map[string]map[string]any{}
	for _, typ := range schemas.Types() {
		raw, err := schemas.Raw(typ)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		docs[doc["$id"].(string)] = doc
	}
	// resolve follows a node's $ref, local ("#/$defs/x") or to another file.
	resolve := func(doc, node map[string]any) (map[string]any, map[string]any) {
		ref, ok := node["$ref"].(string)
		if !ok {
			return doc, node
		}
		if name, ok := strings.CutPrefix(ref, "#/$defs/"); ok {
			return doc, doc["$defs"].(map[string]any)[name].(map[string]any)
		}
		d := docs[ref]
		if d == nil {
			t.Fatalf("unresolved $ref %q", ref)
		}
		return d, d
	}
	var walk func(path string, doc, node map[string]any, s *shape)
	walk = func(path string, doc, node map[string]any, s *shape) {
		doc, node = resolve(doc, node)
		if items, ok := node["items"].(map[string]any); ok {
			idoc, inode := resolve(doc, items)
			if _, isObj := inode["properties"]; isObj {
				if s == nil || s.elem == nil {
					t.Errorf("%s: the schema has an array of objects, the shape no element shape", path)
					return
				}
				walk(path+"[]", idoc, inode, s.elem)
			}
			return
		}
		props, ok := node["properties"].(map[string]any)
		if !ok {
			return
		}
		if s == nil {
			t.Errorf("%s: the schema has an object, the shape none", path)
			return
		}
		var keys []string
		for k := range props {
			keys = append(keys, k)
		}
		var req []string
		r, _ := node["required"].([]any)
		for _, k := range r {
			req = append(req, k.(string))
		}
		var shapeReq []string
		for i, k := range s.keys {
			if s.required&(1<<i) != 0 {
				shapeReq = append(shapeReq, k)
			}
		}
		slices.Sort(keys)
		slices.Sort(req)
		slices.Sort(shapeReq)
		if got := slices.Sorted(slices.Values(s.keys)); !slices.Equal(got, keys) {
			t.Errorf("%s: shape keys %v, schema properties %v", path, got, keys)
		}
		if !slices.Equal(shapeReq, req) {
			t.Errorf("%s: shape requires %v, schema %v", path, shapeReq, req)
		}
		for i, k := range s.keys {
			if sub, ok := props[k].(map[string]any); ok {
				walk(path+"."+k, doc, sub, s.fields[i])
			}
		}
	}
	for typ, s := range map[string]*shape{
		TypeDraftReady: draftReadyShape, TypeVerifyBatch: verifyBatchShape, TypeVerifyResult: verifyResultShape,
	} {
		doc := docs["https://sled.dev/schemas/"+typ+".json"]
		if doc == nil {
			t.Fatalf("no schema for %s", typ)
		}
		walk(typ, doc, doc, s)
	}
}
