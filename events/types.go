package events

import (
	"fmt"
	"strings"
	"time"

	"github.com/sled-project/sled/schemas"
)

// Event types, as carried in ce-type. The version is part of the name; a
// breaking change is a new type.
const (
	TypeDraftReady   = schemas.DraftReadyV1
	TypeVerifyBatch  = schemas.VerifyBatchV1
	TypeVerifyResult = schemas.VerifyResultV1
)

// Payload is the data of one SLED event: *DraftReady, *VerifyBatch or
// *VerifyResult. The set is closed; the methods derive the envelope and the
// routing of an event from its payload.
type Payload interface {
	// EventType is the CloudEvents type (ce-type).
	EventType() string
	// NATSSubject is the subject the event is published on.
	NATSSubject() string
	// MsgID is the JetStream de-duplication id (Nats-Msg-Id): a retry of the
	// same logical event carries the same id and is stored once.
	MsgID() string
	// CESubject is the CloudEvents subject (ce-subject): the session for
	// drafts and results, the batch id for batches.
	CESubject() string

	check(vocab int) error
	rules(seen uint64) error
}

// Sampling holds the decoding parameters of a session. Temperature 0 means
// greedy decoding (exact argmax match); otherwise the target's distribution is
// taken at Temperature truncated to TopP (engine.Distribution) and Mode says
// how the verifier samples from it. TopP 0 or 1 means no truncation. There is
// no top-k of the target: the schema refuses it rather than let a producer
// believe it was applied (a draft's own top-k distribution travels in
// DraftReady.TopK).
type Sampling struct {
	Temperature float32 `json:"temperature,omitempty"`
	TopP        float32 `json:"top_p,omitempty"`
	Seed        uint64  `json:"seed,omitempty"`
	// Mode is SamplingCoupled or SamplingRejection; empty means
	// SamplingRejection (what v1 producers before coupled sampling meant).
	Mode string `json:"mode,omitempty"`
}

// Sampling modes (Sampling.Mode), at Temperature > 0.
const (
	// SamplingCoupled: the token at each absolute position p of the sequence
	// is the Gumbel-max of the target's distribution with the noise of (Seed,
	// p) (engine.Coupled); the verifier accepts a draft token while its own
	// sample equals it and draws the correction or bonus token the same way.
	// The output is a pure function of the seed and the prompt, whoever
	// drafted it; draft distributions are not needed and are ignored.
	SamplingCoupled = "coupled"
	// SamplingRejection: the rejection rule of Leviathan et al. with the draft
	// distributions of DraftReady.TopK (a point mass on each draft token where
	// absent), randomness from (Seed, Round): exact, not reproducible across
	// devices.
	SamplingRejection = "rejection"
)

// MaxTopLogprobs bounds DraftReady.TopLogprobs.
const MaxTopLogprobs = 20

// MaxTPOTMs bounds DraftReady.TPOTMs (a thousand seconds per token).
const MaxTPOTMs = 1_000_000

// MaxServerRounds bounds DraftReady.ServerRounds.
const MaxServerRounds = 1024

// TokenLogprob is the target's log-probability of one output token (natural
// log, raw distribution: temperature 1, no truncation), with the most likely
// alternatives at its position when asked for.
type TokenLogprob struct {
	Logprob float32      `json:"logprob"`
	Top     []TopLogprob `json:"top,omitempty"`
}

// TopLogprob is an alternative token at a position and its log-probability.
type TopLogprob struct {
	Token   int32   `json:"token"`
	Logprob float32 `json:"logprob"`
}

// TopK is the draft model's truncated distribution at one draft position:
// candidate token ids and their probabilities, highest first.
type TopK struct {
	IDs   []int32   `json:"ids"`
	Probs []float32 `json:"probs"`
}

// DraftReady (io.sled.draft.ready.v1) is one device's draft for one round.
//
// The device's committed sequence is the prompt, every verified token and
// Committed; PrefixLen is its length and PrefixHash its [PrefixHash]. Committed
// is the suffix of that sequence added since the last verified round (what
// the verifier must append to its KV cache before checking Draft). Prefix,
// when non-nil, is the whole committed sequence: a device sends it when it
// starts a session and when a result tells it to resync (unknown_session,
// prefix_mismatch), so the verifier can rebuild the session.
//
// Round starts at 1 and increases strictly per session; a retry after a
// timeout is a new round that resends every unverified token. The JetStream
// message id is "<session>.<round>", so a re-publish of the same round is
// stored once.
type DraftReady struct {
	DeviceID   string    `json:"device_id"`
	SessionID  string    `json:"session_id"`
	Round      uint64    `json:"round"`
	Pool       string    `json:"pool"`
	PrefixLen  int       `json:"prefix_len"`
	PrefixHash string    `json:"prefix_hash"`
	Committed  []int32   `json:"committed"`
	Draft      []int32   `json:"draft"`
	DraftProbs []float32 `json:"draft_probs"`
	TopK       []TopK    `json:"top_k,omitempty"`
	Sampling   Sampling  `json:"sampling"`
	// Logprobs asks the verifier for the target's log-probability of every
	// token of the round's outcome (VerifyResult.Logprobs), with TopLogprobs
	// (0..MaxTopLogprobs) alternatives at each position.
	Logprobs         bool      `json:"logprobs,omitempty"`
	TopLogprobs      int       `json:"top_logprobs,omitempty"`
	VocabFingerprint string    `json:"vocab_fingerprint"`
	Deadline         time.Time `json:"deadline"`
	// TPOTMs is the session's latency objective, milliseconds per output
	// token; 0: none. The verifier's draft budgets try to meet it.
	TPOTMs float64 `json:"tpot_ms,omitempty"`
	// Due, when set, is when this round's result must reach the device for
	// the session to keep its objective; an SLO-aware batcher closes the
	// batch holding the draft in time for it (batcher.Policy.SLO).
	Due time.Time `json:"due,omitzero"`
	// ServerRounds is the most rounds after this one that the verifier may
	// run on the device's behalf while the device's draft budget is 0: each
	// such round is the one the device would have sent (its committed token,
	// no draft), built by the verifier from its own cache, and answered like
	// any other with the next round number (VerifyResult.ServerNext). 0: none;
	// at most MaxServerRounds. A device sets it no higher than the tokens its
	// generation may still produce after this round's draft, and takes no
	// round number up to Round+ServerRounds for a round of its own.
	ServerRounds int `json:"server_rounds,omitempty"`
	// End says the device has ended the session before an end of text (a
	// stop sequence, a cancelled request, the length limit): the verifier
	// releases the session's slot and runs no more rounds on its behalf, and
	// answers nothing. Such a round carries no draft; its number is above
	// every round the verifier may run for the device.
	End    bool    `json:"end,omitempty"`
	Prefix []int32 `json:"prefix,omitempty"`
	// TraceParent and TraceState are the round's W3C trace context, as in the
	// draft event's ce-traceparent and ce-tracestate. A device need not set
	// them (the event header carries the context); the batcher copies the
	// header here when it puts the draft in a [VerifyBatch], whose own header
	// carries the batch's context, so the verifier can continue each round's
	// trace. Optional; a value that is not W3C traceparent is rejected by the
	// schema.
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
}

// EventType implements [Payload].
func (*DraftReady) EventType() string { return TypeDraftReady }

// NATSSubject implements [Payload]: sled.draft.<pool>.<device>.
func (d *DraftReady) NATSSubject() string { return DraftSubject(d.Pool, d.DeviceID) }

// MsgID implements [Payload]: "<session>.<round>".
func (d *DraftReady) MsgID() string { return fmt.Sprintf("%s.%d", d.SessionID, d.Round) }

// CESubject implements [Payload]: the session id.
func (d *DraftReady) CESubject() string { return d.SessionID }

// VerifyBatch (io.sled.verify.batch.v1) is the unit of work a batcher hands a
// verifier worker: drafts of distinct sessions of one pool.
type VerifyBatch struct {
	BatchID string `json:"batch_id"`
	Pool    string `json:"pool"`
	// Worker, when set, routes the batch to the worker that holds the
	// sessions' KV caches (subject sled.batch.<pool>.<worker>); empty means
	// any worker of the pool.
	Worker string `json:"worker,omitempty"`
	// Policy names what closed the batch: "size", "deadline", "slo", ...
	Policy    string       `json:"policy"`
	Drafts    []DraftReady `json:"drafts"`
	CreatedAt time.Time    `json:"created_at"`
}

// EventType implements [Payload].
func (*VerifyBatch) EventType() string { return TypeVerifyBatch }

// NATSSubject implements [Payload]: sled.batch.<pool>[.<worker>].
func (b *VerifyBatch) NATSSubject() string { return BatchSubject(b.Pool, b.Worker) }

// MsgID implements [Payload]: the batch id.
func (b *VerifyBatch) MsgID() string { return b.BatchID }

// CESubject implements [Payload]: the batch id.
func (b *VerifyBatch) CESubject() string { return b.BatchID }

// Status is the outcome of a round, carried in a [VerifyResult].
type Status string

// Result statuses.
const (
	// StatusOK: Accepted draft tokens were accepted and Token follows them.
	StatusOK Status = "ok"
	// StatusUnknownSession: the verifier has no state for the session (never
	// seen or evicted); the device resends the round with Prefix set.
	StatusUnknownSession Status = "unknown_session"
	// StatusPrefixMismatch: the verifier's committed prefix differs from the
	// device's (length or hash); the device resends with Prefix set.
	StatusPrefixMismatch Status = "prefix_mismatch"
	// StatusInvalid: the request was rejected; Reason names the failed check.
	StatusInvalid Status = "invalid"
	// StatusOverloaded: the pool cannot take the request now; retry later.
	StatusOverloaded Status = "overloaded"
	// StatusExpired: the request ran out of deliveries (MaxDeliver) or time.
	StatusExpired Status = "expired"
)

// ServerTiming reports where a round spent its time on the server side, in
// milliseconds.
type ServerTiming struct {
	QueueMs  float64 `json:"queue_ms,omitempty"`  // draft published → batch closed
	BatchMs  float64 `json:"batch_ms,omitempty"`  // batch published → verifier started
	VerifyMs float64 `json:"verify_ms,omitempty"` // target forward pass and acceptance
	TotalMs  float64 `json:"total_ms,omitempty"`  // draft published → result published
}

// VerifyResult (io.sled.verify.result.v1) answers one round of one device,
// published on sled.result.<device>. With StatusOK, the first Accepted draft
// tokens are accepted and Token is the correction (on rejection) or bonus
// token (all accepted); EOS reports that Token ends the sequence. Other
// statuses are errors: Reason is a short machine code (see [Reason]) and
// Error a human-readable message; Accepted and Token are then meaningless.
type VerifyResult struct {
	DeviceID     string       `json:"device_id"`
	SessionID    string       `json:"session_id,omitempty"`
	Round        uint64       `json:"round,omitempty"`
	Status       Status       `json:"status"`
	Accepted     int          `json:"accepted"`
	Token        int32        `json:"token"`
	EOS          bool         `json:"eos,omitempty"`
	Reason       string       `json:"reason,omitempty"`
	Error        string       `json:"error,omitempty"`
	ServerTiming ServerTiming `json:"server_timing"`
	BatchID      string       `json:"batch_id,omitempty"`
	BatchSize    int          `json:"batch_size,omitempty"`
	// DraftBudget, with StatusOK, is the most draft tokens the device may send
	// in its next round of the session, 0 ... 64 (0: only its committed token:
	// plain decoding through the same path), chosen by the verifier's goodput
	// policy (package goodput). A device drafts min(DraftBudget, what its own
	// policy would). nil: no budget; the device's own policy decides.
	DraftBudget *int `json:"draft_budget,omitempty"`
	// ServerNext, with StatusOK, says that the verifier runs the session's
	// next round (Round+1) itself, as the round's DraftReady.ServerRounds
	// allowed: its draft budget is 0, so that round would carry nothing but
	// the committed token, and sparing the device's trip leaves the server's
	// pass as the whole round (plain decoding at the server's own pace). Its
	// result follows; the device sends nothing until it has it, or until its
	// round timeout, after which it sends a round of its own numbered above
	// every round the verifier may run.
	ServerNext bool `json:"server_next,omitempty"`
	// Logprobs, when the draft asked for them (DraftReady.Logprobs), holds
	// Accepted+1 entries: the target's figures for each accepted draft token
	// and for Token, in order.
	Logprobs []TokenLogprob `json:"logprobs,omitempty"`
}

// EventType implements [Payload].
func (*VerifyResult) EventType() string { return TypeVerifyResult }

// NATSSubject implements [Payload]: sled.result.<device>.
func (r *VerifyResult) NATSSubject() string { return ResultSubject(r.DeviceID) }

// MsgID implements [Payload]: "<session>.<round>.<status>" (or
// "<device>.<reason>.<nanotime>" for a result not tied to a round).
func (r *VerifyResult) MsgID() string {
	if r.SessionID == "" || r.Round == 0 {
		return fmt.Sprintf("%s.%s.%d", r.DeviceID, r.Reason, time.Now().UnixNano())
	}
	return fmt.Sprintf("%s.%d.%s", r.SessionID, r.Round, r.Status)
}

// CESubject implements [Payload]: the session id.
func (r *VerifyResult) CESubject() string { return r.SessionID }

// Address names the device, session and round an error result goes to.
// SessionID and Round may be zero when the input did not reveal them.
type Address struct {
	DeviceID  string
	SessionID string
	Round     uint64
}

// ErrorResult builds the error result of status st for a, with Reason(err) as
// its reason and err's text (truncated to the schema's limit) as its error.
func ErrorResult(a Address, st Status, err error) *VerifyResult {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if len(msg) > schemas.MaxErrorLen {
		msg = strings.ToValidUTF8(msg[:schemas.MaxErrorLen-3], "") + "..."
	}
	reason := Reason(err)
	if reason == "" || (reason == "internal" && st != StatusInvalid) {
		reason = string(st)
	}
	return &VerifyResult{
		DeviceID:  a.DeviceID,
		SessionID: a.SessionID,
		Round:     a.Round,
		Status:    st,
		Reason:    reason,
		Error:     msg,
	}
}
