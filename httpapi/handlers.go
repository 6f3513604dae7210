package httpapi

import (
	"fmt"
	"net/http"
	"time"

	"github.com/sled-project/sled/engine"
)

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	var req CompletionRequest
	if e := s.decodeBody(w, r, &req, completionFields); e != nil {
		writeError(w, e)
		return
	}
	if req.Prompt == nil {
		writeError(w, invalid("prompt", "prompt is required"))
		return
	}
	if req.Echo {
		writeError(w, invalid("echo", "echo is not supported"))
		return
	}
	in := settings{model: req.Model, maxTokens: req.MaxTokens, temperature: req.Temperature, topP: req.TopP,
		stop: req.Stop, seed: req.Seed, n: req.N, topParam: "logprobs", opts: req.SLED}
	if req.Logprobs != nil {
		in.logprobs, in.topLogprobs = true, *req.Logprobs
	}
	p, e := s.parseParams(r, in)
	if e != nil {
		writeError(w, e)
		return
	}
	dev := s.devices[p.dev]
	m := dev.Generator.Model()
	var prompt []engine.Token
	if req.Prompt.Tokens != nil {
		for i, t := range req.Prompt.Tokens {
			if !m.ValidToken(t) {
				writeError(w, invalid("prompt", "prompt token %d is %d, not in the vocabulary [0, %d)", i, t, m.VocabSize()))
				return
			}
		}
		prompt = req.Prompt.Tokens
	} else {
		var err error
		if prompt, err = m.Tokenize(req.Prompt.Text, true); err != nil {
			writeError(w, &APIError{StatusCode: http.StatusInternalServerError, Type: TypeServer, Message: fmt.Sprintf("tokenizing the prompt: %v", err)})
			return
		}
	}
	if e := s.fit(p, "prompt", len(prompt), m); e != nil {
		writeError(w, e)
		return
	}

	id, created := newID("cmpl-"), time.Now().Unix()
	chunk := func(text string, finish *string, lps []tokenLogprob) *Completion {
		c := &Completion{ID: id, Object: "text_completion", Created: created, Model: s.ModelName(),
			Choices: []CompletionChoice{{Index: 0, Text: text, FinishReason: finish}}}
		if lps != nil {
			c.Choices[0].Logprobs = completionLogprobs(m, lps)
		}
		return c
	}
	if !req.Stream {
		out, err := s.generate(r.Context(), p, prompt, nil)
		if err != nil {
			s.fail(w, r, nil, dev.Name, len(prompt), began, err)
			return
		}
		resp := chunk(out.text, &out.finish, out.logprobs)
		resp.Usage, resp.SLED = out.usage(len(prompt)), out.stats(dev.Name)
		writeJSON(w, http.StatusOK, resp)
		s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, nil)
		return
	}
	es := newEventStream(w)
	out, err := s.generate(r.Context(), p, prompt, func(text string, lps []tokenLogprob) error {
		return es.send(chunk(text, nil, lps))
	})
	if err != nil {
		s.fail(w, r, es, dev.Name, len(prompt), began, err)
		return
	}
	last := chunk("", &out.finish, nil)
	last.Usage, last.SLED = out.usage(len(prompt)), out.stats(dev.Name)
	if err := es.send(last); err == nil {
		err = es.done()
	}
	s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, err)
}

// chatRoles are the message roles accepted.
var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true}

// checkMessages validates a conversation: not empty, every role known. Both chat
// APIs (OpenAI's and Ollama's) use it.
func checkMessages(msgs []engine.ChatMessage) *APIError {
	if len(msgs) == 0 {
		return invalid("messages", "messages is required and must not be empty")
	}
	for i, m := range msgs {
		if !chatRoles[m.Role] {
			return invalid(fmt.Sprintf("messages[%d].role", i), "messages[%d]: role %q is not one of system, developer, user, assistant, tool", i, m.Role)
		}
	}
	return nil
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	var req ChatCompletionRequest
	if e := s.decodeBody(w, r, &req, chatFields); e != nil {
		writeError(w, e)
		return
	}
	msgs := make([]engine.ChatMessage, len(req.Messages))
	for i, msg := range req.Messages {
		msgs[i] = engine.ChatMessage{Role: msg.Role, Content: string(msg.Content)}
	}
	if e := checkMessages(msgs); e != nil {
		writeError(w, e)
		return
	}
	in := settings{model: req.Model, maxTokens: req.MaxTokens, temperature: req.Temperature, topP: req.TopP,
		stop: req.Stop, seed: req.Seed, n: req.N, logprobs: req.Logprobs, topParam: "top_logprobs", op: "chat", opts: req.SLED}
	if req.MaxCompletionTokens != nil {
		in.maxTokens, in.maxParam = req.MaxCompletionTokens, "max_completion_tokens"
	}
	if req.TopLogprobs != nil {
		in.topLogprobs = *req.TopLogprobs
	}
	p, e := s.parseParams(r, in)
	if e != nil {
		writeError(w, e)
		return
	}
	dev := s.devices[p.dev]
	m := dev.Generator.Model()
	prompt, err := chatPrompt(m, msgs)
	if err != nil {
		writeError(w, &APIError{StatusCode: http.StatusInternalServerError, Type: TypeServer, Message: fmt.Sprintf("tokenizing the conversation: %v", err)})
		return
	}
	if e := s.fit(p, "messages", len(prompt), m); e != nil {
		writeError(w, e)
		return
	}

	id, created := newID("chatcmpl-"), time.Now().Unix()
	if !req.Stream {
		out, err := s.generate(r.Context(), p, prompt, nil)
		if err != nil {
			s.fail(w, r, nil, dev.Name, len(prompt), began, err)
			return
		}
		resp := &ChatCompletion{ID: id, Object: "chat.completion", Created: created, Model: s.ModelName(),
			Choices: []ChatChoice{{Index: 0, Message: ChatMessage{Role: "assistant", Content: MessageContent(out.text)}, FinishReason: out.finish}},
			Usage:   out.usage(len(prompt)), SLED: out.stats(dev.Name)}
		if out.logprobs != nil {
			resp.Choices[0].Logprobs = chatLogprobs(m, out.logprobs)
		}
		writeJSON(w, http.StatusOK, resp)
		s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, nil)
		return
	}
	es := newEventStream(w)
	role := "assistant" // sent with the first delta only
	chunk := func(text string, finish *string, lps []tokenLogprob) *ChatCompletionChunk {
		c := &ChatCompletionChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: s.ModelName(),
			Choices: []ChatChunkChoice{{Index: 0, Delta: ChatDelta{Role: role, Content: text}, FinishReason: finish}}}
		if len(lps) > 0 {
			c.Choices[0].Logprobs = chatLogprobs(m, lps)
		}
		role = ""
		return c
	}
	out, err := s.generate(r.Context(), p, prompt, func(text string, lps []tokenLogprob) error {
		return es.send(chunk(text, nil, lps))
	})
	if err != nil {
		s.fail(w, r, es, dev.Name, len(prompt), began, err)
		return
	}
	last := chunk("", &out.finish, nil)
	last.Usage, last.SLED = out.usage(len(prompt)), out.stats(dev.Name)
	if err := es.send(last); err == nil {
		err = es.done()
	}
	s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, err)
}

// chatPrompt renders msgs with m's chat template and tokenizes the result with BOS.
// A templated prompt is tokenized with control tokens recognized (the template
// writes them); the plain fallback is tokenized as plain text.
func chatPrompt(m *engine.Model, msgs []engine.ChatMessage) ([]engine.Token, error) {
	text, templated := m.FormatChat(msgs, true)
	if !templated {
		return m.Tokenize(text, true)
	}
	toks, err := m.TokenizeSpecial(text, true)
	if err != nil {
		return nil, err
	}
	// Templates that write BOS themselves would otherwise give two.
	if len(toks) >= 2 && toks[0] == m.BOS() && toks[1] == m.BOS() {
		toks = toks[1:]
	}
	return toks, nil
}

// fail reports a generation error: as the response, or as an error event when a
// stream has started. es is nil for non-stream requests.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, es *eventStream, device string, promptTokens int, began time.Time, err error) {
	e := s.generationError(r, err)
	if e == nil { // the client went away
		s.logRequest(r, device, 499, promptTokens, nil, began, err)
		return
	}
	if es != nil {
		es.fail(e)
	} else {
		writeError(w, e)
	}
	s.logRequest(r, device, e.StatusCode, promptTokens, nil, began, err)
}

// chatLogprobs converts token logprobs to the chat API's shape.
func chatLogprobs(m *engine.Model, lps []tokenLogprob) *ChatLogprobs {
	out := &ChatLogprobs{Content: make([]ChatTokenLogprob, len(lps)), Refusal: []ChatTokenLogprob{}}
	for i, lp := range lps {
		c := ChatTokenLogprob{Token: string(lp.piece), Logprob: float64(lp.Logprob.Logprob), Bytes: byteInts(lp.piece), TopLogprobs: []TopLogprob{}}
		for _, a := range lp.Top {
			piece := m.Piece(a.Token)
			c.TopLogprobs = append(c.TopLogprobs, TopLogprob{Token: string(piece), Logprob: float64(a.Logprob), Bytes: byteInts(piece)})
		}
		out.Content[i] = c
	}
	return out
}

// completionLogprobs converts token logprobs to the completions API's shape.
// Alternatives whose texts coincide keep the likeliest (the shape is a map by
// text).
func completionLogprobs(m *engine.Model, lps []tokenLogprob) *CompletionLogprobs {
	out := &CompletionLogprobs{Tokens: []string{}, TokenLogprobs: []float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
	for _, lp := range lps {
		out.Tokens = append(out.Tokens, string(lp.piece))
		out.TokenLogprobs = append(out.TokenLogprobs, float64(lp.Logprob.Logprob))
		out.TextOffset = append(out.TextOffset, lp.offset)
		top := make(map[string]float64, len(lp.Top))
		for _, a := range lp.Top {
			k := string(m.Piece(a.Token))
			if _, dup := top[k]; !dup {
				top[k] = float64(a.Logprob)
			}
		}
		out.TopLogprobs = append(out.TopLogprobs, top)
	}
	return out
}

func byteInts(b []byte) []int {
	out := make([]int, len(b))
	for i, c := range b {
		out[i] = int(c)
	}
	return out
}
