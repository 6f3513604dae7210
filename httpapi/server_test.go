package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/httpapi"
)

const (
	onceUpon = "Once upon a time"
	// known is the target's greedy continuation of onceUpon.
	known = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."
)

type fixture struct {
	srv    *httptest.Server
	gens   map[string]*greedyGen
	client *httpapi.Client
}

// newFixture serves one greedy device per name (default "dev0") over real HTTP.
func newFixture(t *testing.T, edit func(*httpapi.Config, map[string]*greedyGen), names ...string) *fixture {
	t.Helper()
	if len(names) == 0 {
		names = []string{"dev0"}
	}
	f := &fixture{gens: map[string]*greedyGen{}}
	cfg := httpapi.Config{ModelName: "stories", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, n := range names {
		g := newGreedyGen(t, 0)
		f.gens[n] = g
		cfg.Devices = append(cfg.Devices, httpapi.Device{Name: n, Generator: g})
	}
	if edit != nil {
		edit(&cfg, f.gens)
	}
	f.srv = httptest.NewServer(httpapi.New(cfg))
	t.Cleanup(f.srv.Close)
	f.client = &httpapi.Client{BaseURL: f.srv.URL}
	return f
}

func ptr[T any](v T) *T { return &v }

// post sends body to path and returns the status and the response body.
func (f *fixture) post(t *testing.T, path, body string, header ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func complete(t *testing.T, f *fixture, req httpapi.CompletionRequest) *httpapi.Completion {
	t.Helper()
	out, err := f.client.Complete(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// streamComplete streams req and returns the deltas and the assembled result.
func streamComplete(t *testing.T, f *fixture, req httpapi.CompletionRequest) ([]string, *httpapi.Completion) {
	t.Helper()
	var deltas []string
	out, err := f.client.Complete(context.Background(), req, func(s string) error {
		deltas = append(deltas, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return deltas, out
}

func TestCompletionKnownContinuation(t *testing.T) {
	f := newFixture(t, nil)
	out := complete(t, f, httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(200)})
	if len(out.Choices) != 1 {
		t.Fatalf("choices = %d", len(out.Choices))
	}
	text := out.Choices[0].Text
	if !strings.HasPrefix(text, known) {
		t.Fatalf("text = %q, want prefix %q", text, known)
	}
	if out.Object != "text_completion" || out.Model != "stories" || !strings.HasPrefix(out.ID, "cmpl-") || out.Created == 0 {
		t.Errorf("envelope = %+v", out)
	}
	u := out.Usage
	if u == nil || u.PromptTokens == 0 || u.CompletionTokens == 0 || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
		t.Errorf("usage = %+v", u)
	}
	if out.SLED == nil || out.SLED.Device != "dev0" || out.SLED.Rounds == 0 || out.SLED.UnverifiedSpans != nil {
		t.Errorf("sled = %+v", out.SLED)
	}
	if fr := out.Choices[0].FinishReason; fr == nil || (*fr != "stop" && *fr != "length") {
		t.Errorf("finish_reason = %v", fr)
	}

	// max_tokens bounds the output and finishes with "length".
	short := complete(t, f, httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(5)})
	if short.Usage.CompletionTokens != 5 || *short.Choices[0].FinishReason != "length" || !strings.HasPrefix(known, short.Choices[0].Text) {
		t.Errorf("max_tokens 5: %q, usage %+v, finish %s", short.Choices[0].Text, short.Usage, *short.Choices[0].FinishReason)
	}

	// A prompt of token ids gives the same as its text.
	toks, err := targetModel(t).Tokenize(onceUpon, true)
	if err != nil {
		t.Fatal(err)
	}
	byTokens := complete(t, f, httpapi.CompletionRequest{Prompt: &httpapi.Prompt{Tokens: toks}, MaxTokens: ptr(5)})
	if byTokens.Choices[0].Text != short.Choices[0].Text {
		t.Errorf("token prompt gave %q, text prompt %q", byTokens.Choices[0].Text, short.Choices[0].Text)
	}
}

func TestStreamEqualsNonStream(t *testing.T) {
	f := newFixture(t, nil)
	req := httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(60)}
	whole := complete(t, f, req)
	deltas, streamed := streamComplete(t, f, req)
	if len(deltas) < 10 {
		t.Errorf("only %d deltas: not streamed token by token", len(deltas))
	}
	if got, want := strings.Join(deltas, ""), whole.Choices[0].Text; got != want {
		t.Fatalf("stream %q != non-stream %q", got, want)
	}
	if *streamed.Choices[0].FinishReason != *whole.Choices[0].FinishReason || *streamed.Usage != *whole.Usage {
		t.Errorf("stream end %s %+v, non-stream %s %+v", *streamed.Choices[0].FinishReason, streamed.Usage, *whole.Choices[0].FinishReason, whole.Usage)
	}
	if streamed.SLED == nil || streamed.SLED.Device != "dev0" {
		t.Errorf("stream sled = %+v", streamed.SLED)
	}
}

func TestStreamWireFormat(t *testing.T) {
	f := newFixture(t, nil)
	resp, err := http.Post(f.srv.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":8,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("line %q is not a data line", line)
		}
		events = append(events, data)
	}
	if len(events) < 3 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("events = %q", events)
	}
	var first, last httpapi.ChatCompletionChunk
	json.Unmarshal([]byte(events[0]), &first)
	json.Unmarshal([]byte(events[len(events)-2]), &last)
	if first.Object != "chat.completion.chunk" || first.Choices[0].Delta.Role != "assistant" || first.Choices[0].FinishReason != nil || first.Usage != nil {
		t.Errorf("first chunk %s", events[0])
	}
	if last.Choices[0].FinishReason == nil || *last.Choices[0].FinishReason != "length" || last.Usage == nil || last.Usage.CompletionTokens != 8 || last.SLED == nil {
		t.Errorf("last chunk %s", events[len(events)-2])
	}
}

func TestChatPlainFallback(t *testing.T) {
	f := newFixture(t, nil)
	m := targetModel(t)
	if m.Info().ChatTemplate != "" {
		t.Fatal("the test model has a chat template: this test covers the plain fallback")
	}
	msgs := []httpapi.ChatMessage{{Role: "system", Content: "Tell a story."}, {Role: "user", Content: onceUpon}}
	req := httpapi.ChatCompletionRequest{Messages: msgs, MaxCompletionTokens: ptr(30)}
	out, err := f.client.Chat(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Tokenize("system: Tell a story.\nuser: Once upon a time\nassistant:", true)
	if err != nil {
		t.Fatal(err)
	}
	c := out.Choices[0]
	if out.Object != "chat.completion" || c.Message.Role != "assistant" || c.Message.Content == "" || c.FinishReason == "" {
		t.Errorf("response %+v", out)
	}
	if out.Usage.PromptTokens != len(want) || out.Usage.CompletionTokens == 0 {
		t.Errorf("usage %+v, want %d prompt tokens", out.Usage, len(want))
	}
	var deltas []string
	streamed, err := f.client.Chat(context.Background(), req, func(s string) error { deltas = append(deltas, s); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(deltas, "") != string(c.Message.Content) || streamed.Choices[0].Message.Content != c.Message.Content ||
		streamed.Choices[0].FinishReason != c.FinishReason {
		t.Errorf("streamed %q (%s), non-stream %q (%s)", streamed.Choices[0].Message.Content, streamed.Choices[0].FinishReason, c.Message.Content, c.FinishReason)
	}

	// Content as an array of text parts is the same conversation.
	status, body := f.post(t, "/v1/chat/completions", `{"messages":[{"role":"system","content":[{"type":"text","text":"Tell "},{"type":"text","text":"a story."}]},{"role":"user","content":"Once upon a time"}],"max_tokens":30}`)
	var parts httpapi.ChatCompletion
	if status != http.StatusOK || json.Unmarshal(body, &parts) != nil || parts.Choices[0].Message.Content != c.Message.Content {
		t.Errorf("content parts: %d %s", status, body)
	}
}

// spanningStop finds, in the known continuation, a stop string made of the last two
// bytes of one token's text and the first two of the next, and the index where it
// first occurs.
func spanningStop(t *testing.T) (stop string, at int) {
	t.Helper()
	m := targetModel(t)
	g := newGreedyGen(t, 0)
	prompt, _ := m.Tokenize(onceUpon, true)
	res, err := g.Generate(context.Background(), textgenRequest(prompt, 30), func(textgenChunk) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	text := m.Detokenize(res.Tokens)
	for i := 3; i+1 < len(res.Tokens); i++ {
		a, b := string(m.Piece(res.Tokens[i])), string(m.Piece(res.Tokens[i+1]))
		if len(a) >= 2 && len(b) >= 2 {
			stop = a[len(a)-2:] + b[:2]
			return stop, strings.Index(text, stop)
		}
	}
	t.Fatal("no two adjacent tokens of two bytes or more")
	return "", 0
}

func TestStopStrings(t *testing.T) {
	f := newFixture(t, nil)
	span, at := spanningStop(t)
	t.Logf("stop string across two tokens: %q at %d", span, at)
	cases := []struct {
		name string
		stop httpapi.StopSequences
		want string
	}{
		{"one token", httpapi.StopSequences{" Lily"}, ", there was a little girl named"},
		{"spans two tokens", httpapi.StopSequences{span}, known[:at]},
		{"earliest of several", httpapi.StopSequences{"park", "girl", "zzz"}, ", there was a little "},
		{"at the very start", httpapi.StopSequences{","}, ""},
		{"never occurs", httpapi.StopSequences{"dragon"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(40), Stop: tc.stop}
			whole := complete(t, f, req)
			deltas, streamed := streamComplete(t, f, req)
			text := whole.Choices[0].Text
			if tc.name == "never occurs" {
				if !strings.HasPrefix(text, known[:40]) || *whole.Choices[0].FinishReason != "length" {
					t.Fatalf("text %q finish %s", text, *whole.Choices[0].FinishReason)
				}
			} else if text != tc.want || *whole.Choices[0].FinishReason != "stop" {
				t.Fatalf("text %q finish %s, want %q stop", text, *whole.Choices[0].FinishReason, tc.want)
			}
			if got := strings.Join(deltas, ""); got != text || streamed.Choices[0].Text != text {
				t.Fatalf("streamed %q, want %q", got, text)
			}
			// No delta ever carried text that turned out to belong to a stop string.
			sent := 0
			for _, d := range deltas {
				sent += len(d)
				if sent > len(text) {
					t.Fatalf("deltas %q went past the stop", deltas)
				}
			}
			if *streamed.Choices[0].FinishReason != *whole.Choices[0].FinishReason {
				t.Errorf("stream finish %s", *streamed.Choices[0].FinishReason)
			}
		})
	}
	// A single string, not an array, is accepted too.
	status, body := f.post(t, "/v1/completions", `{"prompt":"Once upon a time","max_tokens":40,"stop":" Lily"}`)
	var c httpapi.Completion
	if status != http.StatusOK || json.Unmarshal(body, &c) != nil || c.Choices[0].Text != ", there was a little girl named" {
		t.Errorf("stop as string: %d %s", status, body)
	}
}

func TestUnverifiedSpans(t *testing.T) {
	f := newFixture(t, func(_ *httpapi.Config, g map[string]*greedyGen) { g["dev0"].unverifiedFrom = 4 })
	m := targetModel(t)
	prompt, _ := m.Tokenize(onceUpon, true)
	first4 := m.Detokenize(mustGenerate(t, prompt, 4))
	req := httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(10)}
	for _, stream := range []bool{false, true} {
		var out *httpapi.Completion
		if stream {
			_, out = streamComplete(t, f, req)
		} else {
			out = complete(t, f, req)
		}
		text := []rune(out.Choices[0].Text)
		want := [][2]int{{len([]rune(first4)), len(text)}}
		if out.SLED.UnverifiedTokens != 6 || len(out.SLED.UnverifiedSpans) != 1 || out.SLED.UnverifiedSpans[0] != want[0] {
			t.Errorf("stream=%v: sled %+v, want 6 unverified tokens, spans %v of %q", stream, out.SLED, want, string(text))
		}
	}
	// A stop string cuts the spans too.
	req.Stop = httpapi.StopSequences{"girl"}
	out := complete(t, f, req)
	if n := len([]rune(out.Choices[0].Text)); len(out.SLED.UnverifiedSpans) != 1 || out.SLED.UnverifiedSpans[0][1] != n {
		t.Errorf("with stop: %q, spans %v", out.Choices[0].Text, out.SLED.UnverifiedSpans)
	}
}

type errorCase struct {
	name, method, path, body string
	header                   []string
	status                   int
	typ, code, param         string
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t, func(c *httpapi.Config, _ map[string]*greedyGen) {
		c.MaxPromptTokens = 300
		c.MaxTokensLimit = 1000
		c.MaxBodyBytes = 8 << 10
	})
	long := strings.Repeat("Once upon a time there was a cat. ", 40) // over 300 tokens
	mid := strings.Repeat("Once upon a time. ", 30)                  // under 300 tokens, too many with 400 more
	huge := `{"prompt":"` + strings.Repeat("a", 9<<10) + `"}`
	const P, C = "/v1/completions", "/v1/chat/completions"
	invalid, notFound := http.StatusBadRequest, http.StatusNotFound
	cases := []errorCase{
		{name: "malformed JSON", path: P, body: `{"prompt":`, status: invalid},
		{name: "not an object", path: P, body: `[1,2]`, status: invalid},
		{name: "trailing data", path: P, body: `{"prompt":"x"} {}`, status: invalid},
		{name: "empty body", path: P, body: ``, status: invalid},
		{name: "missing prompt", path: P, body: `{"max_tokens":5}`, status: invalid, param: "prompt"},
		{name: "null prompt", path: P, body: `{"prompt":null}`, status: invalid, param: "prompt"},
		{name: "prompt wrong type", path: P, body: `{"prompt":{"a":1}}`, status: invalid},
		{name: "two prompts", path: P, body: `{"prompt":["a","b"]}`, status: invalid},
		{name: "empty prompt array", path: P, body: `{"prompt":[]}`, status: invalid},
		{name: "bad token id", path: P, body: `{"prompt":[1,99999]}`, status: invalid, param: "prompt"},
		{name: "negative token id", path: P, body: `{"prompt":[-1]}`, status: invalid, param: "prompt"},
		{name: "max_tokens zero", path: P, body: `{"prompt":"x","max_tokens":0}`, status: invalid, param: "max_tokens"},
		{name: "max_tokens negative", path: P, body: `{"prompt":"x","max_tokens":-3}`, status: invalid, param: "max_tokens"},
		{name: "max_tokens over limit", path: P, body: `{"prompt":"x","max_tokens":1001}`, status: invalid, param: "max_tokens"},
		{name: "max_tokens string", path: P, body: `{"prompt":"x","max_tokens":"5"}`, status: invalid, param: "max_tokens"},
		{name: "max_tokens huge number", path: P, body: `{"prompt":"x","max_tokens":1e400}`, status: invalid},
		{name: "temperature negative", path: P, body: `{"prompt":"x","temperature":-0.1}`, status: invalid, param: "temperature"},
		{name: "temperature too high", path: P, body: `{"prompt":"x","temperature":2.5}`, status: invalid, param: "temperature"},
		{name: "sled sampling unknown", path: P, body: `{"prompt":"x","temperature":0.8,"sled":{"sampling":"beam"}}`, status: invalid, param: "sled.sampling"},
		{name: "sled draft_top_k zero", path: P, body: `{"prompt":"x","sled":{"sampling":"topk","draft_top_k":0}}`, status: invalid, param: "sled.draft_top_k"},
		{name: "sled draft_top_k over", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"sled":{"draft_top_k":65}}`, status: invalid, param: "sled.draft_top_k"},
		{name: "sled tpot negative", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"sled":{"tpot_ms":-1}}`, status: invalid, param: "sled.tpot_ms"},
		{name: "sled wrong type", path: P, body: `{"prompt":"x","sled":"coupled"}`, status: invalid},
		{name: "five stops", path: P, body: `{"prompt":"x","stop":["a","b","c","d","e"]}`, status: invalid, param: "stop"},
		{name: "stop wrong type", path: P, body: `{"prompt":"x","stop":5}`, status: invalid},
		{name: "n two", path: P, body: `{"prompt":"x","n":2}`, status: invalid, param: "n"},
		{name: "echo", path: P, body: `{"prompt":"x","echo":true}`, status: invalid, param: "echo"},
		{name: "prompt over MaxPromptTokens", path: P, body: `{"prompt":"` + long + `"}`, status: invalid, code: "context_length_exceeded"},
		{name: "prompt plus max_tokens over context", path: P, body: `{"prompt":"` + mid + `","max_tokens":400}`, status: invalid, code: "context_length_exceeded"},
		{name: "body too large", path: P, body: huge, status: http.StatusRequestEntityTooLarge, code: "request_too_large"},
		{name: "unknown model", path: P, body: `{"model":"gpt-4","prompt":"x"}`, status: notFound, code: "model_not_found", param: "model"},
		{name: "unknown device", path: P, body: `{"prompt":"x"}`, header: []string{httpapi.DeviceHeader, "nope"}, status: notFound, code: "device_not_found"},
		{name: "model and header disagree", path: P, body: `{"model":"dev0","prompt":"x"}`, header: []string{httpapi.DeviceHeader, "other"}, status: invalid},
		{name: "missing messages", path: C, body: `{"max_tokens":5}`, status: invalid, param: "messages"},
		{name: "empty messages", path: C, body: `{"messages":[]}`, status: invalid, param: "messages"},
		{name: "bad role", path: C, body: `{"messages":[{"role":"wizard","content":"hi"}]}`, status: invalid, param: "messages[0].role"},
		{name: "missing role", path: C, body: `{"messages":[{"content":"hi"}]}`, status: invalid},
		{name: "image content", path: C, body: `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, status: invalid},
		{name: "chat temperature", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"temperature":9}`, status: invalid, param: "temperature"},
		{name: "chat max_completion_tokens zero", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0}`, status: invalid, param: "max_completion_tokens"},
		{name: "chat prompt too long", path: C, body: `{"messages":[{"role":"user","content":"` + long + `"}]}`, status: invalid, code: "context_length_exceeded"},
		{name: "chat stream bad model", path: C, body: `{"model":"x","stream":true,"messages":[{"role":"user","content":"hi"}]}`, status: notFound, code: "model_not_found"},
		// Parameters are honoured or refused by name, never dropped.
		{name: "presence_penalty", path: P, body: `{"prompt":"x","presence_penalty":0.5}`, status: invalid, param: "presence_penalty"},
		{name: "frequency_penalty", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"frequency_penalty":-1}`, status: invalid, param: "frequency_penalty"},
		{name: "response_format json", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}`, status: invalid, param: "response_format"},
		{name: "tools", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`, status: invalid, param: "tools"},
		{name: "logit_bias", path: P, body: `{"prompt":"x","logit_bias":{"5":100}}`, status: invalid, param: "logit_bias"},
		{name: "best_of", path: P, body: `{"prompt":"x","best_of":3}`, status: invalid, param: "best_of"},
		{name: "unknown field", path: P, body: `{"prompt":"x","top_a":0.1}`, status: invalid, param: "top_a"},
		{name: "top_k", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"top_k":40}`, status: invalid, param: "top_k"},
		{name: "top_p over one", path: P, body: `{"prompt":"x","top_p":1.5}`, status: invalid, param: "top_p"},
		{name: "top_logprobs without logprobs", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"top_logprobs":3}`, status: invalid, param: "top_logprobs"},
		{name: "top_logprobs over limit", path: C, body: `{"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":21}`, status: invalid, param: "top_logprobs"},
		{name: "completion logprobs negative", path: P, body: `{"prompt":"x","logprobs":-1}`, status: invalid, param: "logprobs"},
		{name: "invalid UTF-8 prompt", path: P, body: "{\"prompt\":\"caf\xe9\"}", status: invalid, code: "invalid_utf8"},
		{name: "invalid UTF-8 message", path: C, body: "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", status: invalid, code: "invalid_utf8"},
		{name: "lone surrogate escape", path: P, body: `{"prompt":"x\ud800y"}`, status: invalid, code: "invalid_utf8"},
		{name: "unknown model by id", method: http.MethodGet, path: "/v1/models/gpt-4", status: notFound, code: "model_not_found"},
		{name: "GET completions", method: http.MethodGet, path: P, status: http.StatusMethodNotAllowed},
		{name: "DELETE models", method: http.MethodDelete, path: "/v1/models", status: http.StatusMethodNotAllowed},
		{name: "POST healthz", path: "/healthz", body: `{}`, status: http.StatusMethodNotAllowed},
		{name: "unknown route", path: "/v1/embeddings", body: `{}`, status: notFound, code: "not_found"},
		{name: "root", method: http.MethodGet, path: "/", status: notFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkError(t, f, tc)
		})
	}
}

func checkError(t *testing.T, f *fixture, tc errorCase) {
	t.Helper()
	method := tc.method
	if method == "" {
		method = http.MethodPost
	}
	req, _ := http.NewRequest(method, f.srv.URL+tc.path, strings.NewReader(tc.body))
	for i := 0; i+1 < len(tc.header); i += 2 {
		req.Header.Set(tc.header[i], tc.header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != tc.status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
	}
	var eb struct {
		Error map[string]any `json:"error"`
	}
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error == nil {
		t.Fatalf("body is not an OpenAI error: %s", body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := eb.Error[k]; !ok {
			t.Errorf("error has no %q: %s", k, body)
		}
	}
	if msg, _ := eb.Error["message"].(string); msg == "" {
		t.Errorf("empty message: %s", body)
	}
	typ := tc.typ
	if typ == "" {
		typ = "invalid_request_error"
	}
	if eb.Error["type"] != typ {
		t.Errorf("type %v, want %s", eb.Error["type"], typ)
	}
	if tc.code != "" && eb.Error["code"] != tc.code {
		t.Errorf("code %v, want %s", eb.Error["code"], tc.code)
	}
	if tc.param != "" && eb.Error["param"] != tc.param {
		t.Errorf("param %v, want %s", eb.Error["param"], tc.param)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
}

func TestGeneratorErrors(t *testing.T) {
	f := newFixture(t, func(c *httpapi.Config, g map[string]*greedyGen) {
		g["broken"].failAfter = 3
		// A device whose context is shorter than the model's: the server's length
		// check passes and the generator refuses with ErrInvalidRequest.
		small := newGreedyGen(t, 16)
		c.Devices = append(c.Devices, httpapi.Device{Name: "small", Generator: small})
	}, "dev0", "broken")
	long := `"` + strings.Repeat("Once upon a time. ", 5) + `"`
	checkError(t, f, errorCase{path: "/v1/completions", body: `{"prompt":` + long + `,"max_tokens":3}`,
		header: []string{httpapi.DeviceHeader, "small"}, status: http.StatusBadRequest, code: "context_length_exceeded"})
	checkError(t, f, errorCase{path: "/v1/completions", body: `{"prompt":"Once","max_tokens":10}`,
		header: []string{httpapi.DeviceHeader, "broken"}, status: http.StatusInternalServerError, typ: "server_error"})

	// Mid-stream, the error arrives as an error event and the stream has no [DONE].
	c := &httpapi.Client{BaseURL: f.srv.URL, Device: "broken"}
	var got string
	_, err := c.Complete(context.Background(), httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(10)},
		func(s string) error { got += s; return nil })
	var ae *httpapi.APIError
	if !errors.As(err, &ae) || ae.Type != "server_error" || !strings.Contains(ae.Message, errDeviceBroke.Error()) {
		t.Fatalf("stream error = %v", err)
	}
	if !strings.HasPrefix(known, got) || got == "" {
		t.Errorf("text before the error %q", got)
	}
	// The client reports API errors as *APIError with the status.
	_, err = f.client.Complete(context.Background(), httpapi.CompletionRequest{Prompt: httpapi.TextPrompt("x"), MaxTokens: ptr(-1)}, nil)
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusBadRequest || ae.Param != "max_tokens" {
		t.Errorf("client error = %#v", err)
	}
}

func TestDevicePinningAndRoundRobin(t *testing.T) {
	f := newFixture(t, nil, "a", "b")
	req := httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(3)}
	seen := map[string]int{}
	for range 4 {
		seen[complete(t, f, req).SLED.Device]++
	}
	if seen["a"] != 2 || seen["b"] != 2 {
		t.Errorf("round robin served %v", seen)
	}
	for _, name := range []string{"a", "b"} {
		c := &httpapi.Client{BaseURL: f.srv.URL, Device: name}
		for range 2 {
			out, err := c.Complete(context.Background(), req, nil)
			if err != nil || out.SLED.Device != name {
				t.Fatalf("pinned to %s: %v %+v", name, err, out)
			}
		}
		byModel := req
		byModel.Model = name
		if out := complete(t, f, byModel); out.SLED.Device != name {
			t.Errorf("model %q served by %s", name, out.SLED.Device)
		}
	}
	byServed := req
	byServed.Model = "stories"
	complete(t, f, byServed)

	var models httpapi.ModelList
	resp, err := http.Get(f.srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&models)
	resp.Body.Close()
	if models.Object != "list" || len(models.Data) != 1 || models.Data[0].ID != "stories" || models.Data[0].Object != "model" {
		t.Errorf("models %+v", models)
	}
	h, err := f.client.Health(context.Background())
	if err != nil || !h.OK || len(h.Devices) != 2 || h.Devices[0].Name != "a" || !h.Devices[1].OK {
		t.Errorf("health %+v %v", h, err)
	}
}

func TestConcurrentRequests(t *testing.T) {
	f := newFixture(t, nil, "a", "b")
	req := httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(20)}
	want := complete(t, f, req).Choices[0].Text
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			var text string
			if i%2 == 0 {
				out, err := f.client.Complete(context.Background(), req, nil)
				if err != nil {
					errs <- err
					return
				}
				text = out.Choices[0].Text
			} else {
				var b strings.Builder
				if _, err := f.client.Complete(context.Background(), req, func(s string) error { b.WriteString(s); return nil }); err != nil {
					errs <- err
					return
				}
				text = b.String()
			}
			if text != want {
				errs <- errors.New("got " + text)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestClientDisconnectStopsGeneration(t *testing.T) {
	f := newFixture(t, func(_ *httpapi.Config, g map[string]*greedyGen) {
		g["dev0"].finished = make(chan error, 4)
	})
	ctx, cancel := context.WithCancel(context.Background())
	_, err := f.client.Complete(ctx, httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(400)},
		func(string) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v", err)
	}
	select {
	case gerr := <-f.gens["dev0"].finished:
		if gerr == nil {
			t.Fatal("generation ran to its end after the client left")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("generation did not stop")
	}
}

// Fields whose values ask for nothing are accepted, whatever the content type.
func TestNeutralFieldsAndContentTypeAccepted(t *testing.T) {
	f := newFixture(t, nil)
	for path, body := range map[string]string{
		"/v1/chat/completions": `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"presence_penalty":0,"frequency_penalty":0.0,` +
			`"tools":[],"tool_choice":"none","response_format":{"type":"text"},"logit_bias":null,"store":false,"parallel_tool_calls":true}`,
		"/v1/completions": `{"prompt":"x","max_tokens":2,"best_of":1,"suffix":"","presence_penalty":0}`,
	} {
		if status, b := f.post(t, path, body); status != http.StatusOK {
			t.Errorf("%s with neutral fields: %d %s", path, status, b)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/completions",
		bytes.NewReader([]byte(`{"prompt":"Once upon a time","max_tokens":3,"top_p":0.9,"logit_bias":{},"user":"u","stream_options":{"include_usage":true}}`)))
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// Absent max_tokens takes the default, cut to the room the context leaves.
	out := complete(t, f, httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), Temperature: ptr(0.0)})
	if out.Usage.CompletionTokens == 0 || out.Usage.TotalTokens > 512 {
		t.Errorf("usage %+v", out.Usage)
	}
}

// Logprobs are the deciding model's, one per output token, aligned with the text,
// the same streamed or not, and cut with the text by a stop string.
func TestLogprobs(t *testing.T) {
	f := newFixture(t, nil)
	req := httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(12), Logprobs: ptr(3)}
	out := complete(t, f, req)
	lp := out.Choices[0].Logprobs
	if lp == nil || len(lp.Tokens) != out.Usage.CompletionTokens {
		t.Fatalf("logprobs %+v for %d tokens", lp, out.Usage.CompletionTokens)
	}
	text := strings.Join(lp.Tokens, "")
	if text != out.Choices[0].Text {
		t.Errorf("tokens join to %q, text %q", text, out.Choices[0].Text)
	}
	offset := 0
	for i := range lp.Tokens {
		if lp.TextOffset[i] != offset {
			t.Errorf("token %d: text_offset %d, want %d", i, lp.TextOffset[i], offset)
		}
		offset += len([]rune(lp.Tokens[i]))
		// Greedy: the chosen token is the likeliest, so it heads the alternatives.
		best, bestLP := "", math.Inf(-1)
		for tok, v := range lp.TopLogprobs[i] {
			if v > bestLP {
				best, bestLP = tok, v
			}
		}
		if len(lp.TopLogprobs[i]) == 0 || len(lp.TopLogprobs[i]) > 3 || best != lp.Tokens[i] ||
			math.Abs(bestLP-lp.TokenLogprobs[i]) > 1e-6 || lp.TokenLogprobs[i] > 0 {
			t.Errorf("token %d %q: logprob %v, top %v", i, lp.Tokens[i], lp.TokenLogprobs[i], lp.TopLogprobs[i])
		}
	}
	// Streamed, the chunks' logprobs concatenate to the same.
	_, streamed := streamComplete(t, f, req)
	if sl := streamed.Choices[0].Logprobs; sl == nil || fmt.Sprint(sl.TokenLogprobs) != fmt.Sprint(lp.TokenLogprobs) ||
		fmt.Sprint(sl.TextOffset) != fmt.Sprint(lp.TextOffset) || fmt.Sprint(sl.Tokens) != fmt.Sprint(lp.Tokens) {
		t.Errorf("streamed logprobs %+v, non-streamed %+v", sl, lp)
	}

	// Chat: the same figures in the chat shape; bytes are the token's bytes.
	status, b := f.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":6,"logprobs":true,"top_logprobs":2}`)
	if status != http.StatusOK {
		t.Fatalf("chat: %d %s", status, b)
	}
	var chat httpapi.ChatCompletion
	if err := json.Unmarshal(b, &chat); err != nil {
		t.Fatal(err)
	}
	cl := chat.Choices[0].Logprobs
	if cl == nil || len(cl.Content) != chat.Usage.CompletionTokens {
		t.Fatalf("chat logprobs %+v for %d tokens", cl, chat.Usage.CompletionTokens)
	}
	var joined []byte
	for i, c := range cl.Content {
		for _, x := range c.Bytes {
			joined = append(joined, byte(x))
		}
		if len(c.TopLogprobs) != 2 || c.TopLogprobs[0].Logprob != c.Logprob || c.TopLogprobs[1].Logprob > c.Logprob {
			t.Errorf("chat token %d: %+v", i, c)
		}
	}
	if string(joined) != string(chat.Choices[0].Message.Content) {
		t.Errorf("chat token bytes join to %q, content %q", joined, chat.Choices[0].Message.Content)
	}

	// A stop string: no logprobs for tokens whose text is cut away.
	full := out.Choices[0].Text
	stop := strings.Fields(full)[2]
	req = httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(12), Logprobs: ptr(0), Stop: httpapi.StopSequences{stop}}
	cut := complete(t, f, req)
	cl2 := cut.Choices[0].Logprobs
	if joined := strings.Join(cl2.Tokens, ""); !strings.HasPrefix(joined, cut.Choices[0].Text) || len(cl2.Tokens) >= len(lp.Tokens) ||
		!strings.Contains(joined, stop) && joined != cut.Choices[0].Text {
		t.Errorf("stop %q: text %q, logprob tokens %q", stop, cut.Choices[0].Text, cl2.Tokens)
	}
	for i := range cl2.Tokens {
		if cl2.TokenLogprobs[i] != lp.TokenLogprobs[i] || len(cl2.TopLogprobs[i]) != 0 {
			t.Errorf("stop: token %d logprob %v (want %v), top %v", i, cl2.TokenLogprobs[i], lp.TokenLogprobs[i], cl2.TopLogprobs[i])
		}
	}
}

// GET /v1/models/{id} answers for the model id and the device names, and lists
// the devices.
func TestModelByID(t *testing.T) {
	f := newFixture(t, nil, "dev0", "dev1")
	for _, id := range []string{"stories", "dev1"} {
		resp, err := http.Get(f.srv.URL + "/v1/models/" + id)
		if err != nil {
			t.Fatal(err)
		}
		var m httpapi.ModelObject
		err = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || m.ID != "stories" || m.Object != "model" || m.SLED == nil || len(m.SLED.Devices) != 2 ||
			m.SLED.Devices[1].Name != "dev1" || m.SLED.Devices[1].Model == "" {
			t.Errorf("GET /v1/models/%s: %d %+v %v", id, resp.StatusCode, m, err)
		}
	}
	for _, path := range []string{"/health", "/readyz"} {
		resp, err := http.Get(f.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var h httpapi.Health
		json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || h.Status != "ok" || len(h.Devices) != 2 {
			t.Errorf("%s: %d %+v", path, resp.StatusCode, h)
		}
	}
}

// With API keys, every route but readiness wants Authorization: Bearer KEY.
func TestAPIKeys(t *testing.T) {
	f := newFixture(t, func(c *httpapi.Config, _ map[string]*greedyGen) { c.APIKeys = []string{"k1", "k2"} })
	body := `{"prompt":"x","max_tokens":2}`
	for _, tc := range []struct {
		auth   string
		status int
	}{{"", http.StatusUnauthorized}, {"Bearer nope", http.StatusUnauthorized}, {"k1", http.StatusUnauthorized},
		{"Bearer k1", http.StatusOK}, {"Bearer k2", http.StatusOK}} {
		var h []string
		if tc.auth != "" {
			h = []string{"Authorization", tc.auth}
		}
		status, b := f.post(t, "/v1/completions", body, h...)
		if status != tc.status {
			t.Errorf("Authorization %q: %d %s, want %d", tc.auth, status, b, tc.status)
		}
		if status == http.StatusUnauthorized && !strings.Contains(string(b), "invalid_api_key") {
			t.Errorf("401 body %s", b)
		}
	}
	if status, _ := f.post(t, "/api/generate", `{"model":"stories","prompt":"x"}`); status != http.StatusUnauthorized {
		t.Errorf("Ollama route without a key: %d", status)
	}
	resp, err := http.Get(f.srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz without a key: %d", resp.StatusCode)
	}
}
