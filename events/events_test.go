package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

const testTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func sampleDraft(dev, sess string, round uint64) *DraftReady {
	prefix := []int32{1, 15043, 29892, 920, 526, 366}
	return &DraftReady{
		DeviceID: dev, SessionID: sess, Round: round, Pool: "p0",
		PrefixLen: len(prefix), PrefixHash: PrefixHash(prefix),
		Committed:        prefix[4:],
		Draft:            []int32{2599, 29973, 13, 306, 626, 2599, 1532, 29892},
		DraftProbs:       []float32{0.91, 0.88, 0.97, 0.75, 0.66, 0.93, 0.81, 0.7},
		Sampling:         Sampling{Temperature: 0.7, Seed: 42},
		VocabFingerprint: "llama:32000:abcdef01",
		Deadline:         time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC),
		Prefix:           prefix,
	}
}

func sampleBatch() *VerifyBatch {
	b := &VerifyBatch{BatchID: "b-1", Pool: "p0", Worker: "w1", Policy: "size",
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	for i, dev := range []string{"d1", "d2", "d3", "d4"} {
		d := sampleDraft(dev, "s"+dev, uint64(i+1))
		d.Prefix = nil
		b.Drafts = append(b.Drafts, *d)
	}
	return b
}

func sampleResult() *VerifyResult {
	return &VerifyResult{DeviceID: "d1", SessionID: "sd1", Round: 3, Status: StatusOK, Accepted: 5, Token: 1532,
		ServerTiming: ServerTiming{QueueMs: 0.4, VerifyMs: 12.5, TotalMs: 13.2}, BatchID: "b-1", BatchSize: 4}
}

func samples() []Payload {
	return []Payload{sampleDraft("d1", "sd1", 7), sampleBatch(), sampleResult()}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	for _, p := range samples() {
		t.Run(p.EventType(), func(t *testing.T) {
			ev := New(sourceOf(p), p)
			ev.TraceParent, ev.TraceState = testTrace, "sled=1"
			m, err := Encode(ev)
			if err != nil {
				t.Fatal(err)
			}
			if m.Subject != p.NATSSubject() {
				t.Fatalf("subject %q", m.Subject)
			}
			for _, h := range []string{HeaderSpecVersion, HeaderID, HeaderSource, HeaderType, HeaderTime, HeaderSubject, HeaderContentType, HeaderTraceParent, HeaderTraceState} {
				if m.Header.Get(h) == "" {
					t.Errorf("header %s missing", h)
				}
			}
			got, err := (&Decoder{VocabSize: 32000}).DecodeMsg(m)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != ev.ID || got.Source != ev.Source || !got.Time.Equal(ev.Time) || got.TraceParent != testTrace || got.TraceState != "sled=1" || got.Type() != p.EventType() {
				t.Fatalf("envelope %+v, want %+v", got, ev)
			}
			if a, b := mustJSON(t, got.Data), mustJSON(t, p); !bytes.Equal(a, b) {
				t.Fatalf("payload\n got %s\nwant %s", a, b)
			}
			c, err := got.CloudEvent()
			if err != nil || c.Validate() != nil || c.Type() != p.EventType() {
				t.Fatalf("CloudEvent: %v %v", err, c.Validate())
			}
		})
	}
}

func encodeT(t testing.TB, p Payload) *nats.Msg {
	t.Helper()
	m, err := Encode(New(sourceOf(p), p))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDecodeErrors(t *testing.T) {
	draft := func(f func(d *DraftReady)) *nats.Msg {
		d := sampleDraft("d1", "s1", 1)
		f(d)
		m := nats.NewMsg(d.NATSSubject())
		good := encodeT(t, sampleDraft("d1", "s1", 1))
		m.Header = good.Header
		m.Data = mustJSON(t, d)
		return m
	}
	hdr := func(k, v string) *nats.Msg {
		m := encodeT(t, sampleDraft("d1", "s1", 1))
		if v == "" {
			m.Header.Del(k)
		} else {
			m.Header.Set(k, v)
		}
		return m
	}
	data := func(s string) *nats.Msg {
		m := encodeT(t, sampleDraft("d1", "s1", 1))
		m.Data = []byte(s)
		return m
	}
	cases := []struct {
		name string
		m    *nats.Msg
		want error
	}{
		{"no specversion", hdr(HeaderSpecVersion, ""), ErrMalformed},
		{"specversion 0.3", hdr(HeaderSpecVersion, "0.3"), ErrUnsupportedSpecVersion},
		{"no type", hdr(HeaderType, ""), ErrMalformed},
		{"unknown type", hdr(HeaderType, "io.sled.draft.ready.v9"), ErrUnknownType},
		{"no id", hdr(HeaderID, ""), ErrMalformed},
		{"no source", hdr(HeaderSource, ""), ErrMalformed},
		{"bad time", hdr(HeaderTime, "yesterday"), ErrMalformed},
		{"bad content type", hdr(HeaderContentType, "text/plain"), ErrMalformed},
		{"ce-subject mismatch", hdr(HeaderSubject, "other"), ErrInvalid},
		{"huge header", hdr("x-junk", strings.Repeat("x", 9000)), ErrTooLarge},
		{"not json", data("{nope"), ErrMalformed},
		{"trailing garbage", data(`{} {}`), ErrMalformed},
		{"schema: missing fields", data(`{}`), ErrSchema},
		{"schema: bad id", draft(func(d *DraftReady) { d.SessionID = "a.b" }), ErrSchema},
		{"schema: draft too long", draft(func(d *DraftReady) {
			d.Draft = make([]int32, 65)
			d.DraftProbs = make([]float32, 65)
		}), ErrSchema},
		{"schema: negative token", draft(func(d *DraftReady) { d.Draft[0] = -1 }), ErrSchema},
		{"too large", draft(func(d *DraftReady) { d.VocabFingerprint = strings.Repeat("v", 200<<10) }), ErrTooLarge},
		{"token range", draft(func(d *DraftReady) { d.Draft[0] = 32000 }), ErrTokenRange},
		{"token range in prefix", draft(func(d *DraftReady) { d.Prefix[0] = 99999; d.PrefixHash = PrefixHash(d.Prefix) }), ErrTokenRange},
		{"probs length", draft(func(d *DraftReady) { d.DraftProbs = d.DraftProbs[1:] }), ErrInvalid},
		{"prefix hash", draft(func(d *DraftReady) { d.PrefixHash = "0000000000000000" }), ErrInvalid},
		{"prefix len", draft(func(d *DraftReady) { d.PrefixLen++ }), ErrInvalid},
		{"committed not tail", draft(func(d *DraftReady) { d.Committed = []int32{7, 7} }), ErrInvalid},
	}
	dec := &Decoder{VocabSize: 32000}
	for _, c := range cases {
		_, err := dec.DecodeMsg(c.m)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
		if Reason(err) == "internal" || Reason(err) == "" {
			t.Errorf("%s: reason %q", c.name, Reason(err))
		}
	}
}

// sourceOf is the source a payload's publisher uses: a draft's device's, a
// test's otherwise.
func sourceOf(p Payload) string {
	if d, ok := p.(*DraftReady); ok {
		return DeviceSource(d.DeviceID)
	}
	return "/sled/test"
}

func TestDecodeWrongSubject(t *testing.T) {
	m := encodeT(t, sampleDraft("d1", "s1", 1))
	// Device d2 publishing a draft that claims to be d1's.
	if _, err := Decode(DraftSubject("p0", "d2"), m.Header, m.Data); !errors.Is(err, ErrIdentity) || Reason(err) != "identity" {
		t.Fatalf("spoofed device: %v", err)
	}
	// A draft on its own device's subject whose source names another.
	forged := sampleDraft("d2", "s1", 1)
	fm, err := Encode(New(DeviceSource("d1"), forged))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(DraftSubject("p0", "d2"), fm.Header, fm.Data); !errors.Is(err, ErrIdentity) {
		t.Fatalf("forged source: %v", err)
	}
	b := encodeT(t, sampleBatch())
	if _, err := Decode(BatchSubject("p1", "w1"), b.Header, b.Data); !errors.Is(err, ErrInvalid) {
		t.Fatalf("batch on other pool: %v", err)
	}
	// Empty subject skips the routing check.
	if _, err := Decode("", m.Header, m.Data); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeRejects(t *testing.T) {
	bad := []Payload{
		&DraftReady{DeviceID: "a.b"},
		func() Payload { d := sampleDraft("d", "s", 1); d.DraftProbs = nil; return d }(),
		func() Payload { b := sampleBatch(); b.Drafts[1].SessionID = b.Drafts[0].SessionID; return b }(),
		func() Payload { b := sampleBatch(); b.Drafts[1].Pool = "other"; return b }(),
		&VerifyResult{DeviceID: "d", Status: "weird", Reason: "x"},
		&VerifyResult{DeviceID: "d", Status: StatusOK},
	}
	for i, p := range bad {
		if _, err := Encode(New("/t", p)); err == nil {
			t.Errorf("case %d: encoded an invalid payload", i)
		}
	}
	if _, err := Encode(New("", sampleResult())); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty source: %v", err)
	}
}

func TestErrorResult(t *testing.T) {
	r := ErrorResult(Address{DeviceID: "d1", SessionID: "s1", Round: 4}, StatusInvalid, errors.Join(ErrSchema, errors.New(strings.Repeat("é", 2000))))
	if r.Reason != "schema" || len(r.Error) > 1024 {
		t.Fatalf("reason %q len %d", r.Reason, len(r.Error))
	}
	if _, err := Decode("", encodeT(t, r).Header, encodeT(t, r).Data); err != nil {
		t.Fatal(err)
	}
	if r := ErrorResult(Address{DeviceID: "d1"}, StatusExpired, nil); r.Reason != "expired" {
		t.Fatalf("expired reason %q", r.Reason)
	}
}

func TestSubjects(t *testing.T) {
	for _, s := range []string{"sled.draft.p.d", "sled.batch.p", "sled.batch.p.w", "sled.result.d", "sled.dlq.schema"} {
		p, err := ParseSubject(s)
		if err != nil || p.String() != s {
			t.Errorf("%s: %+v %v", s, p, err)
		}
	}
	for _, s := range []string{"", "sled", "sled.draft.p", "sled.draft.p.d.x", "sled.draft.*.d", "sled.draft.p.>", "x.draft.p.d", "sled.nope.p", "sled.result.a b", "sled.batch.p.w.x", "sled.result." + strings.Repeat("a", 65)} {
		if _, err := ParseSubject(s); !errors.Is(err, ErrBadSubject) {
			t.Errorf("%q: %v", s, err)
		}
	}
}

func TestAddressOf(t *testing.T) {
	d := sampleDraft("d1", "s1", 9)
	got := AddressOf(d.NATSSubject(), mustJSON(t, d))
	if len(got) != 1 || got[0] != (Address{"d1", "s1", 9}) {
		t.Fatalf("draft: %+v", got)
	}
	// The subject names the device, whatever the payload claims.
	got = AddressOf(DraftSubject("p0", "d2"), []byte(`{"device_id":"d1","session_id":"bad id","round":-1}`))
	if len(got) != 1 || got[0] != (Address{DeviceID: "d2"}) {
		t.Fatalf("spoof: %+v", got)
	}
	b := sampleBatch()
	if got := AddressOf(b.NATSSubject(), mustJSON(t, b)); len(got) != 4 || got[3].DeviceID != "d4" {
		t.Fatalf("batch: %+v", got)
	}
	if got := AddressOf(ResultSubject("d1"), nil); got != nil {
		t.Fatalf("result: %+v", got)
	}
}

func TestPrefixHash(t *testing.T) {
	if got := PrefixHash(nil); got != "cbf29ce484222325" {
		t.Fatalf("empty hash %s", got)
	}
	toks := []int32{1, 2, 3, 1 << 20, 31999}
	h := NewPrefixHasher()
	h.Write(toks[:2]...)
	fork := h
	h.Write(toks[2:]...)
	if h.Sum() != PrefixHash(toks) || h.Len() != 5 || fork.Sum() != PrefixHash(toks[:2]) {
		t.Fatal("incremental hash differs")
	}
	if PrefixHash([]int32{1, 2}) == PrefixHash([]int32{2, 1}) {
		t.Fatal("order-insensitive")
	}
}

// Sampling parameters the system does not apply (and out-of-range ones) are
// refused, not ignored.
func TestSamplingUnsupportedRefused(t *testing.T) {
	for _, field := range []string{`"top_k":40`, `"top_p":1.5`, `"min_p":0.1`, `"mode":"beam"`, `"mode":""`} {
		m := encodeT(t, sampleDraft("d1", "s1", 1))
		data := strings.Replace(string(m.Data), `"sampling":{`, `"sampling":{`+field+`,`, 1)
		if data == string(m.Data) {
			t.Fatalf("sample draft has no sampling object: %s", m.Data)
		}
		if _, err := Decode(m.Subject, m.Header, []byte(data)); !errors.Is(err, ErrSchema) {
			t.Errorf("sampling with %s: %v, want ErrSchema", field, err)
		}
	}
}

// Both sampling modes are carried.
func TestSamplingModes(t *testing.T) {
	for _, mode := range []string{SamplingCoupled, SamplingRejection} {
		d := sampleDraft("d1", "s1", 1)
		d.Sampling.Mode = mode
		m := encodeT(t, d)
		got, err := Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("mode %s: %v", mode, err)
		}
		if g := got.Data.(*DraftReady).Sampling.Mode; g != mode {
			t.Errorf("mode %s decoded as %q", mode, g)
		}
	}
}

// top_p is carried; logprobs are asked for in a draft and returned, aligned with
// the round's output, in its result; inconsistent figures are refused.
func TestLogprobsAndTopP(t *testing.T) {
	d := sampleDraft("d1", "s1", 1)
	d.Sampling = Sampling{Temperature: 0.7, TopP: 0.9, Seed: 3}
	d.Logprobs, d.TopLogprobs = true, 2
	m := encodeT(t, d)
	e, err := Decode(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	got := e.Data.(*DraftReady)
	if got.Sampling != d.Sampling || !got.Logprobs || got.TopLogprobs != 2 {
		t.Fatalf("round trip lost fields: %+v %v %d", got.Sampling, got.Logprobs, got.TopLogprobs)
	}
	bad := *d
	bad.TopLogprobs = MaxTopLogprobs + 1
	if _, err := Encode(New("test", &bad)); !errors.Is(err, ErrInvalid) {
		t.Errorf("top_logprobs %d: %v, want ErrInvalid", bad.TopLogprobs, err)
	}
	bad.Logprobs, bad.TopLogprobs = false, 1
	if _, err := Encode(New("test", &bad)); !errors.Is(err, ErrInvalid) {
		t.Errorf("top_logprobs without logprobs: %v, want ErrInvalid", err)
	}

	r := &VerifyResult{DeviceID: "d1", SessionID: "s1", Round: 1, Status: StatusOK, Accepted: 1, Token: 5,
		Logprobs: []TokenLogprob{{Logprob: -0.1, Top: []TopLogprob{{Token: 4, Logprob: -0.1}}}, {Logprob: -2}}}
	m = encodeT(t, r)
	e, err = Decode(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if lp := e.Data.(*VerifyResult).Logprobs; len(lp) != 2 || lp[0].Top[0].Token != 4 || lp[1].Logprob != -2 {
		t.Fatalf("result logprobs after round trip: %+v", lp)
	}
	short := *r
	short.Logprobs = r.Logprobs[:1]
	if _, err := Encode(New("test", &short)); !errors.Is(err, ErrInvalid) {
		t.Errorf("1 logprob for 2 output tokens: %v, want ErrInvalid", err)
	}
	pos := *r
	pos.Logprobs = []TokenLogprob{{Logprob: 0.5}, {Logprob: -1}}
	if _, err := Encode(New("test", &pos)); err == nil {
		t.Error("a positive logprob was accepted")
	}
}

func TestSubjectTemplate(t *testing.T) {
	for subject, want := range map[string]string{
		DraftSubject("p1", "dev-7"):        "sled.draft.{pool}.{device}",
		ResultSubject("dev-7"):             "sled.result.{device}",
		BatchSubject("p1", ""):             "sled.batch.{pool}",
		BatchSubject("p1", "w2"):           "sled.batch.{pool}.{worker}",
		HeartbeatSubject("p1", "w2"):       "sled.hb.{pool}.{worker}",
		"sled.dlq.schema":                  "sled.dlq.{reason}",
		"$JS.API.STREAM.INFO.SLED_RESULTS": "$JS.API.STREAM.INFO.SLED_RESULTS",
	} {
		if got := SubjectTemplate(subject); got != want {
			t.Errorf("SubjectTemplate(%q) = %q, want %q", subject, got, want)
		}
	}
}
