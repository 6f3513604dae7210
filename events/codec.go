package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sled-project/sled/schemas"
)

// CloudEvents binary-mode header names (NATS protocol binding: attributes
// as "ce-" headers, the data content type as content-type).
const (
	HeaderSpecVersion = "ce-specversion"
	HeaderID          = "ce-id"
	HeaderSource      = "ce-source"
	HeaderType        = "ce-type"
	HeaderTime        = "ce-time"
	HeaderSubject     = "ce-subject"
	HeaderTraceParent = "ce-traceparent" // distributed tracing extension
	HeaderTraceState  = "ce-tracestate"
	HeaderContentType = "content-type"

	SpecVersion = "1.0"
	ContentJSON = "application/json"
)

// Event is a SLED event: CloudEvents attributes and a typed payload.
type Event struct {
	// ID is ce-id. Encode fills a random UUID when empty. A re-publish of the
	// same logical event should keep its ID.
	ID string
	// Source is ce-source, a URI reference naming the producer, e.g.
	// "/sled/device/<id>", "/sled/batcher/<pool>", "/sled/verifier/<worker>".
	Source string
	// Time is ce-time. Encode fills time.Now when zero.
	Time time.Time
	// TraceParent and TraceState are the W3C trace context
	// (ce-traceparent, ce-tracestate), optional. Decode drops a traceparent
	// that is not in W3C format.
	TraceParent string
	TraceState  string
	// Data is the payload: *DraftReady, *VerifyBatch or *VerifyResult.
	Data Payload
}

// New returns an event with the given source and payload; Encode fills the
// id and time.
func New(source string, data Payload) *Event { return &Event{Source: source, Data: data} }

// Type is the event's ce-type, from its payload ("" without one).
func (e *Event) Type() string {
	if e.Data == nil {
		return ""
	}
	return e.Data.EventType()
}

// CloudEvent returns the event's attributes as a CloudEvents SDK event
// (data included), e.g. for logging or other protocol bindings.
func (e *Event) CloudEvent() (ce.Event, error) {
	c := ce.New(ce.CloudEventsVersionV1)
	c.SetID(e.ID)
	c.SetSource(e.Source)
	c.SetType(e.Type())
	if !e.Time.IsZero() {
		c.SetTime(e.Time)
	}
	if e.Data != nil && e.Data.CESubject() != "" {
		c.SetSubject(e.Data.CESubject())
	}
	if e.TraceParent != "" {
		c.SetExtension("traceparent", e.TraceParent)
	}
	if e.TraceState != "" {
		c.SetExtension("tracestate", e.TraceState)
	}
	if e.Data != nil {
		if err := c.SetData(ContentJSON, e.Data); err != nil {
			return c, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	return c, nil
}

// Encode marshals e into a NATS message in CloudEvents binary mode: the
// attributes as ce- headers, the payload as JSON data, the subject from the
// payload. It fills e.ID and e.Time when empty and checks the payload's
// ids and internal consistency (not its JSON Schema; [Decoder.Decode] on the
// receiving side does that). Errors wrap the sentinels of this package.
func Encode(e *Event) (*nats.Msg, error) {
	if e.Data == nil {
		return nil, fmt.Errorf("%w: no payload", ErrInvalid)
	}
	if err := e.Data.check(0); err != nil {
		return nil, err
	}
	data, err := json.Marshal(e.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if e.ID == "" {
		e.ID = uuid.NewString()
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	c := ce.New(ce.CloudEventsVersionV1)
	c.SetID(e.ID)
	c.SetSource(e.Source)
	c.SetType(e.Data.EventType())
	c.SetTime(e.Time)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	m := nats.NewMsg(e.Data.NATSSubject())
	h := m.Header
	h[HeaderSpecVersion] = []string{SpecVersion}
	h[HeaderID] = []string{e.ID}
	h[HeaderSource] = []string{e.Source}
	h[HeaderType] = []string{e.Data.EventType()}
	h[HeaderTime] = []string{e.Time.UTC().Format(time.RFC3339Nano)}
	if s := e.Data.CESubject(); s != "" {
		h[HeaderSubject] = []string{s}
	}
	h[HeaderContentType] = []string{ContentJSON}
	if e.TraceParent != "" {
		h[HeaderTraceParent] = []string{e.TraceParent}
	}
	if e.TraceState != "" {
		h[HeaderTraceState] = []string{e.TraceState}
	}
	m.Data = data
	return m, nil
}

// Limits bounds what a [Decoder] accepts before parsing. Zero fields take the
// defaults.
type Limits struct {
	// DraftBytes bounds draft.ready data (default 128 KiB: a full 8192-token
	// prefix fits).
	DraftBytes int
	// BatchBytes bounds verify.batch data (default 4 MiB; keep it below the
	// server's max_payload).
	BatchBytes int
	// ResultBytes bounds verify.result data (default 16 KiB).
	ResultBytes int
	// HeaderBytes bounds the sum of header names and values (default 8 KiB).
	HeaderBytes int
}

// Default limits.
const (
	DefaultDraftBytes  = 128 << 10
	DefaultBatchBytes  = 4 << 20
	DefaultResultBytes = 16 << 10
	DefaultHeaderBytes = 8 << 10
)

func (l Limits) forType(t string) int {
	pick := func(v, def int) int {
		if v > 0 {
			return v
		}
		return def
	}
	switch t {
	case TypeDraftReady:
		return pick(l.DraftBytes, DefaultDraftBytes)
	case TypeVerifyBatch:
		return pick(l.BatchBytes, DefaultBatchBytes)
	case TypeVerifyResult:
		return pick(l.ResultBytes, DefaultResultBytes)
	}
	return 0
}

// Decoder decodes and validates SLED events. The zero value is ready to use
// with the default limits and no vocabulary check. A Decoder is safe for
// concurrent use; do not change its fields while it is in use.
type Decoder struct {
	// VocabSize, when > 0, is the target vocabulary size: every token id in
	// an event must be below it (else ErrTokenRange).
	VocabSize int
	// Limits bounds sizes; zero fields take the defaults.
	Limits Limits
	// Schema, when set, also validates each payload with the generic JSON
	// Schema validator (against schemas.Structural) before the Go rules that
	// state the same schema (shape.go, rules.go). It makes a decode 3.3-3.7x
	// as costly (BenchmarkCodec) and changes no outcome (FuzzRulesMatchSchema
	// holds the two equal); it is there to check that claim.
	Schema bool
}

// Msg is what Decode needs of a message; jetstream.Msg satisfies it.
type Msg interface {
	Subject() string
	Headers() nats.Header
	Data() []byte
}

// DecodeMsg decodes a core NATS message (see [Decoder.Decode]).
func (d *Decoder) DecodeMsg(m *nats.Msg) (*Event, error) {
	return d.Decode(m.Subject, m.Header, m.Data)
}

// DecodeFrom decodes a message such as a jetstream.Msg (see [Decoder.Decode]).
func (d *Decoder) DecodeFrom(m Msg) (*Event, error) {
	return d.Decode(m.Subject(), m.Headers(), m.Data())
}

// Decode parses a CloudEvents binary-mode message and validates it: the
// attributes (CloudEvents 1.0 rules), the size limits, the JSON Schema of its
// type (checked by Go rules that state it; see [Decoder.Schema]), and the semantic rules of the payload (token ids below VocabSize,
// one draft probability per draft token, prefix consistent with its length
// and hash, ...). When subject is not empty it must be the subject the
// payload routes to (a device can only speak for itself). Errors wrap one of
// the sentinels of this package (see [Reason]).
func (d *Decoder) Decode(subject string, h nats.Header, data []byte) (*Event, error) {
	hb := 0
	for k, vs := range h {
		for _, v := range vs {
			hb += len(k) + len(v)
		}
	}
	if hb > d.headerLimit() {
		return nil, fmt.Errorf("%w: headers are %d bytes, limit %d", ErrTooLarge, hb, d.headerLimit())
	}
	sv := header(h, HeaderSpecVersion)
	switch sv {
	case SpecVersion:
	case "":
		return nil, fmt.Errorf("%w: no %s header", ErrMalformed, HeaderSpecVersion)
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedSpecVersion, truncate(sv, 32))
	}
	typ := header(h, HeaderType)
	if typ == "" {
		return nil, fmt.Errorf("%w: no %s header", ErrMalformed, HeaderType)
	}
	var p Payload
	switch typ {
	case TypeDraftReady:
		p = new(DraftReady)
	case TypeVerifyBatch:
		p = new(VerifyBatch)
	case TypeVerifyResult:
		p = new(VerifyResult)
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, truncate(typ, 64))
	}
	if limit := d.Limits.forType(typ); len(data) > limit {
		return nil, fmt.Errorf("%w: %s data is %d bytes, limit %d", ErrTooLarge, typ, len(data), limit)
	}
	if ct := header(h, HeaderContentType); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != ContentJSON {
			return nil, fmt.Errorf("%w: content-type %q, want %s", ErrMalformed, truncate(ct, 64), ContentJSON)
		}
	}
	ev := &Event{
		ID:     header(h, HeaderID),
		Source: header(h, HeaderSource),
	}
	c := ce.New(ce.CloudEventsVersionV1)
	c.SetID(ev.ID)
	c.SetSource(ev.Source)
	c.SetType(typ)
	if ts := header(h, HeaderTime); ts != "" {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, HeaderTime, err)
		}
		ev.Time = t
		c.SetTime(t)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if tp := header(h, HeaderTraceParent); validTraceParent(tp) {
		ev.TraceParent = tp
		if len(h[HeaderTraceState]) > 0 {
			ev.TraceState = strings.Join(h[HeaderTraceState], ",")
		}
	}

	if err := d.payload(typ, data, p); err != nil {
		return nil, err
	}
	// A draft names its device twice, in its payload and in its ce-source;
	// they must agree (and, on its subject, with the subject: checkRoute).
	if v, ok := p.(*DraftReady); ok && ev.Source != DeviceSource(v.DeviceID) {
		return nil, fmt.Errorf("%w: draft of device %q has source %q, want %q", ErrIdentity, truncate(v.DeviceID, 64), truncate(ev.Source, 128), DeviceSource(v.DeviceID))
	}
	if s := header(h, HeaderSubject); s != "" && s != p.CESubject() {
		return nil, fmt.Errorf("%w: %s %q does not match the payload's %q", ErrInvalid, HeaderSubject, truncate(s, 64), p.CESubject())
	}
	if subject != "" {
		if err := checkRoute(subject, p); err != nil {
			return nil, err
		}
	}
	ev.Data = p
	return ev, nil
}

// payload unmarshals data into p, of type typ, and validates it: the
// schema, then the semantic checks (check.go).
func (d *Decoder) payload(typ string, data []byte, p Payload) error {
	var sh *shape
	switch p.(type) {
	case *DraftReady:
		sh = draftReadyShape
	case *VerifyBatch:
		sh = verifyBatchShape
	case *VerifyResult:
		sh = verifyResultShape
	}
	if d.Schema {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("%w: data: %v", ErrMalformed, err)
		}
		sch, err := schemas.Structural(typ)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnknownType, err)
		}
		if err := sch.Validate(doc); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrSchema, typ, err)
		}
	}
	// The schema, in Go: unmarshalling checks the syntax and the types (any
	// error but a syntax error is the data's shape or format: a schema
	// violation), the scan what the Go value cannot show (keys, nulls,
	// duplicate keys, patterns, the length of date-times), the rules the
	// bounds.
	if err := json.Unmarshal(data, p); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("%w: data: %v", ErrMalformed, err)
		}
		return fmt.Errorf("%w: %s: %v", ErrSchema, typ, err)
	}
	seen, err := scanShape(data, sh)
	if err != nil {
		return fmt.Errorf("%s: %w", typ, err)
	}
	if err := p.rules(seen); err != nil {
		return fmt.Errorf("%s: %w", typ, err)
	}
	return p.check(d.VocabSize)
}

// Decode decodes with a zero [Decoder]: default limits, no vocabulary check.
func Decode(subject string, h nats.Header, data []byte) (*Event, error) {
	var d Decoder
	return d.Decode(subject, h, data)
}

func (d *Decoder) headerLimit() int {
	if d.Limits.HeaderBytes > 0 {
		return d.Limits.HeaderBytes
	}
	return DefaultHeaderBytes
}

// DeviceSource is the ce-source of the events device id publishes:
// /sled/device/<id>.
func DeviceSource(id string) string { return "/sled/device/" + id }

// checkRoute checks that the message arrived on the subject its payload
// routes to, and that a draft is for the device whose subject it is on.
func checkRoute(subject string, p Payload) error {
	switch v := p.(type) {
	case *DraftReady:
		s, err := ParseSubject(subject)
		if err != nil {
			return err
		}
		if s.Kind != KindDraft {
			break
		}
		if s.Device != v.DeviceID || s.Pool != v.Pool {
			return fmt.Errorf("%w: draft for device %q pool %q published on %q, device %q's subject", ErrIdentity, truncate(v.DeviceID, 64), truncate(v.Pool, 64), truncate(subject, 128), s.Device)
		}
		return nil
	case *VerifyBatch:
		// A batch for any worker may be re-routed to a worker subject, never
		// to another pool.
		s, err := ParseSubject(subject)
		if err != nil {
			return err
		}
		if s.Kind != KindBatch || s.Pool != v.Pool || (v.Worker != "" && s.Worker != v.Worker) {
			return fmt.Errorf("%w: batch for pool %q worker %q on subject %q", ErrInvalid, v.Pool, v.Worker, truncate(subject, 128))
		}
		return nil
	}
	if want := p.NATSSubject(); subject != want {
		return fmt.Errorf("%w: %s on subject %q, want %q", ErrInvalid, p.EventType(), truncate(subject, 128), want)
	}
	return nil
}

// header returns the first value of a header, matching its name exactly or,
// failing that, case-insensitively.
func header(h nats.Header, name string) string {
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	for k, vs := range h {
		if len(vs) > 0 && strings.EqualFold(k, name) {
			return vs[0]
		}
	}
	return ""
}

// validTraceParent checks the W3C trace-context format
// version-traceid-parentid-flags (lowercase hex, 2-32-16-2).
func validTraceParent(s string) bool {
	if len(s) != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if i == 2 || i == 35 || i == 52 {
			continue
		}
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s[:2] != "ff" && s[3:35] != strings.Repeat("0", 32) && s[36:52] != strings.Repeat("0", 16)
}
