package drafter

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/schemas"
	"github.com/sled-project/sled/telemetry"
)

// TracerName is the instrumentation scope of the device's spans.
const TracerName = "github.com/sled-project/sled/drafter"

// Round outcomes, the outcome label of sled_rounds_total and the sled.outcome
// attribute of a round span.
const (
	OutcomeOK           = "ok"
	OutcomeTimeout      = "timeout"
	OutcomeResync       = "resync"
	OutcomePublishError = "publish_error"
	OutcomeExpired      = string(events.StatusExpired)
	OutcomeOverloaded   = string(events.StatusOverloaded)
	OutcomeInvalid      = string(events.StatusInvalid)
	OutcomeCanceled     = "canceled"
)

var outcomes = []string{OutcomeOK, OutcomeTimeout, OutcomeResync, OutcomePublishError, OutcomeExpired, OutcomeOverloaded, OutcomeInvalid, OutcomeCanceled}

// Activity is a device's cumulative counts since it started, for live
// summaries (cheap: atomic loads).
type Activity struct {
	Rounds     uint64 // rounds with an ok verdict
	Drafted    uint64 // draft tokens in those rounds
	Accepted   uint64 // draft tokens accepted
	Tokens     uint64 // output tokens released, verified or not
	Unverified uint64 // output tokens released unverified (fallback)
}

// observer holds a device's tracer, instruments and precomputed label sets,
// so that recording a round allocates nothing when telemetry is off and
// little when it is on.
type observer struct {
	tel    *telemetry.Telemetry
	tracer trace.Tracer
	m      *telemetry.Metrics
	model  string

	dev        metric.MeasurementOption // device, draft_model
	byModel    metric.MeasurementOption // draft_model
	verified   metric.MeasurementOption // device, draft_model, kind=verified
	unverified metric.MeasurementOption // device, draft_model, kind=unverified
	outcome    map[string]metric.MeasurementOption
	posDrafted [schemas.MaxDraftTokens]metric.MeasurementOption // draft_model, position

	rounds, drafted, accepted, tokens, unverifiedN atomic.Uint64
}

func newObserver(tel *telemetry.Telemetry, device, model string) *observer {
	tel = tel.Or()
	o := &observer{tel: tel, tracer: tel.Tracer(TracerName), m: tel.Metrics, model: model, outcome: map[string]metric.MeasurementOption{}}
	dm := attribute.String("draft_model", model)
	dv := attribute.String("device", device)
	o.dev = metric.WithAttributeSet(attribute.NewSet(dv, dm))
	o.byModel = metric.WithAttributeSet(attribute.NewSet(dm))
	o.verified = metric.WithAttributeSet(attribute.NewSet(dv, dm, attribute.String("kind", "verified")))
	o.unverified = metric.WithAttributeSet(attribute.NewSet(dv, dm, attribute.String("kind", "unverified")))
	for _, oc := range outcomes {
		o.outcome[oc] = metric.WithAttributeSet(attribute.NewSet(dv, dm, attribute.String("outcome", oc)))
	}
	for i := range o.posDrafted {
		o.posDrafted[i] = metric.WithAttributeSet(attribute.NewSet(dm, attribute.String("position", strconv.Itoa(i))))
	}
	// Failure counters exist from the start, at zero, so that alerts on their
	// rate see the series before the first failure.
	ctx := context.Background()
	for _, c := range []metric.Int64Counter{o.m.Timeouts, o.m.Retries, o.m.Fallbacks, o.m.Resyncs} {
		c.Add(ctx, 0, o.dev)
	}
	o.m.Tokens.Add(ctx, 0, o.unverified)
	return o
}

// activity returns the cumulative counts.
func (o *observer) activity() Activity {
	return Activity{
		Rounds: o.rounds.Load(), Drafted: o.drafted.Load(), Accepted: o.accepted.Load(),
		Tokens: o.tokens.Load(), Unverified: o.unverifiedN.Load(),
	}
}

// round is the trace of one round: the span "sled.round" from the start of
// drafting to the verdict (or the failure that ends the round).
type round struct {
	ctx    context.Context
	span   trace.Span
	sentAt time.Time
}

// beginRound starts a round span unless one is open. A round span is the root
// of its own trace (one trace per round); when ctx carries a span (an HTTP
// request's, say) the round links to it.
func (g *generation) beginRound(ctx context.Context) {
	if g.rt.span != nil {
		return
	}
	o := g.d.obs
	opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindInternal)}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	g.rt.ctx, g.rt.span = o.tracer.Start(ctx, "sled.round", opts...)
	if g.rt.span.IsRecording() {
		g.rt.span.SetAttributes(telemetry.AttrDevice.String(g.d.cfg.DeviceID), telemetry.AttrSession.String(g.session),
			telemetry.AttrDraftModel.String(o.model), telemetry.AttrPool.String(g.d.cfg.Pool))
	}
}

// endRound ends the open round span with its outcome and counts the round.
func (g *generation) endRound(outcome string, res *events.VerifyResult) {
	o := g.d.obs
	if opt, ok := o.outcome[outcome]; ok {
		o.m.Rounds.Add(context.Background(), 1, opt)
	}
	sp := g.rt.span
	if sp == nil {
		return
	}
	if sp.IsRecording() {
		sp.SetAttributes(telemetry.AttrRound.Int64(int64(g.round)), telemetry.AttrOutcome.String(outcome))
		if res != nil {
			sp.SetAttributes(telemetry.AttrStatus.String(string(res.Status)), telemetry.AttrBatchID.String(res.BatchID),
				telemetry.AttrBatchSize.Int(res.BatchSize))
			if res.Status == events.StatusOK {
				sp.SetAttributes(telemetry.AttrAccepted.Int(res.Accepted))
			}
		}
		if outcome != OutcomeOK {
			sp.SetStatus(codes.Error, outcome)
		}
	}
	sp.End()
	g.rt = round{}
}

// observeSent records a round as it is published.
func (g *generation) observeSent(ctx context.Context) {
	o := g.d.obs
	g.rt.sentAt = time.Now()
	o.m.DraftLength.Record(ctx, int64(len(g.st.pending)), o.dev)
	for _, p := range g.st.probs {
		o.m.DraftConfidence.Record(ctx, float64(p), o.byModel)
	}
}

// observeVerdict records an ok verdict: k of drafted tokens accepted.
func (g *generation) observeVerdict(ctx context.Context, drafted, k int) {
	o := g.d.obs
	if !g.rt.sentAt.IsZero() {
		o.m.RoundLatency.Record(ctx, time.Since(g.rt.sentAt).Seconds(), o.dev)
	}
	o.m.DraftedTokens.Add(ctx, int64(drafted), o.dev)
	o.m.AcceptedTokens.Add(ctx, int64(k), o.dev)
	o.m.AcceptedLength.Record(ctx, int64(k), o.dev)
	for i := range min(drafted, len(o.posDrafted)) {
		o.m.PositionDrafted.Add(ctx, 1, o.posDrafted[i])
		if i < k {
			o.m.PositionAccepted.Add(ctx, 1, o.posDrafted[i])
		}
	}
	o.rounds.Add(1)
	o.drafted.Add(uint64(drafted))
	o.accepted.Add(uint64(k))
}

// observeTokens records n output tokens released.
func (g *generation) observeTokens(n int, unverified bool) {
	if n == 0 {
		return
	}
	o := g.d.obs
	opt := o.verified
	if unverified {
		opt = o.unverified
		o.unverifiedN.Add(uint64(n))
	}
	o.tokens.Add(uint64(n))
	o.m.Tokens.Add(context.Background(), int64(n), opt)
}
