// Package telemetry is SLED's OpenTelemetry set-up, apart from messaging: the
// tracer and meter providers (Setup), the metric instruments every role records
// (Metrics), trace context carried in CloudEvents (Inject, Extract), and the span
// attribute names, after OpenTelemetry's messaging and CloudEvents conventions.
// A nil *Telemetry records nothing.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	promclient "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/sled-project/sled/events"
)

// Trace exporters of Config.Traces.
const (
	TracesNone     = "none"      // no tracing (default): spans are no-ops
	TracesStdout   = "stdout"    // pretty-printed JSON spans on standard output
	TracesOTLP     = "otlp"      // OTLP, protocol from OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (default http/protobuf)
	TracesOTLPGRPC = "otlp-grpc" // OTLP over gRPC
	TracesOTLPHTTP = "otlp-http" // OTLP over HTTP (protobuf)
)

// Config configures Setup. Zero fields take the documented
// defaults.
type Config struct {
	// ServiceName is the service.name resource attribute, e.g. "sled" or
	// "sled-verifier". OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override
	// it. Default "sled".
	ServiceName string
	// Traces picks the span exporter: TracesNone, TracesStdout, TracesOTLP,
	// TracesOTLPGRPC or TracesOTLPHTTP. Empty means OTEL_TRACES_EXPORTER
	// (otlp, console or none), else none. The OTLP exporters read the standard
	// OTEL_EXPORTER_OTLP_* variables (endpoint, headers, TLS, timeout).
	Traces string
	// SampleRatio is the fraction of rounds traced, in (0, 1], parent-based (a
	// batch or verification is traced when its round is). Zero means
	// OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, else every round.
	SampleRatio float64
	// SpanExporter, if set, receives every span (through a batch span
	// processor, like the exporters Traces names), overriding Traces: for tests
	// (e.g. tracetest.InMemoryExporter, read after Telemetry.Flush).
	SpanExporter sdktrace.SpanExporter
	// MetricsAddr, if set, serves the Prometheus text format on
	// http://MetricsAddr/metrics ("127.0.0.1:0" picks a free port; see
	// Telemetry.MetricsAddr). Empty means no metrics: instruments are no-ops.
	MetricsAddr string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Telemetry is where instrumented components send spans and metrics: a tracer
// provider, the SLED instruments (Metrics) and the W3C TraceContext
// propagator that carries a round's context in CloudEvents' traceparent and
// tracestate. A nil *Telemetry is valid and records nothing (see Or).
type Telemetry struct {
	// TracerProvider creates the components' tracers.
	TracerProvider trace.TracerProvider
	// Metrics are the SLED instruments.
	Metrics *Metrics
	// Propagator injects and extracts trace context.
	Propagator propagation.TextMapPropagator

	metricsAddr string
	handler     http.Handler
	flush       func(context.Context) error
	shutdown    []func(context.Context) error
	once        sync.Once
	err         error
}

var nopTelemetry = sync.OnceValue(func() *Telemetry {
	return &Telemetry{
		TracerProvider: tracenoop.NewTracerProvider(),
		Metrics:        NewMetrics(metricnoop.NewMeterProvider()),
		Propagator:     propagation.TraceContext{},
	}
})

// Nop returns a Telemetry that records nothing, at the cost of a
// few no-op calls per round.
func Nop() *Telemetry { return nopTelemetry() }

// Or returns t, or Nop when t is nil.
func (t *Telemetry) Or() *Telemetry {
	if t == nil {
		return Nop()
	}
	return t
}

// Tracer returns the tracer of an instrumentation scope (a package path).
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.Or().TracerProvider.Tracer(name) }

// Tracing reports whether spans are recorded anywhere.
func (t *Telemetry) Tracing() bool {
	_, nop := t.Or().TracerProvider.(tracenoop.TracerProvider)
	return !nop
}

// MetricsAddr is the address the /metrics endpoint listens on ("" without one).
func (t *Telemetry) MetricsAddr() string {
	if t == nil {
		return ""
	}
	return t.metricsAddr
}

// MetricsHandler serves the Prometheus text format, or 404 without metrics.
func (t *Telemetry) MetricsHandler() http.Handler {
	if t == nil || t.handler == nil {
		return http.NotFoundHandler()
	}
	return t.handler
}

// Inject writes the trace context of ctx into ev's TraceParent and TraceState
// (nothing when ctx holds no sampled or remote span).
func (t *Telemetry) Inject(ctx context.Context, ev *events.Event) {
	c := eventCarrier{ev}
	t.Or().Propagator.Inject(ctx, c)
}

// Extract returns ctx with the remote span context of ev's trace headers, if
// any.
func (t *Telemetry) Extract(ctx context.Context, ev *events.Event) context.Context {
	if ev.TraceParent == "" {
		return ctx
	}
	return t.Or().Propagator.Extract(ctx, eventCarrier{ev})
}

// ExtractDraft returns ctx with the round context a draft carries in its
// payload (DraftReady.TraceParent, set by the batcher), if any.
func (t *Telemetry) ExtractDraft(ctx context.Context, d *events.DraftReady) context.Context {
	if d.TraceParent == "" {
		return ctx
	}
	return t.Or().Propagator.Extract(ctx, draftCarrier{d})
}

// SpanContextOf returns the span context a traceparent/tracestate pair
// describes (invalid when empty or malformed).
func (t *Telemetry) SpanContextOf(traceparent, tracestate string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	ctx := t.Or().Propagator.Extract(context.Background(), draftCarrier{&events.DraftReady{TraceParent: traceparent, TraceState: tracestate}})
	return trace.SpanContextFromContext(ctx)
}

// eventCarrier adapts an Event's trace fields to propagation.TextMapCarrier.
type eventCarrier struct{ ev *events.Event }

func (c eventCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.ev.TraceParent
	case "tracestate":
		return c.ev.TraceState
	}
	return ""
}

func (c eventCarrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.ev.TraceParent = value
	case "tracestate":
		c.ev.TraceState = value
	}
}

func (c eventCarrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// draftCarrier adapts a DraftReady's trace fields.
type draftCarrier struct{ d *events.DraftReady }

func (c draftCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.d.TraceParent
	case "tracestate":
		return c.d.TraceState
	}
	return ""
}

func (c draftCarrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.d.TraceParent = value
	case "tracestate":
		c.d.TraceState = value
	}
}

func (c draftCarrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// Setup builds the tracer provider, the metric instruments and, with
// cfg.MetricsAddr, starts the Prometheus /metrics endpoint. Shutdown flushes
// and stops them. With the defaults (no exporter, no metrics address) it
// returns a Telemetry that records nothing.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	if cfg.ServiceName == "" {
		cfg.ServiceName = "sled"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Telemetry{Propagator: propagation.TraceContext{}}
	ok := false
	defer func() {
		if !ok {
			_ = t.Shutdown(context.Background())
		}
	}()
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", cfg.ServiceName)),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && res == nil {
		return nil, fmt.Errorf("infra: telemetry resource: %w", err)
	}

	exp := cfg.SpanExporter
	if exp == nil {
		exp, err = newSpanExporter(ctx, cfg.Traces)
		if err != nil {
			return nil, err
		}
	}
	if exp == nil {
		t.TracerProvider = tracenoop.NewTracerProvider()
	} else {
		opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithBatcher(exp)}
		if cfg.SampleRatio > 0 {
			opts = append(opts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))))
		}
		tp := sdktrace.NewTracerProvider(opts...)
		t.TracerProvider = tp
		t.flush = tp.ForceFlush
		t.shutdown = append(t.shutdown, tp.Shutdown)
	}

	if cfg.MetricsAddr == "" {
		t.Metrics = NewMetrics(metricnoop.NewMeterProvider())
		ok = true
		return t, nil
	}
	reg := promclient.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pe, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes))
	if err != nil {
		return nil, fmt.Errorf("infra: prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(pe))
	t.shutdown = append(t.shutdown, mp.Shutdown)
	t.Metrics = NewMetrics(mp)
	t.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("infra: metrics listen %s: %w", cfg.MetricsAddr, err)
	}
	t.metricsAddr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", t.handler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Error("metrics endpoint", "err", err)
		}
	}()
	t.shutdown = append(t.shutdown, srv.Shutdown)
	ok = true
	return t, nil
}

// Flush exports the spans ended so far.
func (t *Telemetry) Flush(ctx context.Context) error {
	if t == nil || t.flush == nil {
		return nil
	}
	return t.flush(ctx)
}

// Shutdown flushes pending spans and stops the exporters and the /metrics
// endpoint. It is safe to call more than once and on a nil Telemetry.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	t.once.Do(func() {
		var errs []error
		for i := len(t.shutdown) - 1; i >= 0; i-- {
			if err := t.shutdown[i](ctx); err != nil {
				errs = append(errs, err)
			}
		}
		t.err = errors.Join(errs...)
	})
	return t.err
}

// newSpanExporter returns the exporter kind names (nil for none).
func newSpanExporter(ctx context.Context, kind string) (sdktrace.SpanExporter, error) {
	if kind == "" {
		switch env := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); env {
		case "", "none":
			kind = TracesNone
		case "console":
			kind = TracesStdout
		case "otlp":
			kind = TracesOTLP
		default:
			return nil, fmt.Errorf("infra: OTEL_TRACES_EXPORTER=%q not supported (want otlp, console or none)", env)
		}
	}
	if kind == TracesOTLP {
		proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if proto == "" {
			proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		switch proto {
		case "", "http/protobuf":
			kind = TracesOTLPHTTP
		case "grpc":
			kind = TracesOTLPGRPC
		default:
			return nil, fmt.Errorf("infra: OTLP protocol %q not supported (want grpc or http/protobuf)", proto)
		}
	}
	var exp sdktrace.SpanExporter
	var err error
	switch kind {
	case TracesNone:
		return nil, nil
	case TracesStdout:
		exp, err = stdouttrace.New(stdouttrace.WithPrettyPrint())
	case TracesOTLPGRPC:
		exp, err = otlptracegrpc.New(ctx)
	case TracesOTLPHTTP:
		exp, err = otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("infra: trace exporter %q not supported (want none, stdout, otlp, otlp-grpc or otlp-http)", kind)
	}
	if err != nil {
		return nil, fmt.Errorf("infra: %s trace exporter: %w", kind, err)
	}
	return exp, nil
}

// Span attribute keys: OpenTelemetry's CloudEvents and messaging semantic
// conventions, and SLED's own.
const (
	AttrCEEventID      = attribute.Key("cloudevents.event_id")
	AttrCEEventSource  = attribute.Key("cloudevents.event_source")
	AttrCEEventType    = attribute.Key("cloudevents.event_type")
	AttrCEEventSubject = attribute.Key("cloudevents.event_subject")
	AttrMsgSystem      = attribute.Key("messaging.system")
	AttrMsgDest        = attribute.Key("messaging.destination.name")
	AttrMsgDestTmpl    = attribute.Key("messaging.destination.template")
	AttrMsgOpType      = attribute.Key("messaging.operation.type")
	AttrMsgOpName      = attribute.Key("messaging.operation.name")
	AttrMsgID          = attribute.Key("messaging.message.id")
	AttrMsgBatchCount  = attribute.Key("messaging.batch.message_count")
	AttrMsgConsumer    = attribute.Key("messaging.consumer.group.name")

	AttrDevice      = attribute.Key("sled.device")
	AttrSession     = attribute.Key("sled.session")
	AttrRound       = attribute.Key("sled.round")
	AttrDraftModel  = attribute.Key("sled.draft_model")
	AttrDrafted     = attribute.Key("sled.drafted")
	AttrAccepted    = attribute.Key("sled.accepted")
	AttrOutcome     = attribute.Key("sled.outcome")
	AttrStatus      = attribute.Key("sled.status")
	AttrPool        = attribute.Key("sled.pool")
	AttrWorker      = attribute.Key("sled.worker")
	AttrBatchID     = attribute.Key("sled.batch.id")
	AttrBatchSize   = attribute.Key("sled.batch.size")
	AttrBatchPolicy = attribute.Key("sled.batch.policy")
	// AttrServerRound marks a device's round span as one the verifier ran on
	// the device's behalf (events.VerifyResult.ServerNext): the device sent
	// nothing, so the span has a "drafter.wait" child and no publish.
	AttrServerRound = attribute.Key("sled.server_round")
	// The goodput policy's inputs and choice, on a round's verify span.
	AttrBudget           = attribute.Key("sled.goodput.budget")
	AttrPlanReason       = attribute.Key("sled.goodput.reason")
	AttrPlanTokens       = attribute.Key("sled.goodput.pass_tokens")
	AttrPlanPassMs       = attribute.Key("sled.goodput.pass_ms")
	AttrPlanGoodput      = attribute.Key("sled.goodput.tokens_per_second")
	AttrExpectedAccepted = attribute.Key("sled.goodput.expected_accepted")
)

// EventAttrs are the CloudEvents and messaging attributes of a span that
// sends (op "send") or receives (op "receive" or "process") ev on NATS
// subject. Call it after Encode (or Publish) so that the event id is set.
func EventAttrs(ev *events.Event, subject, op string) []attribute.KeyValue {
	a := []attribute.KeyValue{
		AttrCEEventID.String(ev.ID), AttrCEEventType.String(ev.Type()),
		AttrCEEventSource.String(ev.Source),
		AttrMsgSystem.String("nats"), AttrMsgDest.String(subject), AttrMsgDestTmpl.String(events.SubjectTemplate(subject)),
		AttrMsgOpType.String(op),
	}
	if ev.Data != nil {
		a = append(a, AttrCEEventSubject.String(ev.Data.CESubject()), AttrMsgID.String(ev.Data.MsgID()))
	}
	return a
}
