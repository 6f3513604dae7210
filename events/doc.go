// Package events defines SLED's events: their Go types, NATS subjects, and
// the CloudEvents 1.0 binary-mode codec with validation.
//
// Three event types flow through the system (see the schemas package for
// their JSON Schemas and limits):
//
//	io.sled.draft.ready.v1    device → batcher      sled.draft.<pool>.<device>   *DraftReady
//	io.sled.verify.batch.v1   batcher → verifier    sled.batch.<pool>[.<worker>] *VerifyBatch
//	io.sled.verify.result.v1  verifier → device     sled.result.<device>         *VerifyResult
//
// On the wire an event is a NATS message whose headers carry the CloudEvents
// attributes (ce-specversion, ce-id, ce-source, ce-type, ce-time, ce-subject,
// content-type: application/json, and the distributed-tracing extension
// ce-traceparent/ce-tracestate) and whose data is the JSON payload. [Encode]
// builds such a message; a [Decoder] parses one, from a *nats.Msg or a
// jetstream.Msg, and validates it against its type's schema and the
// semantic rules of the payload. The codec never acks: consumers keep
// ack/nak/term in their own hands (the infra package's Consumer does it).
//
// Every decode error wraps one sentinel (ErrMalformed,
// ErrUnsupportedSpecVersion, ErrUnknownType, ErrSchema, ErrTooLarge,
// ErrTokenRange, ErrInvalid); [Reason] turns it into the reason code of an
// error result, [AddressOf] finds whom to send that result to, and
// [ErrorResult] builds it.
//
// Device and verifier compare committed prefixes with [PrefixHash] (or its
// incremental form [PrefixHasher]).
package events
