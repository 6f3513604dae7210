// Package testmodels locates the real GGUF models that tests run on. The models are
// never committed: they are read from the directory named by SLED_MODEL_DIR (the
// Makefile and .ci/run set it to ../shared/models beside the checkout). A missing
// model fails the test with instructions; it is never skipped.
package testmodels

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
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
