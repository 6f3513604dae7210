package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Error types, as OpenAI names them.
const (
	TypeInvalidRequest = "invalid_request_error"
	TypeNotFound       = "not_found_error"
	TypeServer         = "server_error"
	TypeUnavailable    = "service_unavailable_error"
)

// Error codes the server sets (in addition to plain invalid requests).
const (
	CodeContextLengthExceeded = "context_length_exceeded"
	CodeModelNotFound         = "model_not_found"
	CodeDeviceNotFound        = "device_not_found"
	CodeRequestTooLarge       = "request_too_large"
	CodeMethodNotAllowed      = "method_not_allowed"
	CodeNotFound              = "not_found"
	CodeInvalidUTF8           = "invalid_utf8"
	CodeInvalidAPIKey         = "invalid_api_key"
)

// APIError is an OpenAI-style error: the "error" object of an error response body.
// Client returns it (as *APIError) for every non-2xx response and for an error event
// in a stream.
type APIError struct {
	// StatusCode is the HTTP status; 0 for an error event inside a stream.
	StatusCode int    `json:"-"`
	Message    string `json:"message"`
	Type       string `json:"type"`
	Param      string `json:"param"` // the offending request field, if any
	Code       string `json:"code"`
}

func (e *APIError) Error() string {
	s := "httpapi: "
	if e.StatusCode != 0 {
		s += fmt.Sprintf("%d %s: ", e.StatusCode, http.StatusText(e.StatusCode))
	}
	s += e.Message
	if e.Code != "" {
		s += " (" + e.Code + ")"
	}
	return s
}

// MarshalJSON writes empty Param and Code as null, as OpenAI does.
func (e APIError) MarshalJSON() ([]byte, error) {
	null := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	return json.Marshal(struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	}{e.Message, e.Type, null(e.Param), null(e.Code)})
}

// errorBody is the JSON body of an error response.
type errorBody struct {
	Error *APIError `json:"error"`
}

func invalid(param, format string, args ...any) *APIError {
	return &APIError{StatusCode: http.StatusBadRequest, Type: TypeInvalidRequest, Param: param, Message: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, e *APIError) {
	writeJSON(w, e.StatusCode, errorBody{e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only our own types are written: a bug
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"message":"encoding the response failed","type":"server_error","param":null,"code":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
