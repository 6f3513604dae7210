package events

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sled-project/sled/schemas"
)

// checkDecoded is the property every fuzz target checks: a decoded event
// re-encodes, and decoding that again gives the same payload bytes.
func checkDecoded(t *testing.T, dec *Decoder, ev *Event) {
	t.Helper()
	m, err := Encode(ev)
	if err != nil {
		t.Fatalf("decoded event does not re-encode: %v", err)
	}
	ev2, err := dec.DecodeMsg(m)
	if err != nil {
		t.Fatalf("re-encoded event does not decode: %v", err)
	}
	a, _ := json.Marshal(ev.Data)
	b, _ := json.Marshal(ev2.Data)
	if !bytes.Equal(a, b) {
		t.Fatalf("round trip changed payload:\n%s\n%s", a, b)
	}
	// What the decoder accepts and passes on satisfies the full published
	// schema, not only the structural one it validates against.
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	if err := schemas.Validate(ev.Type(), doc); err != nil {
		t.Fatalf("accepted event violates the full schema: %v\n%s", err, m.Data)
	}
}

func fuzzType(f *testing.F, seed Payload, extra ...string) {
	dec := &Decoder{VocabSize: 32000}
	good, err := Encode(New(sourceOf(seed), seed))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good.Data)
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	for _, e := range extra {
		f.Add([]byte(e))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := dec.Decode("", good.Header, data)
		if err != nil {
			if Reason(err) == "internal" {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		checkDecoded(t, dec, ev)
	})
}

func FuzzDecodeDraftReady(f *testing.F) {
	fuzzType(f, sampleDraft("d1", "s1", 1),
		`{"device_id":"d","session_id":"s","round":1,"pool":"p","prefix_len":0,"prefix_hash":"cbf29ce484222325","committed":[],"draft":[],"draft_probs":[],"sampling":{},"vocab_fingerprint":"v","deadline":"2026-01-01T00:00:00Z"}`,
		`{"device_id":"d","session_id":"s","round":1,"pool":"p","prefix_len":1,"prefix_hash":"cbf29ce484222325","committed":[5],"draft":[1e3],"draft_probs":[1],"sampling":{"seed":18446744073709551615},"vocab_fingerprint":"v","deadline":"2026-01-01T00:00:00+01:00","prefix":[5]}`)
}

func FuzzDecodeVerifyBatch(f *testing.F) { fuzzType(f, sampleBatch()) }

func FuzzDecodeVerifyResult(f *testing.F) {
	fuzzType(f, sampleResult(),
		`{"device_id":"d","status":"expired","reason":"expired","error":"x"}`,
		`{"device_id":"d","session_id":"s","round":1,"status":"ok","accepted":0,"token":0,"server_timing":{}}`)
}

// FuzzDecodeHeaders fuzzes the CloudEvents attributes and subject of a valid
// draft.
func FuzzDecodeHeaders(f *testing.F) {
	dec := &Decoder{VocabSize: 32000}
	good, err := Encode(New(DeviceSource("d1"), sampleDraft("d1", "s1", 1)))
	if err != nil {
		f.Fatal(err)
	}
	h := good.Header
	f.Add(good.Subject, h.Get(HeaderSpecVersion), h.Get(HeaderID), h.Get(HeaderSource), h.Get(HeaderType), h.Get(HeaderTime), h.Get(HeaderSubject), h.Get(HeaderContentType), testTrace)
	f.Add("sled.draft.p0.d2", "0.3", "", "::", "io.sled.verify.result.v1", "2026-13-01T00:00:00Z", "s2", "application/json; charset=utf-8", "zz")
	f.Fuzz(func(t *testing.T, subject, sv, id, src, typ, tm, subj, ct, tp string) {
		hd := nats.Header{}
		for k, v := range map[string]string{HeaderSpecVersion: sv, HeaderID: id, HeaderSource: src, HeaderType: typ, HeaderTime: tm, HeaderSubject: subj, HeaderContentType: ct, HeaderTraceParent: tp} {
			if v != "" {
				hd.Set(k, v)
			}
		}
		ev, err := dec.Decode(subject, hd, good.Data)
		if err != nil {
			if Reason(err) == "internal" {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		checkDecoded(t, dec, ev)
	})
}

func FuzzParseSubject(f *testing.F) {
	for _, s := range []string{"sled.draft.p.d", "sled.batch.p", "sled.batch.p.w", "sled.result.d", "sled.dlq.x", "sled..", "sled.draft.p.>", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseSubject(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("%q parses to %+v which formats as %q", s, p, p.String())
		}
	})
}

func FuzzAddressOf(f *testing.F) {
	d := sampleDraft("d1", "s1", 3)
	b := sampleBatch()
	f.Add(d.NATSSubject(), mustJSON(f, d))
	f.Add(b.NATSSubject(), mustJSON(f, b))
	f.Add("sled.batch.p", []byte(`{"drafts":[{"device_id":"x","round":1e300}]}`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		for _, a := range AddressOf(subject, data) {
			if !ValidID(a.DeviceID) || (a.SessionID != "" && !ValidID(a.SessionID)) {
				t.Fatalf("invalid address %+v", a)
			}
		}
	})
}
