package events

import (
	"errors"
	"fmt"
	"strings"
)

// Subject roots. Every SLED subject is sled.<kind>.<tokens...>:
//
//	sled.draft.<pool>.<device>     draft.ready, one subject per device
//	sled.batch.<pool>              verify.batch for any worker of the pool
//	sled.batch.<pool>.<worker>     verify.batch for one worker (sticky sessions)
//	sled.result.<device>           verify.result, one subject per device
//	sled.dlq.<reason>              dead-letter copies of rejected messages
const (
	SubjectDrafts  = "sled.draft.>"
	SubjectBatches = "sled.batch.>"
	SubjectResults = "sled.result.>"
	SubjectDLQ     = "sled.dlq.>"
)

// DefaultPool is the verification pool devices, batchers and verifier workers
// use when none is configured.
const DefaultPool = "default"

// ErrBadSubject reports a subject that is not a SLED subject or has an
// invalid token.
var ErrBadSubject = errors.New("events: bad subject")

// ValidID reports whether s is a valid id (device, session, pool, worker,
// batch, reason): 1 to 64 of [A-Za-z0-9_-], so it is safe as one NATS
// subject token and as part of a message id.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// DraftSubject returns sled.draft.<pool>.<device>. The ids are not checked;
// use [ValidID] or [ParseSubject] on untrusted input.
func DraftSubject(pool, device string) string { return "sled.draft." + pool + "." + device }

// DraftFilter returns the filter for every draft of a pool: sled.draft.<pool>.*
func DraftFilter(pool string) string { return "sled.draft." + pool + ".*" }

// BatchSubject returns sled.batch.<pool>, or sled.batch.<pool>.<worker> when
// worker is not empty.
func BatchSubject(pool, worker string) string {
	if worker == "" {
		return "sled.batch." + pool
	}
	return "sled.batch." + pool + "." + worker
}

// ResultSubject returns sled.result.<device>.
func ResultSubject(device string) string { return "sled.result." + device }

// DLQSubject returns sled.dlq.<reason>.
func DLQSubject(reason string) string { return "sled.dlq." + reason }

// Kind is the kind of a SLED subject.
type Kind string

// Subject kinds.
const (
	KindDraft  Kind = "draft"
	KindBatch  Kind = "batch"
	KindResult Kind = "result"
	KindDLQ    Kind = "dlq"
)

// Subject is a parsed SLED subject. Only the fields of its Kind are set.
type Subject struct {
	Kind   Kind
	Pool   string // draft, batch
	Device string // draft, result
	Worker string // batch (optional)
	Reason string // dlq
}

// String formats s back into a NATS subject.
func (s Subject) String() string {
	switch s.Kind {
	case KindDraft:
		return DraftSubject(s.Pool, s.Device)
	case KindBatch:
		return BatchSubject(s.Pool, s.Worker)
	case KindResult:
		return ResultSubject(s.Device)
	case KindDLQ:
		return DLQSubject(s.Reason)
	}
	return ""
}

// ParseSubject parses a concrete (wildcard-free) SLED subject and checks that
// every id token is a [ValidID]. Errors wrap [ErrBadSubject].
func ParseSubject(subject string) (Subject, error) {
	toks := strings.Split(subject, ".")
	bad := func(why string) (Subject, error) {
		return Subject{}, fmt.Errorf("%w: %q: %s", ErrBadSubject, truncate(subject, 128), why)
	}
	if len(toks) < 3 || toks[0] != "sled" {
		return bad("not sled.<kind>.<...>")
	}
	for _, t := range toks[2:] {
		if !ValidID(t) {
			return bad("invalid token")
		}
	}
	var s Subject
	switch Kind(toks[1]) {
	case KindDraft:
		if len(toks) != 4 {
			return bad("want sled.draft.<pool>.<device>")
		}
		s = Subject{Kind: KindDraft, Pool: toks[2], Device: toks[3]}
	case KindBatch:
		if len(toks) != 3 && len(toks) != 4 {
			return bad("want sled.batch.<pool>[.<worker>]")
		}
		s = Subject{Kind: KindBatch, Pool: toks[2]}
		if len(toks) == 4 {
			s.Worker = toks[3]
		}
	case KindResult:
		if len(toks) != 3 {
			return bad("want sled.result.<device>")
		}
		s = Subject{Kind: KindResult, Device: toks[2]}
	case KindDLQ:
		if len(toks) != 3 {
			return bad("want sled.dlq.<reason>")
		}
		s = Subject{Kind: KindDLQ, Reason: toks[2]}
	default:
		return bad("unknown kind")
	}
	return s, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// SubjectTemplate is subject with its ids replaced by their names
// (sled.draft.{pool}.{device}, sled.result.{device}, sled.batch.{pool}[.{worker}],
// sled.hb.{pool}.{worker}, sled.dlq.{reason}): the low-cardinality
// messaging.destination.template of OpenTelemetry's messaging conventions.
// Other subjects are returned as they are.
func SubjectTemplate(subject string) string {
	t := strings.Split(subject, ".")
	if len(t) < 3 || t[0] != "sled" {
		return subject
	}
	switch {
	case t[1] == "draft" && len(t) == 4:
		return "sled.draft.{pool}.{device}"
	case t[1] == "result" && len(t) == 3:
		return "sled.result.{device}"
	case t[1] == "batch" && len(t) == 3:
		return "sled.batch.{pool}"
	case t[1] == "batch" && len(t) == 4:
		return "sled.batch.{pool}.{worker}"
	case t[1] == "hb" && len(t) == 4:
		return "sled.hb.{pool}.{worker}"
	case t[1] == "dlq" && len(t) == 3:
		return "sled.dlq.{reason}"
	}
	return subject
}
