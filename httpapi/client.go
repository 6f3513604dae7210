package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// ErrIncompleteStream is returned by Client when an event stream ends before its
// [DONE] event.
var ErrIncompleteStream = errors.New("httpapi: event stream ended early")

// maxEventBytes bounds one server-sent event the Client accepts.
const maxEventBytes = 4 << 20

// Client calls a SLED device's OpenAI-compatible API. Its zero value is not usable:
// BaseURL is required. A Client is safe for concurrent use.
type Client struct {
	// BaseURL is the server's address, such as "http://127.0.0.1:8080"; the API's
	// paths (/v1/...) are appended to it.
	BaseURL string
	// HTTPClient makes the requests. Default http.DefaultClient.
	HTTPClient *http.Client
	// Device, when set, pins every request to the named device (DeviceHeader).
	Device string
}

// Complete runs a text completion. With onText nil it asks for the whole response
// at once; otherwise it streams, calling onText with each text delta as it arrives,
// and returns the assembled Completion: the concatenated text, the finish reason,
// Usage and SLED from the final chunk. An error from onText aborts the request and
// is returned. Errors the server reports are *APIError.
func (c *Client) Complete(ctx context.Context, req CompletionRequest, onText func(string) error) (*Completion, error) {
	req.Stream = onText != nil
	if !req.Stream {
		var out Completion
		if err := c.do(ctx, "/v1/completions", req, &out); err != nil {
			return nil, err
		}
		return &out, nil
	}
	var out *Completion
	text, err := collect(ctx, c, "/v1/completions", req, onText, func(ch *Completion) string {
		if out == nil {
			out = &Completion{ID: ch.ID, Object: ch.Object, Created: ch.Created, Model: ch.Model,
				Choices: []CompletionChoice{{Index: 0}}}
		}
		out.Usage, out.SLED = cmpOr(ch.Usage, out.Usage), cmpOr(ch.SLED, out.SLED)
		if len(ch.Choices) == 0 {
			return ""
		}
		if f := ch.Choices[0].FinishReason; f != nil {
			out.Choices[0].FinishReason = f
		}
		if lp := ch.Choices[0].Logprobs; lp != nil {
			all := out.Choices[0].Logprobs
			if all == nil {
				all = &CompletionLogprobs{}
				out.Choices[0].Logprobs = all
			}
			all.Tokens = append(all.Tokens, lp.Tokens...)
			all.TokenLogprobs = append(all.TokenLogprobs, lp.TokenLogprobs...)
			all.TopLogprobs = append(all.TopLogprobs, lp.TopLogprobs...)
			all.TextOffset = append(all.TextOffset, lp.TextOffset...)
		}
		return ch.Choices[0].Text
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, fmt.Errorf("%w: no chunks", ErrIncompleteStream)
	}
	out.Choices[0].Text = text
	return out, nil
}

// Chat runs a chat completion; onText works as in Complete (a stream's logprobs
// are assembled too). A streamed response is
// returned assembled into a ChatCompletion.
func (c *Client) Chat(ctx context.Context, req ChatCompletionRequest, onText func(string) error) (*ChatCompletion, error) {
	req.Stream = onText != nil
	if !req.Stream {
		var out ChatCompletion
		if err := c.do(ctx, "/v1/chat/completions", req, &out); err != nil {
			return nil, err
		}
		return &out, nil
	}
	var out *ChatCompletion
	text, err := collect(ctx, c, "/v1/chat/completions", req, onText, func(ch *ChatCompletionChunk) string {
		if out == nil {
			out = &ChatCompletion{ID: ch.ID, Object: "chat.completion", Created: ch.Created, Model: ch.Model,
				Choices: []ChatChoice{{Index: 0, Message: ChatMessage{Role: "assistant"}}}}
		}
		out.Usage, out.SLED = cmpOr(ch.Usage, out.Usage), cmpOr(ch.SLED, out.SLED)
		if len(ch.Choices) == 0 {
			return ""
		}
		if f := ch.Choices[0].FinishReason; f != nil {
			out.Choices[0].FinishReason = *f
		}
		if lp := ch.Choices[0].Logprobs; lp != nil {
			if out.Choices[0].Logprobs == nil {
				out.Choices[0].Logprobs = &ChatLogprobs{Refusal: []ChatTokenLogprob{}}
			}
			out.Choices[0].Logprobs.Content = append(out.Choices[0].Logprobs.Content, lp.Content...)
		}
		return ch.Choices[0].Delta.Content
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, fmt.Errorf("%w: no chunks", ErrIncompleteStream)
	}
	out.Choices[0].Message.Content = MessageContent(text)
	return out, nil
}

// Health fetches GET /healthz. An unhealthy server's report is returned with a nil
// error (its status is 503 but its body is a Health).
func (c *Client) Health(ctx context.Context) (*Health, error) {
	resp, err := c.send(ctx, http.MethodGet, "/healthz", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var h Health
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return nil, readAPIError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return nil, fmt.Errorf("httpapi: decoding health: %w", err)
	}
	return &h, nil
}

func cmpOr[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("httpapi: encoding request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, rd)
	if err != nil {
		return nil, fmt.Errorf("httpapi: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Device != "" {
		req.Header.Set(DeviceHeader, c.Device)
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("httpapi: %w", err)
	}
	return resp, nil
}

// do sends body and decodes a JSON response into out.
func (c *Client) do(ctx context.Context, path string, body, out any) error {
	resp, err := c.send(ctx, http.MethodPost, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readAPIError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("httpapi: decoding response: %w", err)
	}
	return nil
}

// stream sends body and calls onData with the data of each server-sent event until
// [DONE]. An event holding {"error": ...} ends the stream with that *APIError.
func (c *Client) stream(ctx context.Context, path string, body any, onData func([]byte) error) error {
	resp, err := c.send(ctx, http.MethodPost, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readAPIError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventBytes)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) > 0 {
			// Only data fields matter here; comments and other fields are skipped.
			if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
				if len(data) > 0 {
					data = append(data, '\n')
				}
				data = append(data, bytes.TrimPrefix(v, []byte(" "))...)
			}
			continue
		}
		// A blank line dispatches the event.
		if len(data) == 0 {
			continue
		}
		if bytes.Equal(data, []byte("[DONE]")) {
			return nil
		}
		if bytes.HasPrefix(data, []byte(`{"error"`)) {
			var eb errorBody
			if json.Unmarshal(data, &eb) == nil && eb.Error != nil {
				return eb.Error
			}
		}
		if err := onData(data); err != nil {
			return err
		}
		data = data[:0]
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("httpapi: reading event stream: %w", err)
	}
	return ErrIncompleteStream
}

// readAPIError turns a non-2xx response into an *APIError, whatever its body.
func readAPIError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb errorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != nil {
		eb.Error.StatusCode = resp.StatusCode
		return eb.Error
	}
	msg := strings.TrimSpace(string(b))
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &APIError{StatusCode: resp.StatusCode, Type: TypeServer, Message: msg}
}

// collect streams path, decodes every data event as a T, lets merge fold it into
// the caller's result and return its text delta, passes each non-empty delta to
// onText, and returns the concatenated text. An error from onText aborts the
// stream and is returned.
func collect[T any](ctx context.Context, c *Client, path string, req any, onText func(string) error, merge func(*T) string) (string, error) {
	var text strings.Builder
	err := c.stream(ctx, path, req, func(data []byte) error {
		var ch T
		if err := json.Unmarshal(data, &ch); err != nil {
			return fmt.Errorf("httpapi: decoding stream chunk: %w", err)
		}
		if t := merge(&ch); t != "" {
			text.WriteString(t)
			return onText(t)
		}
		return nil
	})
	return text.String(), err
}
