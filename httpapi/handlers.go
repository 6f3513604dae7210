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
	if e := s.decodeBody(w, r, &req); e != nil {
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
	p, e := s.parseParams(r, req.Model, req.MaxTokens, req.Temperature, req.Stop, req.Seed, req.N)
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
	chunk := func(text string, finish *string) *Completion {
		return &Completion{ID: id, Object: "text_completion", Created: created, Model: s.cfg.ModelName,
			Choices: []CompletionChoice{{Index: 0, Text: text, FinishReason: finish}}}
	}
	if !req.Stream {
		out, err := s.generate(r.Context(), p, prompt, nil)
		if err != nil {
			s.fail(w, r, nil, dev.Name, len(prompt), began, err)
			return
		}
		resp := chunk(out.text, &out.finish)
		resp.Usage, resp.SLED = out.usage(len(prompt)), out.stats(dev.Name)
		writeJSON(w, http.StatusOK, resp)
		s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, nil)
		return
	}
	es := newEventStream(w)
	out, err := s.generate(r.Context(), p, prompt, func(text string) error {
		return es.send(chunk(text, nil))
	})
	if err != nil {
		s.fail(w, r, es, dev.Name, len(prompt), began, err)
		return
	}
	last := chunk("", &out.finish)
	last.Usage, last.SLED = out.usage(len(prompt)), out.stats(dev.Name)
	if err := es.send(last); err == nil {
		err = es.done()
	}
	s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, err)
}

// chatRoles are the message roles accepted.
var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	var req ChatCompletionRequest
	if e := s.decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	if len(req.Messages) == 0 {
		writeError(w, invalid("messages", "messages is required and must not be empty"))
		return
	}
	msgs := make([]engine.ChatMessage, len(req.Messages))
	for i, msg := range req.Messages {
		if !chatRoles[msg.Role] {
			writeError(w, invalid(fmt.Sprintf("messages[%d].role", i), "messages[%d]: role %q is not one of system, developer, user, assistant, tool", i, msg.Role))
			return
		}
		msgs[i] = engine.ChatMessage{Role: msg.Role, Content: string(msg.Content)}
	}
	maxTokens := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		maxTokens = req.MaxCompletionTokens
	}
	p, e := s.parseParams(r, req.Model, maxTokens, req.Temperature, req.Stop, req.Seed, req.N)
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
		resp := &ChatCompletion{ID: id, Object: "chat.completion", Created: created, Model: s.cfg.ModelName,
			Choices: []ChatChoice{{Index: 0, Message: ChatMessage{Role: "assistant", Content: MessageContent(out.text)}, FinishReason: out.finish}},
			Usage:   out.usage(len(prompt)), SLED: out.stats(dev.Name)}
		writeJSON(w, http.StatusOK, resp)
		s.logRequest(r, dev.Name, http.StatusOK, len(prompt), out, began, nil)
		return
	}
	es := newEventStream(w)
	role := "assistant" // sent with the first delta only
	chunk := func(text string, finish *string) *ChatCompletionChunk {
		c := &ChatCompletionChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: s.cfg.ModelName,
			Choices: []ChatChunkChoice{{Index: 0, Delta: ChatDelta{Role: role, Content: text}, FinishReason: finish}}}
		role = ""
		return c
	}
	out, err := s.generate(r.Context(), p, prompt, func(text string) error {
		return es.send(chunk(text, nil))
	})
	if err != nil {
		s.fail(w, r, es, dev.Name, len(prompt), began, err)
		return
	}
	last := chunk("", &out.finish)
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
