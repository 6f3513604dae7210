// Package schemas holds the JSON Schema (draft 2020-12) of every SLED event
// payload, embedded in the binary. The file name and the schema's title are the
// CloudEvents type (e.g. io.sled.draft.ready.v1); a breaking change is a new
// file with the next version, never an edit of a published one.
//
// Limits (maximum draft length, tokens per event, id formats) are part of the
// schemas; Go code that needs them uses the constants below, which the tests
// keep in step with the JSON.
package schemas

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// CloudEvents types of the payloads described here.
const (
	DraftReadyV1   = "io.sled.draft.ready.v1"
	VerifyBatchV1  = "io.sled.verify.batch.v1"
	VerifyResultV1 = "io.sled.verify.result.v1"
)

// Limits enforced by the schemas.
const (
	MaxDraftTokens     = 64   // draft, draft_probs and top_k entries per event
	MaxTopK            = 64   // candidates per top_k entry
	MaxCommittedTokens = 1024 // committed tokens per event
	MaxPrefixTokens    = 8192 // prefix tokens, and the largest prefix_len
	MaxBatchDrafts     = 256  // drafts per verify.batch
	MaxErrorLen        = 1024 // bytes of a result's error text
	// IDPattern is the format of every id (device, session, pool, worker,
	// batch): safe as a NATS subject token.
	IDPattern = `^[A-Za-z0-9_-]{1,64}$`
)

// BaseURL prefixes each schema's $id: BaseURL + type + ".json".
const BaseURL = "https://sled.dev/schemas/"

//go:embed *.json
var files embed.FS

// ErrUnknownType is returned for a type no schema describes.
var ErrUnknownType = errors.New("schemas: unknown event type")

// Types lists the event types that have a schema, sorted.
func Types() []string {
	ents, _ := fs.ReadDir(files, ".")
	var out []string
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Raw returns the schema document of an event type.
func Raw(eventType string) ([]byte, error) {
	b, err := files.ReadFile(eventType + ".json")
	if err != nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, eventType)
	}
	return b, nil
}

// FS exposes the embedded schema files (one <type>.json per event type).
func FS() fs.FS { return files }

var (
	compiled   = sync.OnceValues(func() (map[string]*jsonschema.Schema, error) { return compileAll(false) })
	structural = sync.OnceValues(func() (map[string]*jsonschema.Schema, error) { return compileAll(true) })
)

// elementDefs are the $defs that constrain every element of the token and
// probability arrays; Structural drops their bounds.
var elementDefs = []string{"token", "prob"}

func compileAll(loose bool) (map[string]*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	types := Types()
	for _, t := range types {
		raw, _ := Raw(t)
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("schemas: parse %s: %w", t, err)
		}
		if loose {
			if defs, ok := doc.(map[string]any)["$defs"].(map[string]any); ok {
				for _, name := range elementDefs {
					if _, ok := defs[name]; ok {
						defs[name] = map[string]any{"type": "number"}
					}
				}
			}
		}
		if err := c.AddResource(BaseURL+t+".json", doc); err != nil {
			return nil, fmt.Errorf("schemas: add %s: %w", t, err)
		}
	}
	out := make(map[string]*jsonschema.Schema, len(types))
	for _, t := range types {
		s, err := c.Compile(BaseURL + t + ".json")
		if err != nil {
			return nil, fmt.Errorf("schemas: compile %s: %w", t, err)
		}
		out[t] = s
	}
	return out, nil
}

// Compiled returns the compiled schema of an event type. Schemas are compiled
// once, on first use; the result is safe for concurrent use.
func Compiled(eventType string) (*jsonschema.Schema, error) {
	m, err := compiled()
	if err != nil {
		return nil, err
	}
	s, ok := m[eventType]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, eventType)
	}
	return s, nil
}

// Structural returns the schema of an event type with the per-element
// constraints of token and probability arrays ($defs token and prob)
// reduced to "type": "number". Everything else (shape, required fields,
// array lengths, ids, formats, enums) is kept. Validating numbers against
// bounds costs microseconds each in the validator, and drafts carry dozens
// to thousands of them, so a caller that checks the element bounds itself
// (token ids integral and in [0, 2^31-1], probabilities in [0, 1]; the
// events package does, after unmarshalling into int32 and float32) uses this
// schema on its hot path. A value that passes Structural and those checks
// passes Compiled.
func Structural(eventType string) (*jsonschema.Schema, error) {
	m, err := structural()
	if err != nil {
		return nil, err
	}
	s, ok := m[eventType]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, eventType)
	}
	return s, nil
}

// Validate checks a decoded JSON value (as produced by
// jsonschema.UnmarshalJSON, i.e. numbers as json.Number) against the schema
// of eventType.
func Validate(eventType string, v any) error {
	s, err := Compiled(eventType)
	if err != nil {
		return err
	}
	return s.Validate(v)
}
