package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sled-project/sled/schemas"
)

// The shape of a payload is the part of its JSON Schema that Go's
// unmarshalling cannot see in the Go value: which keys an object may hold
// (exactly, where encoding/json matches keys case-insensitively and ignores
// unknown ones), which it must hold, that no value is null (no schema allows
// one; encoding/json leaves a field untouched by null) and that no key occurs
// twice in an object (the schema validator and the unmarshaller would
// otherwise judge different values), and the length limits of strings whose
// Go value loses their text (date-times). The rest of each schema (types,
// bounds, patterns, array lengths) is checked on the Go value by the rules
// in rules.go. Together they accept exactly what schemas.Structural and the
// unmarshaller accept together (FuzzRulesMatchSchema).

// shape describes the JSON value expected at a place in a payload.
type shape struct {
	// keys, for an object, lists its allowed keys in order; required is the
	// bit set of the indices of those it must hold; fields[i] is the shape
	// of key i's value (nil: a scalar with no further rule).
	keys     []string
	required uint64
	fields   []*shape
	// elem, for an array, is the shape of its elements.
	elem *shape
	// maxRunes, for a string, bounds its length in characters; valid, when
	// set, is the rest of its rule (a pattern or an enum of the schema), on
	// the decoded text, and want says what it wants.
	maxRunes int
	valid    func([]byte) bool
	want     string
}

// object builds an object shape from key/shape pairs; a key starting with
// '!' is required.
func object(kv ...any) *shape {
	s := &shape{}
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		if k[0] == '!' {
			k = k[1:]
			s.required |= 1 << len(s.keys)
		}
		s.keys = append(s.keys, k)
		f, _ := kv[i+1].(*shape)
		s.fields = append(s.fields, f)
	}
	if len(s.keys) > 64 {
		panic("events: object shape with more than 64 keys")
	}
	return s
}

func arrayOf(elem *shape) *shape { return &shape{elem: elem} }

// dateTime is a schema's {"type": "string", "format": "date-time",
// "maxLength": 64}. Unmarshalling into time.Time parses RFC 3339 too, but
// not quite the same set (it takes an offset of +24:00, the validator does
// not; the validator takes a leap second, time does not): both must accept.
var dateTime = &shape{maxRunes: 64, valid: func(b []byte) bool { return validDateTime(string(b)) }, want: "an RFC 3339 date-time"}

// Strings with a pattern or an enum.
var (
	idString     = &shape{valid: func(b []byte) bool { return chars(b, 1, 64, idChar) }, want: "an id ^[A-Za-z0-9_-]{1,64}$"}
	hashString   = &shape{valid: func(b []byte) bool { return chars(b, 16, 16, lowerHex) }, want: "16 lowercase hex digits"}
	vocabString  = &shape{valid: func(b []byte) bool { return chars(b, 1, 128, vocabChar) }, want: "a fingerprint ^[A-Za-z0-9_:.-]{1,128}$"}
	traceString  = &shape{valid: traceShape, want: "a traceparent ^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"}
	reasonString = &shape{valid: func(b []byte) bool { return validReason(string(b)) }, want: "a code ^[a-z][a-z0-9_]{0,31}$"}
	modeString   = enum(SamplingCoupled, SamplingRejection)
	statusString = enum(string(StatusOK), string(StatusUnknownSession), string(StatusPrefixMismatch),
		string(StatusInvalid), string(StatusOverloaded), string(StatusExpired))
)

var (
	topKShape       = object("!ids", nil, "!probs", nil)
	samplingShape   = object("temperature", nil, "top_p", nil, "seed", nil, "mode", modeString)
	draftReadyShape = object(
		"!device_id", idString, "!session_id", idString, "!round", nil, "!pool", idString,
		"!prefix_len", nil, "!prefix_hash", hashString, "!committed", nil, "!draft", nil,
		"!draft_probs", nil, "top_k", arrayOf(topKShape), "!sampling", samplingShape,
		"logprobs", nil, "top_logprobs", nil, "!vocab_fingerprint", vocabString, "!deadline", dateTime,
		"tpot_ms", nil, "end", nil, "server_rounds", nil, "due", dateTime, "prefix", nil,
		"traceparent", traceString, "tracestate", &shape{maxRunes: 512})
	verifyBatchShape = object("!batch_id", idString, "!pool", idString, "worker", idString,
		"!policy", &shape{valid: func(b []byte) bool { return validReason(string(b)) }, want: "a policy ^[a-z][a-z0-9_]{0,31}$"},
		"!drafts", arrayOf(draftReadyShape), "!created_at", dateTime)
	verifyResultShape = object("!device_id", idString, "session_id", idString, "round", nil, "!status", statusString,
		"accepted", nil, "token", nil, "eos", nil, "reason", reasonString, "error", &shape{maxRunes: schemas.MaxErrorLen},
		"server_timing", object("queue_ms", nil, "batch_ms", nil, "verify_ms", nil, "total_ms", nil),
		"batch_id", idString, "batch_size", nil, "draft_budget", nil, "server_next", nil,
		"logprobs", arrayOf(object("!logprob", nil, "top", arrayOf(object("!token", nil, "!logprob", nil)))))
)

func enum(vals ...string) *shape {
	return &shape{valid: func(b []byte) bool { return slices.Contains(vals, string(b)) }, want: "one of " + strings.Join(vals, ", ")}
}

func chars(b []byte, lo, hi int, ok func(byte) bool) bool {
	if len(b) < lo || len(b) > hi {
		return false
	}
	for _, c := range b {
		if !ok(c) {
			return false
		}
	}
	return true
}

func idChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func vocabChar(c byte) bool { return idChar(c) || c == ':' || c == '.' }

func lowerHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

// traceShape is the schema's traceparent pattern (validTraceParent, checked
// after it, also refuses the values W3C reserves).
func traceShape(b []byte) bool {
	if len(b) != 55 {
		return false
	}
	for i, c := range b {
		if i == 2 || i == 35 || i == 52 {
			if c != '-' {
				return false
			}
		} else if !lowerHex(c) {
			return false
		}
	}
	return true
}

// Top-level keys of verify.result whose presence its rules need (the
// schema's if/then/else on status).
var resultKey = func() map[string]uint64 {
	m := map[string]uint64{}
	for i, k := range verifyResultShape.keys {
		m[k] = 1 << i
	}
	return m
}()

// scanShape checks data, a well-formed JSON text (encoding/json has
// unmarshalled it without error), against s, and returns the set of s's keys
// present at the top level. Errors wrap ErrSchema.
func scanShape(data []byte, s *shape) (uint64, error) {
	sc := scanner{data: data}
	sc.ws()
	seen, err := sc.value(s)
	if err != nil {
		return 0, err
	}
	return seen, nil
}

// shapeError is a scan's finding; the path is built on the way out, so that
// a valid payload costs no path text.
type shapeError struct {
	path, msg string
}

func (e *shapeError) Error() string {
	p := strings.TrimPrefix(e.path, ".")
	if p == "" {
		p = "data"
	}
	return ErrSchema.Error() + ": " + p + " " + e.msg
}

func (e *shapeError) Unwrap() error { return ErrSchema }

func within(err error, step string) error {
	if e, ok := err.(*shapeError); ok {
		e.path = step + e.path
	}
	return err
}

type scanner struct {
	data []byte
	i    int
}

func (sc *scanner) ws() {
	for sc.i < len(sc.data) {
		switch sc.data[sc.i] {
		case ' ', '\t', '\n', '\r':
			sc.i++
		default:
			return
		}
	}
}

// next skips a ',' after a value, and the space after it.
func (sc *scanner) next() {
	sc.ws()
	if sc.data[sc.i] == ',' {
		sc.i++
		sc.ws()
	}
}

// value scans one value against s (nil: anything but null).
func (sc *scanner) value(s *shape) (uint64, error) {
	switch sc.data[sc.i] {
	case 'n':
		return 0, &shapeError{msg: "is null"}
	case '{':
		return sc.object(s)
	case '[':
		sc.i++
		sc.ws()
		var elem *shape
		if s != nil {
			elem = s.elem
		}
		for n := 0; sc.data[sc.i] != ']'; n++ {
			if _, err := sc.value(elem); err != nil {
				return 0, within(err, "["+strconv.Itoa(n)+"]")
			}
			sc.next()
		}
		sc.i++
		return 0, nil
	case '"':
		raw := sc.str()
		if s == nil || (s.maxRunes == 0 && s.valid == nil) {
			return 0, nil
		}
		text := raw[1 : len(raw)-1]
		if hasEscape(raw) {
			var t string
			_ = json.Unmarshal(raw, &t) // well-formed: cannot fail
			text = []byte(t)
		}
		if s.maxRunes > 0 {
			if n := utf8.RuneCount(text); n > s.maxRunes {
				return 0, &shapeError{msg: fmt.Sprintf("is %d characters, max %d", n, s.maxRunes)}
			}
		}
		if s.valid != nil && !s.valid(text) {
			return 0, &shapeError{msg: fmt.Sprintf("%q is not %s", truncate(string(text), 80), s.want)}
		}
		return 0, nil
	default: // number, true, false
		for sc.i < len(sc.data) {
			switch sc.data[sc.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return 0, nil
			}
			sc.i++
		}
		return 0, nil
	}
}

func (sc *scanner) object(s *shape) (uint64, error) {
	sc.i++
	sc.ws()
	var seen uint64
	for sc.data[sc.i] != '}' {
		raw := sc.str()
		key := raw[1 : len(raw)-1]
		if hasEscape(raw) {
			var k string
			_ = json.Unmarshal(raw, &k) // well-formed: cannot fail
			key = []byte(k)
		}
		sc.ws()
		sc.i++ // ':'
		sc.ws()
		var field *shape
		if s != nil && s.keys != nil {
			k := index(s.keys, key)
			if k < 0 {
				return 0, &shapeError{msg: fmt.Sprintf("has no property %q", truncate(string(key), 64))}
			}
			if seen&(1<<k) != 0 {
				return 0, &shapeError{msg: fmt.Sprintf("has %q twice", key)}
			}
			seen |= 1 << k
			field = s.fields[k]
		}
		if _, err := sc.value(field); err != nil {
			return 0, within(err, "."+string(key))
		}
		sc.next()
	}
	sc.i++
	if s != nil && s.required&^seen != 0 {
		for k, name := range s.keys {
			if s.required&^seen&(1<<k) != 0 {
				return 0, &shapeError{msg: fmt.Sprintf("lacks required property %q", name)}
			}
		}
	}
	return seen, nil
}

// str consumes a string token and returns it, quotes included.
func (sc *scanner) str() []byte {
	start := sc.i
	sc.i++
	for sc.data[sc.i] != '"' {
		if sc.data[sc.i] == '\\' {
			sc.i++
		}
		sc.i++
	}
	sc.i++
	return sc.data[start:sc.i]
}

func hasEscape(raw []byte) bool { return bytes.IndexByte(raw, '\\') >= 0 }

func index(keys []string, key []byte) int {
	for i, k := range keys {
		if string(key) == k {
			return i
		}
	}
	return -1
}

// validDateTime is the JSON Schema validator's "date-time" format
// (santhosh-tekuri/jsonschema v6, RFC 3339 section 5.6), rule for rule.
func validDateTime(s string) bool {
	if len(s) < 20 || (s[10] != 't' && s[10] != 'T') {
		return false
	}
	if _, err := time.Parse("2006-01-02", s[:10]); err != nil {
		return false
	}
	return validTime(s[11:])
}

func validTime(str string) bool {
	if len(str) < 9 || str[2] != ':' || str[5] != ':' {
		return false
	}
	var hms []int
	for _, tok := range strings.SplitN(str[:8], ":", 3) {
		i, err := strconv.Atoi(tok)
		if err != nil || i < 0 {
			return false
		}
		hms = append(hms, i)
	}
	if len(hms) != 3 {
		return false
	}
	h, m, sec := hms[0], hms[1], hms[2]
	if h > 23 || m > 59 || sec > 60 {
		return false
	}
	str = str[8:]
	if rem, ok := strings.CutPrefix(str, "."); ok {
		n := 0
		for n < len(rem) && rem[n] >= '0' && rem[n] <= '9' {
			n++
		}
		if n == 0 {
			return false
		}
		str = rem[n:]
	}
	if str != "z" && str != "Z" {
		if len(str) != 6 {
			return false
		}
		var sign int
		switch str[0] {
		case '+':
			sign = -1
		case '-':
			sign = +1
		default:
			return false
		}
		str = str[1:]
		if str[2] != ':' {
			return false
		}
		var zhm []int
		for _, tok := range strings.SplitN(str, ":", 2) {
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 {
				return false
			}
			zhm = append(zhm, i)
		}
		zh, zm := zhm[0], zhm[1]
		if zh > 23 || zm > 59 {
			return false
		}
		hm := (h*60 + m) + sign*(zh*60+zm)
		if hm < 0 {
			hm += 24 * 60
		}
		h, m = hm/60, hm%60
	}
	return sec < 60 || (h == 23 && m == 59)
}
