package httpapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/sled-project/sled/httpapi"
)

// ollamaStream posts body and decodes the NDJSON objects of the response.
func ollamaStream(t *testing.T, f *fixture, path, body string) []httpapi.OllamaResponse {
	t.Helper()
	resp, err := http.Post(f.srv.URL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("%s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var out []httpapi.OllamaResponse
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var o httpapi.OllamaResponse
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, o)
	}
	return out
}

// /api/generate with raw gives the text /v1/completions gives, streamed as NDJSON
// by default and as one object with stream false, with Ollama's figures.
func TestOllamaGenerate(t *testing.T) {
	f := newFixture(t, nil)
	want := complete(t, f, httpapi.CompletionRequest{Prompt: httpapi.TextPrompt(onceUpon), MaxTokens: ptr(16)})
	body := `{"model":"stories","prompt":"` + onceUpon + `","raw":true,"options":{"num_predict":16,"temperature":0},"keep_alive":"5m"}`
	objs := ollamaStream(t, f, "/api/generate", body)
	if len(objs) < 3 {
		t.Fatalf("%d objects, want a stream", len(objs))
	}
	var text strings.Builder
	for i, o := range objs {
		if o.Response == nil || o.Model != "stories:latest" || o.CreatedAt.IsZero() || o.Done != (i == len(objs)-1) {
			t.Fatalf("object %d: %+v", i, o)
		}
		text.WriteString(*o.Response)
	}
	last := objs[len(objs)-1]
	if text.String() != want.Choices[0].Text {
		t.Errorf("streamed %q, completions %q", text.String(), want.Choices[0].Text)
	}
	if last.DoneReason != "length" || last.EvalCount != 16 || last.PromptEvalCount != want.Usage.PromptTokens ||
		last.TotalDuration <= 0 || last.EvalDuration <= 0 || last.TotalDuration < last.EvalDuration || last.SLED == nil ||
		len(last.Context) != last.PromptEvalCount+last.EvalCount {
		t.Errorf("final object %+v", last)
	}

	status, b := f.post(t, "/api/generate", strings.Replace(body, `"raw":true`, `"raw":true,"stream":false`, 1))
	var one httpapi.OllamaResponse
	if err := json.Unmarshal(b, &one); err != nil || status != http.StatusOK {
		t.Fatalf("stream false: %d %s", status, b)
	}
	if !one.Done || one.Response == nil || *one.Response != want.Choices[0].Text || one.EvalCount != 16 {
		t.Errorf("stream false: %+v", one)
	}

	// Stop strings and logprobs ride in too.
	stop := strings.Fields(want.Choices[0].Text)[1]
	status, b = f.post(t, "/api/generate", `{"model":"stories","prompt":"`+onceUpon+`","raw":true,"stream":false,"logprobs":true,"top_logprobs":2,"options":{"num_predict":16,"stop":["`+stop+`"]}}`)
	one = httpapi.OllamaResponse{}
	if err := json.Unmarshal(b, &one); err != nil || status != http.StatusOK {
		t.Fatalf("stop: %d %s", status, b)
	}
	if one.DoneReason != "stop" || strings.Contains(*one.Response, stop) || !strings.HasPrefix(want.Choices[0].Text, *one.Response) ||
		len(one.Logprobs) == 0 || len(one.Logprobs[0].TopLogprobs) != 2 {
		t.Errorf("stop %q: %+v", stop, one)
	}
}

func TestOllamaChat(t *testing.T) {
	f := newFixture(t, nil)
	want, err := f.client.Chat(t.Context(), httpapi.ChatCompletionRequest{Messages: []httpapi.ChatMessage{{Role: "user", Content: "Tom and his dog"}}, MaxTokens: ptr(12)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	objs := ollamaStream(t, f, "/api/chat", `{"model":"stories","messages":[{"role":"user","content":"Tom and his dog"}],"options":{"num_predict":12}}`)
	var text strings.Builder
	for _, o := range objs {
		if o.Message == nil || o.Message.Role != "assistant" || o.Response != nil {
			t.Fatalf("object %+v", o)
		}
		text.WriteString(o.Message.Content)
	}
	if text.String() != string(want.Choices[0].Message.Content) || !objs[len(objs)-1].Done {
		t.Errorf("ollama chat %q, openai chat %q", text.String(), want.Choices[0].Message.Content)
	}
}

func TestOllamaModelRoutes(t *testing.T) {
	f := newFixture(t, nil, "dev0", "dev1")
	get := func(path string, v any) {
		t.Helper()
		resp, err := http.Get(f.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	var tags struct{ Models []httpapi.OllamaModel }
	get("/api/tags", &tags)
	if len(tags.Models) != 1 || tags.Models[0].Name != "stories:latest" || tags.Models[0].Details.Format != "gguf" ||
		tags.Models[0].Size == 0 || tags.Models[0].SLED == nil || len(tags.Models[0].SLED.Devices) != 2 {
		t.Errorf("tags %+v", tags)
	}
	var ps struct{ Models []httpapi.OllamaModel }
	get("/api/ps", &ps)
	if len(ps.Models) != 1 || ps.Models[0].ExpiresAt == nil || ps.Models[0].ContextLength == 0 {
		t.Errorf("ps %+v", ps)
	}
	var v struct{ Version string }
	get("/api/version", &v)
	if v.Version != httpapi.OllamaVersion || strings.Count(v.Version, ".") != 2 {
		t.Errorf("version %q", v.Version)
	}
	status, b := f.post(t, "/api/show", `{"model":"stories:latest"}`)
	var show httpapi.OllamaShowResponse
	if err := json.Unmarshal(b, &show); err != nil || status != http.StatusOK || show.Details.Family == "" || len(show.ModelInfo) == 0 {
		t.Errorf("show: %d %s", status, b)
	}
}

// Ollama's errors are {"error": "..."}; options SLED would not apply are refused
// by name, and so are bad values.
func TestOllamaErrors(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		path, body string
		status     int
		mention    string
	}{
		{"/api/generate", `{"model":"stories","prompt":"x","options":{"num_gpu":1}}`, http.StatusBadRequest, "num_gpu"},
		{"/api/generate", `{"model":"stories","prompt":"x","options":{"repeat_penalty":1.3}}`, http.StatusBadRequest, "repeat_penalty"},
		{"/api/generate", `{"model":"stories","prompt":"x","format":"json"}`, http.StatusBadRequest, "format"},
		{"/api/generate", `{"model":"stories","prompt":"x","options":{"num_predict":0}}`, http.StatusBadRequest, "num_predict"},
		{"/api/generate", `{"model":"stories","prompt":"x","options":{"num_ctx":999999}}`, http.StatusBadRequest, "num_ctx"},
		{"/api/generate", `{"model":"nope","prompt":"x"}`, http.StatusNotFound, "nope"},
		{"/api/generate", "{\"model\":\"stories\",\"prompt\":\"\xff\"}", http.StatusBadRequest, "UTF-8"},
		{"/api/chat", `{"model":"stories","messages":[]}`, http.StatusBadRequest, "messages"},
		{"/api/chat", `{"model":"stories","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}`, http.StatusBadRequest, "tools"},
		{"/api/show", `{"model":"nope"}`, http.StatusNotFound, "nope"},
	}
	for _, tc := range cases {
		status, b := f.post(t, tc.path, tc.body)
		var e struct{ Error string }
		if err := json.Unmarshal(b, &e); err != nil || status != tc.status || !strings.Contains(e.Error, tc.mention) || bytes.Contains(b, []byte(`"type"`)) {
			t.Errorf("%s %s: %d %s, want %d mentioning %q in Ollama's shape", tc.path, tc.body, status, b, tc.status, tc.mention)
		}
	}
	// Neutral options pass.
	if status, b := f.post(t, "/api/generate", `{"model":"stories","prompt":"x","stream":false,"options":{"num_predict":2,"top_k":0,"repeat_penalty":1,"num_ctx":256},"format":"","images":[],"think":false}`); status != http.StatusOK {
		t.Errorf("neutral options: %d %s", status, b)
	}
}
