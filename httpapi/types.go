package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// The wire types of the OpenAI-compatible API. Request types accept the JSON that
// OpenAI clients send (unknown fields are ignored); response types marshal to the
// shapes those clients expect, plus a "sled" object with the speculative-decoding
// figures. The same types are used by Client.

// CompletionRequest is the body of POST /v1/completions.
type CompletionRequest struct {
	// Model is the served model id, a device name (which pins the device), or empty.
	Model string `json:"model,omitempty"`
	// Prompt is required.
	Prompt *Prompt `json:"prompt,omitempty"`
	// MaxTokens bounds the generated tokens. Absent: Config.DefaultMaxTokens, cut
	// to what the model's context leaves after the prompt.
	MaxTokens *int `json:"max_tokens,omitempty"`
	// Temperature in [0, 2]. Absent or 0: greedy decoding. SLED defaults to greedy
	// (not OpenAI's 1) because greedy speculative decoding is lossless: the text is
	// exactly what the target model alone would produce.
	Temperature *float64 `json:"temperature,omitempty"`
	// Stop holds up to 4 strings; generation ends when one appears, and the text
	// ends before the earliest stop string in it. Empty strings are ignored.
	Stop StopSequences `json:"stop,omitempty"`
	// Stream asks for server-sent events.
	Stream bool `json:"stream,omitempty"`
	// StreamOptions is accepted for compatibility; the final streamed chunk always
	// carries usage.
	StreamOptions *StreamOptions `json:"stream_options,omitempty"`
	// Seed makes sampling reproducible (temperature > 0).
	Seed *int64 `json:"seed,omitempty"`
	// N must be 1 when given.
	N *int `json:"n,omitempty"`
	// Echo is not supported: true is refused.
	Echo bool `json:"echo,omitempty"`
	// TopP in [0, 1] truncates sampling to the nucleus (ignored when greedy).
	TopP *float64 `json:"top_p,omitempty"`
	// Logprobs, when set, asks for each token's log-probability and this many
	// (0 to MaxTopLogprobs) alternatives per position, from the target model's
	// verification logits.
	Logprobs *int `json:"logprobs,omitempty"`
	// User is logged with the request.
	User string `json:"user,omitempty"`
	// SLED holds SLED's own request options.
	SLED *RequestOptions `json:"sled,omitempty"`
}

// RequestOptions is the "sled" object of a request: options no OpenAI field
// carries.
type RequestOptions struct {
	// TPOTMs is the request's latency objective, milliseconds per output token
	// (0 < tpot_ms <= events.MaxTPOTMs). The server's draft budgets and an
	// SLO-aware batcher try to meet it. Absent: the device's default
	// (drafter.Config.TPOT), if any.
	TPOTMs *float64 `json:"tpot_ms,omitempty"`
	// Sampling is the sampling mode at temperature > 0: "coupled" (the
	// default: shared randomness, the same text for a seed whichever device
	// or mode served it), "topk" (devices send top-k draft distributions and
	// the verifier applies the rejection rule) or "point" (greedy drafts, the
	// rejection rule). See textgen.SamplingCoupled and its siblings.
	Sampling *string `json:"sampling,omitempty"`
	// DraftTopK is the size of the draft distributions in "topk" mode (1 to
	// textgen.MaxDraftTopK); absent: textgen.DefaultDraftTopK.
	DraftTopK *int `json:"draft_top_k,omitempty"`
}

// ChatCompletionRequest is the body of POST /v1/chat/completions.
type ChatCompletionRequest struct {
	Model    string        `json:"model,omitempty"`
	Messages []ChatMessage `json:"messages"`
	// MaxTokens as in CompletionRequest; MaxCompletionTokens is its newer name and
	// wins when both are set.
	MaxTokens           *int           `json:"max_tokens,omitempty"`
	MaxCompletionTokens *int           `json:"max_completion_tokens,omitempty"`
	Temperature         *float64       `json:"temperature,omitempty"`
	Stop                StopSequences  `json:"stop,omitempty"`
	Stream              bool           `json:"stream,omitempty"`
	StreamOptions       *StreamOptions `json:"stream_options,omitempty"`
	Seed                *int64         `json:"seed,omitempty"`
	N                   *int           `json:"n,omitempty"`
	TopP                *float64       `json:"top_p,omitempty"`
	// Logprobs asks for each token's log-probability (the target model's, from its
	// verification logits), with TopLogprobs (0 to MaxTopLogprobs) alternatives.
	Logprobs    bool `json:"logprobs,omitempty"`
	TopLogprobs *int `json:"top_logprobs,omitempty"`
	// SLED holds SLED's own request options.
	SLED *RequestOptions `json:"sled,omitempty"`
	User string          `json:"user,omitempty"`
}

// StreamOptions is OpenAI's stream_options.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage,omitempty"`
}

// ChatMessage is one turn of a conversation.
type ChatMessage struct {
	Role    string         `json:"role"`
	Content MessageContent `json:"content"`
}

// MessageContent is a message's text. In JSON it is a string, null, or an array of
// content parts of which only {"type":"text","text":...} parts are supported (their
// texts are concatenated); it always marshals as a string.
type MessageContent string

// UnmarshalJSON implements json.Unmarshaler.
func (c *MessageContent) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*c = ""
		return nil
	case len(b) > 0 && b[0] == '[':
		var parts []struct {
			Type string  `json:"type"`
			Text *string `json:"text"`
		}
		if err := json.Unmarshal(b, &parts); err != nil {
			return err
		}
		var sb strings.Builder
		for i, p := range parts {
			if p.Type != "text" || p.Text == nil {
				return fmt.Errorf("content part %d: only text parts are supported, got type %q", i, p.Type)
			}
			sb.WriteString(*p.Text)
		}
		*c = MessageContent(sb.String())
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("content must be a string or an array of text parts")
	}
	*c = MessageContent(s)
	return nil
}

// Prompt is a completion prompt: text, or token ids of the served model's
// vocabulary. In JSON it is a string, an array holding one string, or an array of
// integers (token ids, used as they are: no BOS is added).
type Prompt struct {
	Text   string
	Tokens []int32 // when non-nil, the prompt is these tokens and Text is ignored
}

// TextPrompt returns a text prompt, for use in a CompletionRequest.
func TextPrompt(s string) *Prompt { return &Prompt{Text: s} }

// MarshalJSON implements json.Marshaler.
func (p Prompt) MarshalJSON() ([]byte, error) {
	if p.Tokens != nil {
		return json.Marshal(p.Tokens)
	}
	return json.Marshal(p.Text)
}

// UnmarshalJSON implements json.Unmarshaler.
func (p *Prompt) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(b, &items); err != nil {
			return err
		}
		if len(items) == 0 {
			return errors.New("prompt is an empty array")
		}
		if first := bytes.TrimSpace(items[0]); len(first) > 0 && first[0] == '"' {
			if len(items) != 1 {
				return errors.New("only one prompt per request is supported")
			}
			return json.Unmarshal(first, &p.Text)
		}
		var toks []int32
		if err := json.Unmarshal(b, &toks); err != nil {
			return errors.New("prompt must be a string, an array of one string, or an array of token ids")
		}
		p.Tokens = toks
		return nil
	}
	if err := json.Unmarshal(b, &p.Text); err != nil {
		return errors.New("prompt must be a string, an array of one string, or an array of token ids")
	}
	return nil
}

// StopSequences are stop strings. In JSON they are null, a string, or an array of
// strings.
type StopSequences []string

// UnmarshalJSON implements json.Unmarshaler.
func (s *StopSequences) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*s = nil
		return nil
	case len(b) > 0 && b[0] == '"':
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = StopSequences{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("stop must be a string or an array of strings")
	}
	*s = many
	return nil
}

// Usage counts tokens as OpenAI does.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Stats are SLED's figures for one generation: the "sled" object of a response.
type Stats struct {
	// Device is the name of the device that served the request.
	Device string `json:"device"`
	Rounds int    `json:"rounds"`
	// ServerRounds counts the rounds the verifier ran on the device's behalf
	// while its draft budget was 0 (the device sent nothing for them).
	ServerRounds   int     `json:"server_rounds"`
	Drafted        int     `json:"drafted"`
	Accepted       int     `json:"accepted"`
	AcceptanceRate float64 `json:"acceptance_rate"`
	// Sampling is how the text was chosen: "greedy" (temperature 0), or the
	// sampling mode ("coupled", "topk", "point").
	Sampling string `json:"sampling"`
	// Seed is the seed the text was sampled with, the request's or one the
	// server drew (absent when greedy): sent back with the same prompt and
	// settings in "coupled" mode, it gives the same text.
	Seed *int64 `json:"seed,omitempty"`
	// UnverifiedTokens counts tokens a device released without the target's
	// verification (lossy fallback mode). Zero in strict mode.
	UnverifiedTokens int `json:"unverified_tokens"`
	Retries          int `json:"retries"`
	Resyncs          int `json:"resyncs"`
	// UnverifiedSpans locates the unverified text, when there is any, as sorted,
	// disjoint [start, end) ranges of Unicode code point offsets into the returned
	// text (the choice's text or message content; for a stream, the concatenation of
	// its deltas). Code points, not bytes, so that offsets index a Python str or a
	// Go []rune directly. A character whose bytes span tokens belongs to the token
	// that completes it.
	UnverifiedSpans [][2]int `json:"unverified_spans,omitempty"`
}

// Completion is the response of POST /v1/completions, and each streamed chunk of it
// (then FinishReason is null until the last chunk, which alone carries Usage and
// SLED).
type Completion struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"` // "text_completion"
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage,omitempty"`
	SLED    *Stats             `json:"sled,omitempty"`
}

// CompletionChoice is a choice of a Completion.
type CompletionChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *CompletionLogprobs `json:"logprobs"`      // null unless asked for
	FinishReason *string             `json:"finish_reason"` // "stop" or "length"; null while streaming
}

// CompletionLogprobs are the legacy completions API's logprobs: parallel arrays,
// one entry per token. TextOffset is each token's offset in the choice's text, in
// Unicode code points (for a stream, in the concatenation of its texts).
type CompletionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float64            `json:"token_logprobs"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// ChatLogprobs are a chat choice's logprobs.
type ChatLogprobs struct {
	Content []ChatTokenLogprob `json:"content"`
	Refusal []ChatTokenLogprob `json:"refusal"` // always empty
}

// ChatTokenLogprob is one token's log-probability (natural log) and the most
// likely alternatives at its position. Token is the token's text; Bytes its exact
// bytes (a token may hold part of a character).
type ChatTokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// TopLogprob is an alternative token at a position.
type TopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// ChatCompletion is the response of POST /v1/chat/completions without streaming.
type ChatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"` // "chat.completion"
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
	SLED    *Stats       `json:"sled,omitempty"`
}

// ChatChoice is a choice of a ChatCompletion.
type ChatChoice struct {
	Index        int           `json:"index"`
	Message      ChatMessage   `json:"message"`
	Logprobs     *ChatLogprobs `json:"logprobs"`
	FinishReason string        `json:"finish_reason"`
}

// ChatCompletionChunk is one streamed event of POST /v1/chat/completions. The last
// chunk carries FinishReason, Usage and SLED.
type ChatCompletionChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"` // "chat.completion.chunk"
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []ChatChunkChoice `json:"choices"`
	Usage   *Usage            `json:"usage,omitempty"`
	SLED    *Stats            `json:"sled,omitempty"`
}

// ChatChunkChoice is a choice of a ChatCompletionChunk.
type ChatChunkChoice struct {
	Index        int           `json:"index"`
	Delta        ChatDelta     `json:"delta"`
	Logprobs     *ChatLogprobs `json:"logprobs"`
	FinishReason *string       `json:"finish_reason"`
}

// ChatDelta is the new part of the assistant's message; Role is set on the first
// chunk only.
type ChatDelta struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content,omitempty"`
}

// ModelList is the response of GET /v1/models.
type ModelList struct {
	Object string        `json:"object"` // "list"
	Data   []ModelObject `json:"data"`
}

// ModelObject describes a served model id: the target model. SLED lists the
// devices that serve it, whose names the X-SLED-Device header (or the model
// field) takes to pin a request.
type ModelObject struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"` // "model"
	Created int64         `json:"created"`
	OwnedBy string        `json:"owned_by"`
	SLED    *ModelDevices `json:"sled,omitempty"`
}

// ModelDevices is the "sled" object of a ModelObject.
type ModelDevices struct {
	Devices []ModelDevice `json:"devices"`
}

// ModelDevice is one device serving a model: its name and the model it runs
// (its draft model, or for an edge-only device the model that writes its text).
type ModelDevice struct {
	Name  string `json:"name"`
	Model string `json:"model"`
	// Speculative is false for a device that generates alone (edge-only or the
	// centralized baseline's server).
	Speculative bool `json:"speculative"`
}

// Health is the response of GET /healthz, /health and /readyz.
type Health struct {
	OK bool `json:"ok"`
	// Status is "ok" when every device can serve, "unavailable" otherwise (the
	// llama-server and vLLM shape load balancers probe).
	Status  string         `json:"status"`
	Model   string         `json:"model"`
	Devices []DeviceHealth `json:"devices"`
}

// DeviceHealth is one device's line in Health.
type DeviceHealth struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}
