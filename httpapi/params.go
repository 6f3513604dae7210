package httpapi

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"

	"github.com/sled-project/sled/textgen"
)

// Every request parameter is either honoured or refused with a 400 naming it:
// a client that asks for presence_penalty 0.5, tools or JSON output must learn
// that it did not get them, not read text that silently ignored them. A field
// whose value asks for nothing (presence_penalty 0, tools [], response_format
// text) is accepted, since it changes nothing.

// fieldRule says whether a field's value is one this server serves.
type fieldRule func(raw json.RawMessage) bool

// honoured marks a field the server applies (its value is checked where it is
// used).
func honoured(json.RawMessage) bool { return true }

// neutral accepts only the values that ask for nothing: null and the given JSON
// literals (compared after compaction, numbers by value).
func neutral(values ...string) fieldRule {
	return func(raw json.RawMessage) bool {
		var b bytes.Buffer
		if json.Compact(&b, raw) != nil {
			return false
		}
		got := b.String()
		if got == "null" {
			return true
		}
		for _, v := range values {
			if got == v {
				return true
			}
			var x, y float64
			if json.Unmarshal([]byte(got), &x) == nil && json.Unmarshal([]byte(v), &y) == nil && x == y {
				return true
			}
		}
		return false
	}
}

// completionFields are the fields of POST /v1/completions.
var completionFields = map[string]fieldRule{
	"model": honoured, "prompt": honoured, "max_tokens": honoured, "temperature": honoured,
	"top_p": honoured, "stop": honoured, "stream": honoured, "stream_options": honoured,
	"seed": honoured, "n": honoured, "echo": honoured, "logprobs": honoured,
	"user":             honoured, // logged with the request
	"sled":             honoured, // RequestOptions
	"presence_penalty": neutral("0"), "frequency_penalty": neutral("0"), "best_of": neutral("1"),
	"logit_bias": neutral("{}"), "suffix": neutral(`""`),
}

// chatFields are the fields of POST /v1/chat/completions.
var chatFields = map[string]fieldRule{
	"model": honoured, "messages": honoured, "max_tokens": honoured, "max_completion_tokens": honoured,
	"temperature": honoured, "top_p": honoured, "stop": honoured, "stream": honoured,
	"stream_options": honoured, "seed": honoured, "n": honoured, "logprobs": honoured,
	"top_logprobs": honoured, "user": honoured, "sled": honoured,
	"presence_penalty": neutral("0"), "frequency_penalty": neutral("0"), "logit_bias": neutral("{}"),
	"response_format": neutral(`{"type":"text"}`), "tools": neutral("[]"), "tool_choice": neutral(`"none"`),
	"functions": neutral("[]"), "function_call": neutral(`"none"`),
	"parallel_tool_calls": neutral("true", "false"), // means nothing without tools
	"store":               neutral("false"), "modalities": neutral(`["text"]`),
}

// checkFields refuses the first field of body (a JSON object) that rules do not
// serve, in sorted order so the error is deterministic.
func checkFields(body []byte, rules map[string]fieldRule) *APIError {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return invalid("", "the request body must be a JSON object: %v", err)
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		rule, ok := rules[k]
		switch {
		case !ok:
			return invalid(k, "unrecognized request argument supplied: %s", k)
		case !rule(fields[k]):
			return invalid(k, "%s=%s is not supported by this server (it would be ignored); omit it or use its neutral value", k, truncateJSON(fields[k]))
		}
	}
	return nil
}

func truncateJSON(raw json.RawMessage) string {
	s := strings.TrimSpace(string(raw))
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// checkTopP validates top_p (OpenAI's range is [0, 1]; 0 is taken as 1, no
// truncation, as llama-server does).
func checkTopP(topP *float64) (float32, *APIError) {
	if topP == nil {
		return 0, nil
	}
	if !(*topP >= 0 && *topP <= 1) {
		return 0, invalid("top_p", "top_p must be in [0, 1], got %g", *topP)
	}
	return float32(*topP), nil
}

// checkLogprobs validates the logprob settings: want says logprobs are asked
// for, top how many alternatives per position.
func checkLogprobs(param string, want bool, top int) *APIError {
	if top < 0 || top > MaxTopLogprobs {
		return invalid(param, "%s must be in [0, %d], got %d", param, MaxTopLogprobs, top)
	}
	if top > 0 && !want {
		return invalid(param, "%s needs logprobs: true", param)
	}
	return nil
}

// MaxTopLogprobs is the most alternatives per position a request may ask for.
const MaxTopLogprobs = textgen.MaxTopLogprobs

// loneSurrogate reports the offset of the first \u escape in the JSON text b
// that encodes half of a UTF-16 surrogate pair without the other half (valid JSON,
// but no character: Go's decoder would turn it into U+FFFD), or -1.
func loneSurrogate(b []byte) int {
	hex4 := func(i int) (rune, bool) {
		if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
			return 0, false
		}
		var r rune
		for _, c := range b[i+2 : i+6] {
			switch {
			case c >= '0' && c <= '9':
				r = r<<4 | rune(c-'0')
			case c >= 'a' && c <= 'f':
				r = r<<4 | rune(c-'a'+10)
			case c >= 'A' && c <= 'F':
				r = r<<4 | rune(c-'A'+10)
			default:
				return 0, false
			}
		}
		return r, true
	}
	inString := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			inString = !inString
		case c == '\\' && inString:
			r, ok := hex4(i)
			switch {
			case !ok:
				i++ // a two-character escape
			case r >= 0xD800 && r <= 0xDBFF:
				if lo, ok := hex4(i + 6); ok && lo >= 0xDC00 && lo <= 0xDFFF {
					i += 11
					continue
				}
				return i
			case r >= 0xDC00 && r <= 0xDFFF:
				return i
			default:
				i += 5
			}
		}
	}
	return -1
}
