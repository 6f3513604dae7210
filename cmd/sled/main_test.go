package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sled-project/sled/internal/testmodels"
)

// run executes the command line in-process and returns what it printed.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&out)
	rootCmd.SetArgs(args)
	old := os.Stdout
	r, w, _ := os.Pipe()
	os.Stdout = w
	err := rootCmd.ExecuteContext(context.Background())
	w.Close()
	os.Stdout = old
	var piped bytes.Buffer
	piped.ReadFrom(r)
	return out.String() + piped.String(), err
}

func TestModelInspectJSON(t *testing.T) {
	out, err := run(t, "model", "inspect", "--json", testmodels.Path(t, testmodels.Target))
	if err != nil {
		t.Fatal(err, out)
	}
	var info struct {
		Architecture string `json:"architecture"`
		VocabSize    int    `json:"vocab_size"`
		Layers       int    `json:"layers"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if info.Architecture != "llama" || info.VocabSize != 512 || info.Layers != 5 {
		t.Fatalf("inspect: %+v", info)
	}
}

func TestFindModel(t *testing.T) {
	dir := testmodels.Dir()
	findModel := func(ctx context.Context, dir, name string) (string, error) {
		ref, err := resolveModel(ctx, dir, name)
		return ref.Path, err
	}
	if p, err := findModel(context.Background(), dir, testmodels.Target); err != nil || !strings.HasSuffix(p, testmodels.Target) {
		t.Fatalf("findModel: %q %v", p, err)
	}
	_, err := findModel(context.Background(), dir, "no-such-model.gguf")
	if err == nil || !strings.Contains(err.Error(), "sled model pull") || !strings.Contains(err.Error(), "SLED_MODEL_DIR") {
		t.Fatalf("missing model error does not say how to get one: %v", err)
	}
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	p, err := findModel(context.Background(), dir, testmodels.Draft4L+"@Q8_0")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p) != "stories260k-draft-4L-q8_0.gguf" {
		t.Fatalf("requantized copy at %s", p)
	}
	out, err := run(t, "model", "inspect", p)
	if err != nil || !strings.Contains(out, "Q8_0") {
		t.Fatalf("inspect of the requantized copy: %v\n%s", err, out)
	}
	if _, err := findModel(context.Background(), dir, testmodels.Draft4L+"@Q3_K"); err == nil {
		t.Fatal("unsupported type accepted")
	}
}

// --unified-kv is the centralized server's cache layout: in another mode it is
// refused at start rather than ignored.
func TestUpUnifiedKVNeedsCentralized(t *testing.T) {
	_, err := run(t, "up", "--unified-kv", "--mode", "sled", "--pair", "tiny", "--demo=false")
	if err == nil || !strings.Contains(err.Error(), "--mode centralized") {
		t.Fatalf("sled up --unified-kv --mode sled: %v, want a refusal naming --mode centralized", err)
	}
}
