package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/ollamastore"
	"github.com/sled-project/sled/services"
)

// freePort returns a loopback port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestRolesAsProcesses runs SLED as four processes of the real binary, as a
// deployment across hosts would: `sled nats`, `sled verifier`, `sled batcher` and
// `sled drafter`, talking only through NATS; then asks the device's HTTP API for a
// completion and stops every process with SIGTERM.
func TestRolesAsProcesses(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sled")
	build := exec.Command("go", "build", "-o", bin, "../cmd/sled")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	natsPort, httpPort := freePort(t), freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	models := testmodels.Dir()
	type proc struct {
		name string
		cmd  *exec.Cmd
		out  *bytes.Buffer
	}
	var procs []*proc
	startProc := func(name string, args ...string) {
		var out bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(os.Environ(), "SLED_MODEL_DIR="+models)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, &proc{name, cmd, &out})
	}
	t.Cleanup(func() {
		for _, p := range procs {
			if p.cmd.ProcessState == nil {
				p.cmd.Process.Kill()
				p.cmd.Wait()
			}
		}
	})
	startProc("nats", "nats", "--port", fmt.Sprint(natsPort), "--store-dir", t.TempDir())
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", natsPort))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	// The target comes from an Ollama model store, by its Ollama name: the
	// verifier reads the blob in place and announces the name in its
	// heartbeats, and the standalone device serves the model under it.
	store := t.TempDir()
	const ollamaName = "stories:260k"
	put, err := ollamastore.Put(store, ollamaName, testmodels.Path(t, testmodels.Target))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := services.ResolveModel(context.Background(), ollamaName, services.FindOptions{OllamaDir: store, NoFetch: true})
	if err != nil || ref.Path != put.Path || ref.ID != ollamaName || ref.Digest != put.Digest {
		t.Fatalf("ResolveModel(%q) = %+v, %v; the store holds %+v", ollamaName, ref, err, put)
	}
	t.Setenv("OLLAMA_MODELS", store) // the processes inherit it
	startProc("verifier", "verifier", "--nats", url, "--target", ollamaName, "--verifier-threads", "1")
	startProc("batcher", "batcher", "--nats", url)
	startProc("drafter", "drafter", "--nats", url, "--draft", testmodels.Draft4L, "--id", "edge-1", "--http", fmt.Sprintf("127.0.0.1:%d", httpPort), "--threads", "1")
	// A second device drafts across vocabularies: SmolLM2-135M (49,152 tokens)
	// for the 512-token target, given only the target's tokenizer, extracted
	// by `sled model vocab`.
	vocab := filepath.Join(t.TempDir(), "stories-vocab.gguf")
	if out, err := exec.Command(bin, "model", "vocab", testmodels.Path(t, testmodels.Target), vocab).CombinedOutput(); err != nil {
		t.Fatalf("sled model vocab: %v\n%s", err, out)
	}
	crossPort := freePort(t)
	startProc("cross-drafter", "drafter", "--nats", url, "--draft", testmodels.Real(t, modelcache.SmolLM2), "--target-vocab", vocab,
		"--id", "edge-2", "--http", fmt.Sprintf("127.0.0.1:%d", crossPort), "--threads", "1", "--metrics-addr", "")
	api := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	crossAPI := fmt.Sprintf("http://127.0.0.1:%d", crossPort)
	for _, a := range []string{api, crossAPI} {
		waitFor(t, func() bool {
			r, err := http.Get(a + "/healthz")
			if err == nil {
				r.Body.Close()
			}
			return err == nil && r.StatusCode == 200
		})
	}

	body, _ := json.Marshal(map[string]any{"prompt": "Once upon a time", "max_tokens": 30})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
		SLED struct {
			Device   string `json:"device"`
			Rounds   int    `json:"rounds"`
			Accepted int    `json:"accepted"`
		} `json:"sled"`
	}
	want := ", there was a little girl named Lily. She loved to play outside in the park."
	for _, dev := range []struct{ api, id string }{{api, "edge-1"}, {crossAPI, "edge-2"}} {
		req, _ := http.NewRequestWithContext(ctx, "POST", dev.api+"/v1/completions", bytes.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got.SLED.Rounds, got.Choices = 0, nil
		json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(got.Choices) != 1 || !strings.HasPrefix(got.Choices[0].Text, want) {
			for _, p := range procs {
				t.Logf("%s:\n%s", p.name, p.out)
			}
			t.Fatalf("%s: status %d, completion %+v", dev.id, resp.StatusCode, got)
		}
		t.Logf("%s: %q in %d rounds (%d draft tokens accepted)", got.SLED.Device, got.Choices[0].Text, got.SLED.Rounds, got.SLED.Accepted)
		if got.SLED.Device != dev.id || got.SLED.Rounds == 0 || dev.id == "edge-1" && got.SLED.Rounds >= 30 {
			t.Fatalf("sled figures %+v", got.SLED)
		}
	}
	// The device serves the target's id, learned from the verifier.
	var served struct {
		Data []httpapi.ModelObject `json:"data"`
	}
	if r, err := http.Get(api + "/v1/models"); err != nil {
		t.Fatal(err)
	} else {
		json.NewDecoder(r.Body).Decode(&served)
		r.Body.Close()
	}
	if len(served.Data) != 1 || served.Data[0].ID != ollamaName || served.Data[0].SLED == nil || served.Data[0].SLED.Devices[0].Name != "edge-1" {
		t.Errorf("the standalone device serves %+v, want the target's id %q", served.Data, ollamaName)
	}
	// Graceful shutdown: every role exits cleanly on SIGTERM, the server last.
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s exited with %v:\n%s", p.name, err, p.out)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not stop within 10s of SIGTERM", p.name)
		}
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	if !testwait.Eventually(20*time.Second, 50*time.Millisecond, ok) {
		t.Fatal("timed out waiting for a process to come up")
	}
}
