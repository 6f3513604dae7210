package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/ollamastore"
	"github.com/sled-project/sled/services"
)

// pythonClients returns a Python interpreter that has the pinned client libraries
// of tests/pyclients/requirements.txt, creating a virtual environment for them
// (pip install, once per requirements file) in the user's cache directory, or in
// $SLED_PYCLIENTS_VENV. Concurrent test binaries share it under a file lock.
func pythonClients(t *testing.T) string {
	t.Helper()
	req, err := os.ReadFile("pyclients/requirements.txt")
	if err != nil {
		t.Fatal(err)
	}
	venv := os.Getenv("SLED_PYCLIENTS_VENV")
	if venv == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(req)
		venv = filepath.Join(cache, "sled", "pyclients-"+hex.EncodeToString(sum[:6]))
	}
	py := filepath.Join(venv, "bin", "python")
	if err := os.MkdirAll(filepath.Dir(venv), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(venv+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(venv, ".sled-ready")
	if _, err := os.Stat(ready); err == nil {
		return py
	}
	run := func(name string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	os.RemoveAll(venv)
	run("python3", "-m", "venv", venv)
	run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", "pyclients/requirements.txt")
	if err := os.WriteFile(ready, req, 0o644); err != nil {
		t.Fatal(err)
	}
	return py
}

// TestPythonClients runs the official ollama and openai Python packages (pinned
// versions) against a running SLED whose target comes from an Ollama model store
// by name: list, show, ps, generate and chat streamed and not, options, errors;
// models.retrieve, completions and chat with logprobs, streaming with usage,
// refused parameters. tests/pyclients/clients.py holds the assertions.
func TestPythonClients(t *testing.T) {
	py := pythonClients(t)
	store := t.TempDir()
	const name = "stories:260k"
	if _, err := ollamastore.Put(store, name, testmodels.Path(t, testmodels.Target)); err != nil {
		t.Fatal(err)
	}
	const draftName = "stories-draft:4l"
	if _, err := ollamastore.Put(store, draftName, testmodels.Path(t, testmodels.Draft4L)); err != nil {
		t.Fatal(err)
	}
	opts := services.FindOptions{OllamaDir: store, NoFetch: true}
	ref, err := services.ResolveModel(context.Background(), name, opts)
	if err != nil {
		t.Fatal(err)
	}
	dref, err := services.ResolveModel(context.Background(), draftName, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, services.UpConfig{
		Target: ref.Path, ModelName: ref.ID, ModelDigest: ref.Digest,
		Drafts: []string{dref.Path}, DraftNames: []string{dref.ID}, Devices: 1, HTTPAddr: "127.0.0.1:0",
		// The clients check that one request gives the same text and logprobs
		// through every client path, exactly. Draft budgets depend on timing,
		// so each request's passes would be composed differently, and the
		// target's near-ties may then flip (lossless up to near-ties); the
		// static length keeps one sequential request's passes identical.
		Budget: goodput.Policy{Static: true},
	})
	// Devices from store drafts are named by the drafts' Ollama names.
	resp, err := http.Get("http://" + s.HTTPAddr() + "/v1/models/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var mo httpapi.ModelObject
	json.NewDecoder(resp.Body).Decode(&mo)
	resp.Body.Close()
	if mo.ID != name || mo.SLED == nil || len(mo.SLED.Devices) != 1 || mo.SLED.Devices[0].Model != draftName ||
		mo.SLED.Devices[0].Name != "device-1-stories-draft-4l" {
		t.Errorf("GET /v1/models/%s: %+v", name, mo)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "pyclients/clients.py")
	cmd.Env = append(os.Environ(), "SLED_URL=http://"+s.HTTPAddr(), "SLED_MODEL="+name, "NO_PROXY=*")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the Python clients failed: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}
