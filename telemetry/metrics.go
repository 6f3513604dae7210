package telemetry

import (
	"go.opentelemetry.io/otel/metric"
)

// Metrics are SLED's metric instruments, shared by every role of a process so
// that `sled up` serves them on one endpoint. Names are OpenTelemetry names;
// the Prometheus endpoint exports them with dots as underscores, "_total" on
// counters and the unit on histograms ("sled.round.latency" in seconds is
// sled_round_latency_seconds). docs/observability.md lists them with their
// labels and how they map to vLLM's and llama.cpp's speculative-decoding
// metrics.
//
// Label sets are fixed per component and built once (see metric.WithAttributeSet),
// so recording allocates nothing.
type Metrics struct {
	// Device side, labels device and draft_model.

	// Rounds counts rounds by outcome (label outcome: ok, timeout, resync,
	// expired, overloaded, invalid, publish_error).
	Rounds metric.Int64Counter
	// DraftedTokens and AcceptedTokens count draft tokens sent in rounds that
	// got an ok verdict and those the verdict accepted: acceptance rate =
	// accepted / drafted.
	DraftedTokens, AcceptedTokens metric.Int64Counter
	// AcceptedLength is accepted draft tokens per ok round (the mean accepted
	// length is its sum / count; tokens per round is that plus one).
	AcceptedLength metric.Int64Histogram
	// DraftLength is draft tokens per round sent.
	DraftLength metric.Int64Histogram
	// DraftConfidence is the draft model's probability of each draft token it
	// sent (label draft_model only).
	DraftConfidence metric.Float64Histogram
	// PositionDrafted and PositionAccepted count draft tokens and accepted
	// ones by position in the draft (labels draft_model, position 0-based):
	// per-position acceptance = accepted / drafted at that position.
	PositionDrafted, PositionAccepted metric.Int64Counter
	// RoundLatency is a round's time from publishing the draft to its verdict,
	// in seconds.
	RoundLatency metric.Float64Histogram
	// Tokens counts output tokens released to users (label kind: verified or
	// unverified, the latter released by lossy fallback).
	Tokens metric.Int64Counter
	// Timeouts, Retries, Fallbacks and Resyncs count rounds with no verdict in
	// time, rounds resent after a failure, fallback releases of unverified
	// drafts, and resends with the full prefix the verifier asked for.
	Timeouts, Retries, Fallbacks, Resyncs metric.Int64Counter

	// Batcher side, label pool.

	// Batches counts verification batches published (label policy: size,
	// all, deadline).
	Batches metric.Int64Counter
	// BatchSize is drafts per batch (label policy); BatchFill is size divided
	// by the policy's batch size.
	BatchSize metric.Int64Histogram
	BatchFill metric.Float64Histogram
	// QueueWait is a draft's time from arriving at the batcher to its batch
	// closing, in seconds.
	QueueWait metric.Float64Histogram
	// BatcherDrafts counts drafts the batcher handled (label outcome:
	// batched, superseded, stale).
	BatcherDrafts metric.Int64Counter

	// Verifier side, labels pool and worker.

	// VerifyTime is one verification's time in seconds: the forward passes
	// and acceptance of every batch that was queued when it started (see
	// verifier.Worker.Run).
	VerifyTime metric.Float64Histogram
	// VerifierDrafts counts drafts verified (label status: the result's).
	VerifierDrafts metric.Int64Counter
	// VerifiedTokens counts draft tokens checked and accepted by the verifier
	// (label kind: drafted, accepted): the server-side view of acceptance,
	// summed over devices.
	VerifierTokens metric.Int64Counter
	// VerifierResyncs counts sessions rebuilt from a full prefix after their
	// first round; VerifierSessions counts sessions started.
	VerifierResyncs, VerifierSessions metric.Int64Counter
	// The speculative-decoding counters under vLLM's names (and llama-server's
	// meaning), so that dashboards built for them read SLED: drafts verified
	// with an ok result, their draft tokens, the accepted ones, and the
	// accepted ones by position in the draft (label position, from 0).
	SpecDrafts, SpecDraftTokens, SpecAcceptedTokens, SpecAcceptedPerPos metric.Int64Counter

	// Front ends (the HTTP APIs), labels gen_ai.operation.name and
	// gen_ai.request.model: OpenTelemetry's GenAI conventions.

	// TimeToFirstToken is a request's time from the start of generation to its
	// first output, in seconds; TimePerOutputToken the time per output token
	// after the first.
	TimeToFirstToken, TimePerOutputToken metric.Float64Histogram
	// TokenUsage is the tokens of one request, by gen_ai.token.type (input,
	// output).
	TokenUsage metric.Int64Histogram
	// PrefixReused counts prefix tokens of rebuilt sessions found already in
	// their slot's cells (the verifier's prefix cache), not evaluated again.
	PrefixReused metric.Int64Counter
	// SlotsUsed is the number of KV sequence slots holding a session; Slots
	// is how many there are.
	SlotsUsed, Slots metric.Int64Gauge
	// SlotEvictions counts sessions evicted from a slot (least recently used).
	SlotEvictions metric.Int64Counter
	// VerifierSkipped counts drafts past their deadline on arrival, left
	// unanswered (the device has resent them).
	VerifierSkipped metric.Int64Counter
	// ServerRounds counts rounds a verifier worker runs on its devices'
	// behalf (a session held at draft budget 0 whose device allows it:
	// events.VerifyResult.ServerNext). Attributes: pool, worker.
	ServerRounds metric.Int64Counter
	// SessionsEnded counts sessions their devices ended before an end of
	// text (events.DraftReady.End), released at once. Attributes: pool,
	// worker.
	SessionsEnded metric.Int64Counter
	// The goodput policy's decisions (package goodput), labels pool and
	// worker: DraftBudget the budgets given; BudgetPlans the plans, by reason
	// (goodput, slo, no_estimate, static); PlannedPassMs and PlannedGoodput
	// the last plan's estimated pass cost and expected output tokens per
	// second of server time; BudgetMissed the devices whose latency objective
	// a plan does not meet.
	DraftBudget                   metric.Int64Histogram
	BudgetPlans, BudgetMissed     metric.Int64Counter
	PlannedPassMs, PlannedGoodput metric.Float64Gauge

	// Consumers (every JetStream consumer), label consumer.

	// Rejected counts events dead-lettered as invalid (label reason: the
	// events.Reason code, e.g. schema, token_range, too_large).
	Rejected metric.Int64Counter
	// Redeliveries counts messages delivered more than once (ack timeouts,
	// naks after transient errors).
	Redeliveries metric.Int64Counter

	// Streams and consumers (infra), label stream.

	// StreamRecreated counts streams recreated after they vanished (see
	// infra.StreamKeeper); ConsumerRecreated counts durable consumers
	// recreated (labels stream, consumer).
	StreamRecreated, ConsumerRecreated metric.Int64Counter
}

// Histogram bucket boundaries.
var (
	// LatencyBuckets, in seconds: 0.5 ms to 10 s.
	LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// LengthBuckets, in tokens, for draft and accepted lengths (the schema
	// allows 64 draft tokens).
	LengthBuckets = []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 48, 64}
	// TokenBuckets, in tokens, for a request's input and output (the GenAI
	// conventions' advised boundaries, powers of 4).
	TokenBuckets = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576}
	// ConfidenceBuckets, probabilities.
	ConfidenceBuckets = []float64{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1}
	// BatchSizeBuckets, in drafts (the schema allows 256 per batch).
	BatchSizeBuckets = []float64{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256}
	// FillBuckets, fractions of the policy's batch size.
	FillBuckets = []float64{0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1}
)

// NewMetrics creates the instruments on mp's meter "github.com/sled-project/sled".
// With a no-op provider every instrument is a no-op.
func NewMetrics(mp metric.MeterProvider) *Metrics {
	m := mp.Meter("github.com/sled-project/sled")
	var mm Metrics
	// Instrument creation fails only on invalid names, fixed here: a failing
	// instrument is still a usable no-op, so the errors are dropped.
	c := func(name, unit, desc string) metric.Int64Counter {
		x, _ := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		return x
	}
	ih := func(name, unit, desc string, b []float64) metric.Int64Histogram {
		x, _ := m.Int64Histogram(name, metric.WithUnit(unit), metric.WithDescription(desc), metric.WithExplicitBucketBoundaries(b...))
		return x
	}
	fh := func(name, unit, desc string, b []float64) metric.Float64Histogram {
		x, _ := m.Float64Histogram(name, metric.WithUnit(unit), metric.WithDescription(desc), metric.WithExplicitBucketBoundaries(b...))
		return x
	}
	g := func(name, unit, desc string) metric.Int64Gauge {
		x, _ := m.Int64Gauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		return x
	}
	fg := func(name, unit, desc string) metric.Float64Gauge {
		x, _ := m.Float64Gauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		return x
	}
	mm.DraftBudget = ih("sled.goodput.budget", "{token}", "Draft budgets the verifier gave devices for their next round.", LengthBuckets)
	mm.BudgetPlans = c("sled.goodput.plans", "{plan}", "Draft-budget plans, one per verification, by reason.")
	mm.BudgetMissed = c("sled.goodput.missed", "{device}", "Devices whose latency objective a plan does not meet.")
	mm.PlannedPassMs = fg("sled.goodput.pass", "ms", "Estimated cost of the next pass the last plan expects (pass-cost estimator, overhead included).")
	mm.PlannedGoodput = fg("sled.goodput.planned", "{token}/s", "Expected output tokens per second of server time of the last plan.")
	mm.Rounds = c("sled.rounds", "{round}", "Rounds by outcome.")
	mm.DraftedTokens = c("sled.drafted_tokens", "{token}", "Draft tokens of rounds with an ok verdict.")
	mm.AcceptedTokens = c("sled.accepted_tokens", "{token}", "Draft tokens accepted by the target.")
	mm.AcceptedLength = ih("sled.accepted_length", "{token}", "Accepted draft tokens per ok round.", LengthBuckets)
	mm.DraftLength = ih("sled.draft_length", "{token}", "Draft tokens per round sent.", LengthBuckets)
	mm.DraftConfidence = fh("sled.draft_confidence", "1", "Draft model probability of each draft token sent.", ConfidenceBuckets)
	mm.PositionDrafted = c("sled.position.drafted_tokens", "{token}", "Draft tokens by position in the draft, in rounds with an ok verdict.")
	mm.PositionAccepted = c("sled.position.accepted_tokens", "{token}", "Accepted draft tokens by position in the draft.")
	mm.RoundLatency = fh("sled.round.latency", "s", "Time from publishing a draft to its verdict.", LatencyBuckets)
	mm.Tokens = c("sled.tokens", "{token}", "Output tokens released, by kind (verified, unverified).")
	mm.Timeouts = c("sled.timeouts", "{round}", "Rounds without a verdict in time.")
	mm.Retries = c("sled.retries", "{round}", "Rounds resent after a failure.")
	mm.Fallbacks = c("sled.fallbacks", "{release}", "Fallback releases of unverified drafts.")
	mm.Resyncs = c("sled.resyncs", "{round}", "Rounds resent with the full prefix at the verifier's request.")

	mm.Batches = c("sled.batches", "{batch}", "Verification batches published, by the policy that closed them.")
	mm.BatchSize = ih("sled.batch.size", "{draft}", "Drafts per batch.", BatchSizeBuckets)
	mm.BatchFill = fh("sled.batch.fill", "1", "Batch size divided by the policy's batch size.", FillBuckets)
	mm.QueueWait = fh("sled.queue.wait", "s", "Time a draft waited in the batcher until its batch closed.", LatencyBuckets)
	mm.BatcherDrafts = c("sled.batcher.drafts", "{draft}", "Drafts handled by the batcher, by outcome.")

	mm.VerifyTime = fh("sled.verify.duration", "s", "Verification time of one Verify call: the forward passes and acceptance of every batch queued when it started.", LatencyBuckets)
	mm.VerifierDrafts = c("sled.verifier.drafts", "{draft}", "Drafts verified, by result status.")
	mm.VerifierTokens = c("sled.verifier.tokens", "{token}", "Draft tokens verified, by kind (drafted, accepted).")
	mm.VerifierResyncs = c("sled.verifier.resyncs", "{session}", "Sessions rebuilt from a full prefix after their first round.")
	mm.VerifierSessions = c("sled.verifier.sessions", "{session}", "Sessions started (a first round with its prefix).")
	mm.SpecDrafts = c("sled.spec_decode.num_drafts", "", "Drafts verified with an ok result (vLLM's spec_decode_num_drafts).")
	mm.SpecDraftTokens = c("sled.spec_decode.num_draft_tokens", "", "Draft tokens of drafts verified with an ok result.")
	mm.SpecAcceptedTokens = c("sled.spec_decode.num_accepted_tokens", "", "Draft tokens accepted by the target.")
	mm.SpecAcceptedPerPos = c("sled.spec_decode.num_accepted_tokens_per_pos", "", "Accepted draft tokens by position in the draft (label position, from 0).")
	mm.TimeToFirstToken = fh("gen_ai.server.time_to_first_token", "s", "Time from the start of generation to the first output of a request.", LatencyBuckets)
	mm.TimePerOutputToken = fh("gen_ai.server.time_per_output_token", "s", "Time per output token after the first, per request.", LatencyBuckets)
	mm.TokenUsage = ih("gen_ai.client.token.usage", "{token}", "Tokens of a request, by gen_ai.token.type (input, output).", TokenBuckets)
	mm.PrefixReused = c("sled.verifier.prefix.reused", "{token}", "Prefix tokens of rebuilt sessions already in their slot's cells, not evaluated again.")
	mm.SlotsUsed = g("sled.slots.used", "{slot}", "KV sequence slots holding a session.")
	mm.Slots = g("sled.slots.capacity", "{slot}", "KV sequence slots of the verifier.")
	mm.SlotEvictions = c("sled.slots.evictions", "{session}", "Sessions evicted from a KV slot.")
	mm.VerifierSkipped = c("sled.verifier.skipped", "{draft}", "Drafts past their deadline on arrival, left unanswered.")
	mm.SessionsEnded = c("sled.verifier.sessions_ended", "{session}", "Sessions their devices ended before an end of text, released at once.")
	mm.ServerRounds = c("sled.verifier.server_rounds", "{round}", "Rounds a verifier ran on its devices' behalf (sessions held at draft budget 0).")

	mm.Rejected = c("sled.events.rejected", "{event}", "Events rejected as invalid, by reason.")
	mm.Redeliveries = c("sled.redeliveries", "{message}", "Messages delivered more than once.")
	mm.StreamRecreated = c("sled.infra.stream_recreated", "{stream}", "Streams recreated from their known configuration after they vanished.")
	mm.ConsumerRecreated = c("sled.infra.consumer_recreated", "{consumer}", "Durable consumers recreated after they vanished.")
	return &mm
}
