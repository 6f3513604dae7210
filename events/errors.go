package events

import "errors"

// Decode and validation errors. Every error returned by [Decoder.Decode] and
// [Encode] wraps exactly one of these; test with errors.Is and map to the
// reason of an error result with [Reason].
var (
	// ErrMalformed: missing or unparsable CloudEvents attributes or headers,
	// wrong content type, or data that is not JSON.
	ErrMalformed = errors.New("events: malformed event")
	// ErrUnsupportedSpecVersion: ce-specversion is not 1.0.
	ErrUnsupportedSpecVersion = errors.New("events: unsupported CloudEvents specversion")
	// ErrUnknownType: ce-type names no SLED event type.
	ErrUnknownType = errors.New("events: unknown event type")
	// ErrSchema: the data violates the type's JSON Schema.
	ErrSchema = errors.New("events: schema violation")
	// ErrTooLarge: the data or headers exceed the decoder's size limits.
	ErrTooLarge = errors.New("events: event too large")
	// ErrTokenRange: a token id is at or above the vocabulary size.
	ErrTokenRange = errors.New("events: token id out of range")
	// ErrInvalid: the event is well-formed but inconsistent (lengths that
	// must agree, prefix hash, subject vs payload, duplicate sessions).
	ErrInvalid = errors.New("events: invalid event")
	// ErrIdentity: the event speaks for someone other than who may publish on
	// its subject: a draft whose device or pool is not its subject's, or whose
	// ce-source is not that device's ([DeviceSource]). With NATS auth on, only
	// device X may publish on X's draft subject, so the subject is the
	// publisher's identity.
	ErrIdentity = errors.New("events: identity mismatch")
)

var reasons = []struct {
	err    error
	reason string
}{
	{ErrMalformed, "malformed"},
	{ErrUnsupportedSpecVersion, "unsupported_specversion"},
	{ErrUnknownType, "unknown_type"},
	{ErrSchema, "schema"},
	{ErrTooLarge, "too_large"},
	{ErrTokenRange, "token_range"},
	{ErrInvalid, "invalid"},
	{ErrIdentity, "identity"},
	{ErrBadSubject, "bad_subject"},
}

// Reason maps an error to the short code carried in an error result's
// reason field and used as the dead-letter subject token: "malformed",
// "unsupported_specversion", "unknown_type", "schema", "too_large",
// "token_range", "invalid", "identity", "bad_subject"; "internal" for any
// other non-nil error and "" for nil.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "internal"
}
