package verifier

// The worker's observability: metrics of verdicts and slots, and the spans of
// each batch. Nothing here changes what the worker does.

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/telemetry"
)

// observeResult records one verdict's metrics.
func (w *Worker) observeResult(ctx context.Context, d *events.DraftReady, r *events.VerifyResult) {
	if opt, ok := w.byStatus[r.Status]; ok {
		w.m.VerifierDrafts.Add(ctx, 1, opt)
	}
	if r.Status == events.StatusOK {
		w.m.VerifierTokens.Add(ctx, int64(len(d.Draft)), w.drafted)
		w.m.VerifierTokens.Add(ctx, int64(r.Accepted), w.accepted)
		w.m.SpecDrafts.Add(ctx, 1, w.attrs)
		w.m.SpecDraftTokens.Add(ctx, int64(len(d.Draft)), w.attrs)
		w.m.SpecAcceptedTokens.Add(ctx, int64(r.Accepted), w.attrs)
		for i := range min(r.Accepted, len(w.position)) {
			w.m.SpecAcceptedPerPos.Add(ctx, 1, w.position[i])
		}
	}
}

// observeBatch exports the verifier's slot occupancy and the growth of its
// resync, prefix-reuse and eviction counters.
func (w *Worker) observeBatch(ctx context.Context) {
	st := w.v.Stats()
	w.m.SlotsUsed.Record(ctx, int64(w.v.Sessions()), w.attrs)
	w.mu.Lock()
	dr, de, ds := st.Resyncs-w.seen.Resyncs, st.Evictions-w.seen.Evictions, st.Sessions-w.seen.Sessions
	dp := st.ReusedPrefixTokens - w.seen.ReusedPrefixTokens
	w.seen = st
	w.mu.Unlock()
	if dr > 0 {
		w.m.VerifierResyncs.Add(ctx, int64(dr), w.attrs)
	}
	if ds > 0 {
		w.m.VerifierSessions.Add(ctx, int64(ds), w.attrs)
	}
	if dp > 0 {
		w.m.PrefixReused.Add(ctx, int64(dp), w.attrs)
	}
	if de > 0 {
		w.m.SlotEvictions.Add(ctx, int64(de), w.attrs)
	}
}

// batchTrace holds the spans of one batch: "verifier.batch", the child of the
// batcher's batch span (the batch's own trace, linked to every round), and per
// draft "verifier.verify", the child of the draft's round span, with children
// "verifier.decode" (the batch's forward passes and acceptance, shared) and
// "verifier.publish" (the result, until the stream stored it). Without
// tracing it is empty and every method is a no-op.
type batchTrace struct {
	w       *Worker
	batch   trace.Span
	verify  []trace.Span
	publish []trace.Span
	plan    *goodput.Plan // the budgets given with the results, nil if none
}

func (w *Worker) startTrace(ctx context.Context, ev *events.Event, msg jetstream.Msg, b *events.VerifyBatch, drafts []events.DraftReady) *batchTrace {
	tr := &batchTrace{w: w}
	if !w.tel.Tracing() {
		return tr
	}
	links := make([]trace.Link, 0, len(drafts))
	for i := range drafts {
		if sc := w.tel.SpanContextOf(drafts[i].TraceParent, drafts[i].TraceState); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	_, tr.batch = w.tracer.Start(w.tel.Extract(ctx, ev), "verifier.batch",
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(links...))
	if tr.batch.IsRecording() {
		tr.batch.SetAttributes(telemetry.EventAttrs(ev, msg.Subject(), "process")...)
		tr.batch.SetAttributes(telemetry.AttrBatchID.String(b.BatchID), telemetry.AttrBatchPolicy.String(b.Policy),
			telemetry.AttrBatchSize.Int(len(drafts)), telemetry.AttrPool.String(w.cfg.Pool), telemetry.AttrWorker.String(w.cfg.Name),
			telemetry.AttrMsgBatchCount.Int(len(b.Drafts)))
	}
	tr.verify = make([]trace.Span, len(drafts))
	tr.publish = make([]trace.Span, len(drafts))
	for i := range drafts {
		d := &drafts[i]
		_, sp := w.tracer.Start(w.tel.ExtractDraft(ctx, d), "verifier.verify", trace.WithSpanKind(trace.SpanKindConsumer))
		if sp.IsRecording() {
			sp.SetAttributes(telemetry.AttrDevice.String(d.DeviceID), telemetry.AttrSession.String(d.SessionID),
				telemetry.AttrRound.Int64(int64(d.Round)), telemetry.AttrDrafted.Int(len(d.Draft)),
				telemetry.AttrBatchID.String(b.BatchID), telemetry.AttrBatchSize.Int(len(drafts)), telemetry.AttrWorker.String(w.cfg.Name))
		}
		tr.verify[i] = sp
	}
	return tr
}

// verdict records draft i's decode span (start to end, the batch's shared
// forward passes), its verdict, and starts its publish span, injecting the
// draft's verify span context into the result event.
func (tr *batchTrace) verdict(i int, start, end time.Time, r *events.VerifyResult, rev *events.Event) {
	if tr.verify == nil {
		return
	}
	sp := tr.verify[i]
	vctx := trace.ContextWithSpan(context.Background(), sp)
	_, dec := tr.w.tracer.Start(vctx, "verifier.decode", trace.WithTimestamp(start))
	if dec.IsRecording() {
		dec.SetAttributes(telemetry.AttrBatchSize.Int(len(tr.verify)))
	}
	dec.End(trace.WithTimestamp(end))
	if sp.IsRecording() {
		sp.SetAttributes(telemetry.AttrStatus.String(string(r.Status)))
		if r.Status == events.StatusOK {
			sp.SetAttributes(telemetry.AttrAccepted.Int(r.Accepted))
			if p := tr.plan; p != nil && r.DraftBudget != nil {
				sp.SetAttributes(telemetry.AttrBudget.Int(*r.DraftBudget), telemetry.AttrPlanReason.String(p.Reason),
					telemetry.AttrPlanTokens.Int(p.Tokens), telemetry.AttrPlanPassMs.Float64(p.PassMs),
					telemetry.AttrPlanGoodput.Float64(p.Goodput))
				if m, ok := tr.w.tracker.Acceptance(r.DeviceID, *r.DraftBudget); ok {
					sp.SetAttributes(telemetry.AttrExpectedAccepted.Float64(m))
				}
			}
		} else {
			sp.SetStatus(codes.Error, r.Reason)
		}
	}
	tr.w.tel.Inject(vctx, rev)
	_, pub := tr.w.tracer.Start(vctx, "verifier.publish", trace.WithSpanKind(trace.SpanKindProducer))
	if pub.IsRecording() {
		pub.SetAttributes(telemetry.AttrMsgSystem.String("nats"), telemetry.AttrMsgDest.String(r.NATSSubject()),
			telemetry.AttrMsgOpType.String("send"), telemetry.AttrMsgID.String(r.MsgID()), telemetry.AttrCEEventType.String(rev.Type()))
	}
	tr.publish[i] = pub
}

// end ends every span, marking them failed with err.
func (tr *batchTrace) end(err error) {
	if tr.batch == nil {
		return
	}
	for _, group := range [][]trace.Span{tr.publish, tr.verify, {tr.batch}} {
		for _, sp := range group {
			if sp == nil {
				continue
			}
			if err != nil {
				sp.RecordError(err)
				sp.SetStatus(codes.Error, "batch failed")
			}
			sp.End()
		}
	}
}
