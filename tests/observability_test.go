package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/nats-io/nats.go"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/telemetry"
	"github.com/sled-project/sled/textgen"
)

func attrOf(s tracetest.SpanStub, k attribute.Key) (attribute.Value, bool) {
	for _, a := range s.Attributes {
		if a.Key == k {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

func hasLink(s tracetest.SpanStub, sc trace.SpanContext) bool {
	for _, l := range s.Links {
		if l.SpanContext.TraceID() == sc.TraceID() && l.SpanContext.SpanID() == sc.SpanID() {
			return true
		}
	}
	return false
}

// TestTraceOneRound generates with tracing into an in-memory exporter, over
// real NATS and the real models, and checks that every round is one trace:
// the device's round span is the root, and the device's (draft, publish,
// wait), the batcher's (queue) and the verifier's (verify, with decode and
// publish under it) spans of that round are its descendants with its trace
// id; batches have their own trace, linked to each round they hold.
func TestTraceOneRound(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Config{SpanExporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(ctx)
	s := start(t, services.UpConfig{Drafts: []string{testmodels.Path(t, testmodels.Draft4L)}, Devices: 1, Telemetry: tel})
	g := s.Generator(0)
	prompt, err := g.Model().Tokenize(prompts[0], true)
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	res, err := g.Generate(gctx, textgen.Request{Prompt: prompt, MaxTokens: 32}, func(textgen.Chunk) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // ends the verifier's last publish spans
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans()
	byName := map[string][]tracetest.SpanStub{}
	children := map[trace.SpanID][]tracetest.SpanStub{}
	for _, sp := range spans {
		byName[sp.Name] = append(byName[sp.Name], sp)
		if sp.Parent.IsValid() {
			children[sp.Parent.SpanID()] = append(children[sp.Parent.SpanID()], sp)
		}
	}
	rounds := byName["sled.round"]
	var ok []tracetest.SpanStub
	for _, r := range rounds {
		if v, _ := attrOf(r, telemetry.AttrOutcome); v.AsString() == "ok" {
			ok = append(ok, r)
		}
	}
	if len(ok) != res.Stats.Rounds || len(ok) == 0 {
		t.Fatalf("%d ok round spans (%d in all), generation reports %d rounds", len(ok), len(rounds), res.Stats.Rounds)
	}
	traces := map[trace.TraceID]bool{}
	serverRounds := 0
	for _, r := range ok {
		sc := r.SpanContext
		if r.Parent.IsValid() {
			t.Fatalf("round span has parent %v: a round must be the root of its trace", r.Parent)
		}
		if traces[sc.TraceID()] {
			t.Fatalf("two rounds share trace %s", sc.TraceID())
		}
		traces[sc.TraceID()] = true
		round, _ := attrOf(r, telemetry.AttrRound)
		kids := map[string][]tracetest.SpanStub{}
		for _, c := range children[sc.SpanID()] {
			if c.SpanContext.TraceID() != sc.TraceID() {
				t.Fatalf("child %s of round %d in trace %s, round in %s", c.Name, round.AsInt64(), c.SpanContext.TraceID(), sc.TraceID())
			}
			kids[c.Name] = append(kids[c.Name], c)
		}
		if v, _ := attrOf(r, telemetry.AttrServerRound); v.AsBool() {
			// The verifier ran the round on the device's behalf: the device
			// only waited for its verdict.
			serverRounds++
			if len(kids["drafter.wait"]) != 1 || len(kids) != 1 {
				t.Fatalf("server round %d has children %v, want one drafter.wait", round.AsInt64(), names(children[sc.SpanID()]))
			}
			continue
		}
		for _, name := range []string{"drafter.publish", "drafter.wait", "verifier.verify"} {
			if len(kids[name]) != 1 {
				t.Fatalf("round %d has %d %s children, want 1 (children: %v)", round.AsInt64(), len(kids[name]), name, names(children[sc.SpanID()]))
			}
		}
		pub := kids["drafter.publish"][0]
		if v, _ := attrOf(pub, telemetry.AttrCEEventType); v.AsString() != events.TypeDraftReady {
			t.Fatalf("publish span event type %q", v.AsString())
		}
		if v, _ := attrOf(pub, telemetry.AttrMsgSystem); v.AsString() != "nats" {
			t.Fatalf("publish span messaging.system %q", v.AsString())
		}
		if v, _ := attrOf(pub, telemetry.AttrMsgDestTmpl); v.AsString() != "sled.draft.{pool}.{device}" || pub.SpanKind != trace.SpanKindProducer {
			t.Fatalf("publish span messaging.destination.template %q, kind %v", v.AsString(), pub.SpanKind)
		}
		if v, _ := attrOf(pub, telemetry.AttrMsgOpType); v.AsString() != "send" {
			t.Fatalf("publish span messaging.operation.type %q", v.AsString())
		}
		var queue *tracetest.SpanStub
		for i, q := range kids["batcher.queue"] {
			if v, _ := attrOf(q, telemetry.AttrOutcome); v.AsString() == "batched" {
				queue = &kids["batcher.queue"][i]
			}
		}
		if queue == nil {
			t.Fatalf("round %d has no batched batcher.queue child (children: %v)", round.AsInt64(), names(children[sc.SpanID()]))
		}
		if r2, _ := attrOf(*queue, telemetry.AttrRound); r2.AsInt64() != round.AsInt64() {
			t.Fatalf("queue span of round %d says round %d", round.AsInt64(), r2.AsInt64())
		}
		ver := kids["verifier.verify"][0]
		if v, _ := attrOf(ver, telemetry.AttrRound); v.AsInt64() != round.AsInt64() {
			t.Fatalf("verify span of round %d says round %d", round.AsInt64(), v.AsInt64())
		}
		if queue.EndTime.After(ver.StartTime) || pub.StartTime.After(queue.StartTime) {
			t.Fatalf("round %d: publish %v, queue %v-%v, verify from %v: out of order", round.AsInt64(), pub.StartTime, queue.StartTime, queue.EndTime, ver.StartTime)
		}
		ra, _ := attrOf(r, telemetry.AttrAccepted)
		va, _ := attrOf(ver, telemetry.AttrAccepted)
		if ra.AsInt64() != va.AsInt64() {
			t.Fatalf("round %d: device says %d accepted, verifier %d", round.AsInt64(), ra.AsInt64(), va.AsInt64())
		}
		vk := map[string]int{}
		for _, c := range children[ver.SpanContext.SpanID()] {
			if c.SpanContext.TraceID() != sc.TraceID() {
				t.Fatalf("%s under verifier.verify in another trace", c.Name)
			}
			vk[c.Name]++
		}
		if vk["verifier.decode"] != 1 || vk["verifier.publish"] != 1 {
			t.Fatalf("verifier.verify of round %d has children %v, want one decode and one publish", round.AsInt64(), vk)
		}
		// The batch that carried the round: its batcher span links to the
		// round, and the verifier's batch span is that span's child.
		bid, _ := attrOf(*queue, telemetry.AttrBatchID)
		if v, _ := attrOf(ver, telemetry.AttrBatchID); v.AsString() != bid.AsString() {
			t.Fatalf("round %d queued in batch %s, verified in %s", round.AsInt64(), bid.AsString(), v.AsString())
		}
		var bb *tracetest.SpanStub
		for i, b := range byName["batcher.batch"] {
			if v, _ := attrOf(b, telemetry.AttrBatchID); v.AsString() == bid.AsString() {
				bb = &byName["batcher.batch"][i]
			}
		}
		if bb == nil || !hasLink(*bb, sc) || bb.Parent.IsValid() {
			t.Fatalf("round %d: batcher.batch span of %s missing, a child, or not linked to the round", round.AsInt64(), bid.AsString())
		}
		if p, _ := attrOf(*bb, telemetry.AttrBatchPolicy); p.AsString() == "" {
			t.Fatal("batch span without sled.batch.policy")
		}
		found := false
		for _, vb := range children[bb.SpanContext.SpanID()] {
			if vb.Name == "verifier.batch" && vb.SpanContext.TraceID() == bb.SpanContext.TraceID() && hasLink(vb, sc) {
				found = true
			}
		}
		if !found {
			t.Fatalf("round %d: no verifier.batch child of batch %s linked to the round", round.AsInt64(), bid.AsString())
		}
	}
	if serverRounds != res.Stats.ServerRounds || serverRounds == len(ok) {
		t.Fatalf("%d server round spans of %d, generation reports %d server rounds", serverRounds, len(ok), res.Stats.ServerRounds)
	}
	t.Logf("%d rounds (%d run by the verifier), %d spans: one trace per round", len(ok), serverRounds, len(spans))
}

func names(ss []tracetest.SpanStub) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

// scrape is one read of a /metrics endpoint: series (name and labels, as
// printed) to value.
type scrape map[string]float64

func getMetrics(t testing.TB, addr string) scrape {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s: %s", resp.Status, b)
	}
	out := scrape{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sum adds the series of metric name whose labels include every one of want
// (each `key="value"`).
func (s scrape) sum(name string, want ...string) float64 {
	total := 0.0
	for k, v := range s {
		n, labels, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(labels, w) {
				ok = false
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// TestMetricsScrape runs generations on two devices while scraping /metrics
// over HTTP, and checks that the counters move consistently: monotonic,
// accepted <= drafted at every scrape, and at the end equal to what the
// generations report (rounds, drafted, accepted, verified tokens), with the
// server's batch, queue and verifier metrics and a rejected event counted.
func TestMetricsScrape(t *testing.T) {
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Config{MetricsAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(ctx)
	s := start(t, services.UpConfig{
		Drafts:  []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L)},
		Devices: 2, Telemetry: tel, HTTPAddr: "127.0.0.1:0",
	})
	addr := tel.MetricsAddr()
	devs := []string{s.Devices()[0].ID(), s.Devices()[1].ID()}
	counters := []string{"sled_drafted_tokens_total", "sled_accepted_tokens_total", "sled_rounds_total", "sled_tokens_total", "sled_batches_total"}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var scrapes int
	var scrapeErr error
	var slotsSeen float64 // the most slots in use in any scrape during the run
	wg.Add(1)
	go func() {
		defer wg.Done()
		prev := scrape{}
		for {
			select {
			case <-stop:
				return
			case <-time.After(25 * time.Millisecond):
			}
			m := getMetrics(t, addr)
			scrapes++
			slotsSeen = max(slotsSeen, m.sum("sled_slots_used"))
			for _, d := range devs {
				dl := `device="` + d + `"`
				if a, dr := m.sum("sled_accepted_tokens_total", dl), m.sum("sled_drafted_tokens_total", dl); a > dr {
					scrapeErr = fmt.Errorf("%s: accepted %v > drafted %v", d, a, dr)
				}
			}
			for _, c := range counters {
				if m.sum(c) < prev.sum(c) {
					scrapeErr = fmt.Errorf("%s went down: %v -> %v", c, prev.sum(c), m.sum(c))
				}
			}
			prev = m
		}
	}()
	out := runAll(t, s, prompts[:6], 48)
	close(stop)
	wg.Wait()
	if scrapeErr != nil {
		t.Fatal(scrapeErr)
	}

	// A bad draft on a device's subject: the consumer rejects it by reason.
	m := nats.NewMsg(events.DraftSubject("default", "device-bad"))
	m.Header.Set(events.HeaderSpecVersion, "1.0")
	m.Header.Set(events.HeaderType, events.TypeDraftReady)
	m.Header.Set(events.HeaderID, "bad-1")
	m.Header.Set(events.HeaderSource, "/test")
	m.Data = []byte(`{"device_id":"device-bad"}`)
	if _, err := s.JS().PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}

	type want struct{ rounds, drafted, accepted, tokens int }
	served := 0 // rounds the verifier ran on the devices' behalf: no draft reached the batcher
	wants := make([]want, len(devs))
	for i, o := range out {
		w := &wants[i%len(devs)] // runAll gives prompt i to device i mod n
		w.rounds += o.res.Stats.Rounds
		w.drafted += o.res.Stats.Drafted
		w.accepted += o.res.Stats.Accepted
		w.tokens += len(o.tokens) - o.res.Stats.Unverified
		served += o.res.Stats.ServerRounds
	}
	// The batcher records a batch after its publish is stored, so a verifier
	// can answer, and a generation end, before the batcher's goroutine counts
	// it: the server-side counters are eventually consistent with the
	// devices'. Wait for them to settle; what they settle to is checked below.
	var final scrape
	testwait.Eventually(10*time.Second, 50*time.Millisecond, func() bool {
		final = getMetrics(t, addr)
		batched := final.sum("sled_batcher_drafts_total", `outcome="batched"`)
		return final.sum("sled_events_rejected_total") >= 1 && // checked below
			final.sum("sled_queue_wait_seconds_count") == batched &&
			final.sum("sled_verify_duration_seconds_count") <= final.sum("sled_batches_total")+final.sum("sled_verifier_server_rounds_total")
	})
	t.Logf("%d scrapes during the run", scrapes)
	for i, d := range devs {
		dl := `device="` + d + `"`
		w := wants[i]
		got := want{
			rounds:   int(final.sum("sled_rounds_total", dl, `outcome="ok"`)),
			drafted:  int(final.sum("sled_drafted_tokens_total", dl)),
			accepted: int(final.sum("sled_accepted_tokens_total", dl)),
			tokens:   int(final.sum("sled_tokens_total", dl, `kind="verified"`)),
		}
		if got != w {
			t.Errorf("%s: metrics %+v, generations %+v", d, got, w)
		}
		if c := final.sum("sled_accepted_length_count", dl); int(c) != w.rounds {
			t.Errorf("%s: accepted length histogram counts %v rounds, want %d", d, c, w.rounds)
		}
		if sm := final.sum("sled_accepted_length_sum", dl); int(sm) != w.accepted {
			t.Errorf("%s: accepted length sum %v, want %d", d, sm, w.accepted)
		}
		if c := final.sum("sled_round_latency_seconds_count", dl); int(c) != w.rounds {
			t.Errorf("%s: round latency counts %v, want %d", d, c, w.rounds)
		}
		t.Logf("%s: %d rounds, acceptance %d/%d, %d tokens", d, w.rounds, w.accepted, w.drafted, w.tokens)
	}
	// Per position: accepted <= drafted, and position 0 drafted once per round
	// with a draft.
	for p := range 8 {
		pl := fmt.Sprintf(`position="%d"`, p)
		if a, dr := final.sum("sled_position_accepted_tokens_total", pl), final.sum("sled_position_drafted_tokens_total", pl); a > dr {
			t.Errorf("position %d: accepted %v > drafted %v", p, a, dr)
		}
	}
	if a, dr := final.sum("sled_position_accepted_tokens_total"), final.sum("sled_drafted_tokens_total"); a != final.sum("sled_accepted_tokens_total") || dr < a {
		t.Errorf("per-position accepted sum %v != accepted %v", a, final.sum("sled_accepted_tokens_total"))
	}
	// Server side.
	batches := final.sum("sled_batches_total")
	if batches < 1 || final.sum("sled_batch_size_count") != batches {
		t.Errorf("%v batches, batch size histogram counts %v", batches, final.sum("sled_batch_size_count"))
	}
	if q, b := final.sum("sled_queue_wait_seconds_count"), final.sum("sled_batcher_drafts_total", `outcome="batched"`); q != b || b < float64(wants[0].rounds+wants[1].rounds-served) {
		t.Errorf("queue wait counts %v drafts, batcher batched %v, devices had %d rounds of their own", q, b, wants[0].rounds+wants[1].rounds-served)
	}
	if a, da := final.sum("sled_verifier_tokens_total", `kind="accepted"`), final.sum("sled_accepted_tokens_total"); a < da {
		t.Errorf("verifier accepted %v < devices' %v", a, da)
	}
	// A busy worker verifies every queued batch in one go: one observation per
	// verification, covering one or more batches and the rounds it runs on
	// devices' behalf (at least one each, or a verification of those alone).
	serverRounds := final.sum("sled_verifier_server_rounds_total")
	if v := final.sum("sled_verify_duration_seconds_count"); v < 1 || v > batches+serverRounds {
		t.Errorf("verify time counts %v verifications for %v batches and %v server rounds", v, batches, serverRounds)
	}
	if serverRounds < float64(served) || served == 0 {
		t.Errorf("the verifier counts %v server rounds, the devices %d", serverRounds, served)
	}
	// vLLM's names: the same server-side figures.
	specDrafts, specTokens := final.sum("sled_spec_decode_num_drafts_total"), final.sum("sled_spec_decode_num_draft_tokens_total")
	specAccepted := final.sum("sled_spec_decode_num_accepted_tokens_total")
	if specDrafts != final.sum("sled_verifier_drafts_total", `status="ok"`) || specTokens != final.sum("sled_verifier_tokens_total", `kind="drafted"`) ||
		specAccepted != final.sum("sled_verifier_tokens_total", `kind="accepted"`) || specDrafts < float64(wants[0].rounds+wants[1].rounds) {
		t.Errorf("spec_decode drafts %v, draft tokens %v, accepted %v; verifier's %v, %v, %v", specDrafts, specTokens, specAccepted,
			final.sum("sled_verifier_drafts_total", `status="ok"`), final.sum("sled_verifier_tokens_total", `kind="drafted"`), final.sum("sled_verifier_tokens_total", `kind="accepted"`))
	}
	if pp := final.sum("sled_spec_decode_num_accepted_tokens_per_pos_total"); pp != specAccepted ||
		final.sum("sled_spec_decode_num_accepted_tokens_per_pos_total", `position="1"`) > final.sum("sled_spec_decode_num_accepted_tokens_per_pos_total", `position="0"`) {
		t.Errorf("accepted per position sums to %v, accepted %v", pp, specAccepted)
	}
	// Every generation starts a session; with no fault none is resynced (a
	// first round is not a resync: the devices report none either).
	devResyncs := 0
	for _, o := range out {
		devResyncs += o.res.Stats.Resyncs
	}
	if ss, rs := final.sum("sled_verifier_sessions_total"), final.sum("sled_verifier_resyncs_total"); int(ss) != len(out) || int(rs) != devResyncs {
		t.Errorf("verifier: %v sessions, %v resyncs; %d generations, devices report %d resyncs", ss, rs, len(out), devResyncs)
	}
	// A generation's end releases its slot, so once all have ended the gauge
	// may read 0; while they ran it held a session.
	if u, c := final.sum("sled_slots_used"), final.sum("sled_slots_capacity"); max(u, slotsSeen) < 1 || u > c || slotsSeen > c {
		t.Errorf("slots used %v at the end, at most %v during the run, of %v", u, slotsSeen, c)
	}
	if r := final.sum("sled_events_rejected_total", `reason=`); r < 1 {
		var keys []string
		for k := range final {
			if strings.HasPrefix(k, "sled_events") {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		t.Errorf("rejected event not counted: %v", keys)
	}
	// One request through the API, for the GenAI metrics.
	resp, err := http.Post("http://"+s.HTTPAddr()+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"Tom and his dog"}],"max_tokens":10}`))
	if err != nil {
		t.Fatal(err)
	}
	var chat struct {
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	err = json.NewDecoder(resp.Body).Decode(&chat)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("chat: %d %v", resp.StatusCode, err)
	}
	var api scrape
	testwait.Eventually(10*time.Second, 50*time.Millisecond, func() bool {
		api = getMetrics(t, addr)
		return api.sum("gen_ai_client_token_usage_count") >= 2
	})
	// OpenTelemetry's GenAI metrics, from the API request.
	chatL := `gen_ai_operation_name="chat"`
	if api.sum("gen_ai_server_time_to_first_token_seconds_count", chatL) != 1 || api.sum("gen_ai_server_time_per_output_token_seconds_count", chatL) != 1 ||
		int(api.sum("gen_ai_client_token_usage_sum", chatL, `gen_ai_token_type="input"`)) != chat.Usage.PromptTokens ||
		int(api.sum("gen_ai_client_token_usage_sum", chatL, `gen_ai_token_type="output"`)) != chat.Usage.CompletionTokens {
		var keys []string
		for k := range final {
			if strings.HasPrefix(k, "gen_ai") {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		t.Errorf("GenAI metrics for usage %+v: %v", chat.Usage, keys)
	}

}
