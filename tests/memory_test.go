package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/services"
)

// memoryBound is how far the resident set may stay above its post-start figure
// once the system is idle again after TestMemoryIsBounded's load. Measured on a
// 2-core x86-64 (docs/benchmarks.md, "Memory"): +10 MB with the engine's memory
// policy (JetStream's block caches and dedupe ids, the batcher's sessions: Go
// heap that lives for their windows), +31 MB without the fixed mmap threshold (26
// MB of free C heap), +36 MB without the idle release (Go's high-water mark), +57
// MB with neither.
const memoryBound = 20 << 20

// cHeapFreeBound bounds how much the free bytes malloc keeps in its arenas may
// grow from start to idle: 1-2 MB with the fixed mmap threshold, 25 MB after a
// 900 KB prompt without it.
const cHeapFreeBound = 8 << 20

// TestMemoryIsBounded runs 200 concurrent small requests and one 900 KB prompt
// through the real HTTP API of an in-process `sled up` on the tiny models, and
// checks that once the engine has gone idle (and released memory, after
// engine.DefaultIdleRelease) the resident set is back within memoryBound of its
// post-start figure, malloc keeps little free, and the goroutines are back to
// their count before the load.
func TestMemoryIsBounded(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Fatal("no /proc: the resident set cannot be read: ", err)
	}
	drafts := []string{testmodels.Path(t, testmodels.Draft4L), testmodels.Path(t, testmodels.Draft3L), requantized(t)}
	s := start(t, services.UpConfig{Drafts: drafts, Devices: 3, HTTPAddr: "127.0.0.1:0"})
	url := "http://" + s.HTTPAddr() + "/v1/completions"
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: time.Minute}
	post := func(body []byte) (int, []byte, error) {
		r, err := cl.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		defer r.Body.Close()
		b, err := io.ReadAll(r.Body)
		return r.StatusCode, b, err
	}
	small := func(i int) error {
		code, b, err := post(fmt.Appendf(nil, `{"prompt":"Once upon a time %d","max_tokens":16}`, i))
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("status %d: %s", code, b)
		}
		return err
	}

	// Baseline: every device has served, connections are closed, and memory has
	// been released as the idle engine releases it.
	for i := range len(s.Generators()) {
		if err := small(i); err != nil {
			t.Fatal(err)
		}
	}
	tr.CloseIdleConnections()
	settle := func() int {
		// Server-side connection goroutines end shortly after the client's close.
		n := runtime.NumGoroutine()
		for range 20 {
			time.Sleep(50 * time.Millisecond)
			m := runtime.NumGoroutine()
			if m == n {
				break
			}
			n = m
		}
		return n
	}
	baseGoroutines := settle()
	engine.ReleaseMemory()
	base := memSnapshot(t)
	t.Logf("after start:    %s", base)

	// One 900 KB prompt: more tokens than the tiny model's context, refused with a
	// clear error after tokenizing.
	prompt := strings.Repeat("once upon a time there was a little girl named lily. ", 900<<10/53)
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "max_tokens": 8})
	code, b, err := post(body)
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Error httpapi.APIError }
	if json.Unmarshal(b, &e); code != http.StatusBadRequest || e.Error.Code != httpapi.CodeContextLengthExceeded {
		t.Fatalf("a %d KB prompt: status %d, %.300s; want 400 %s", len(body)>>10, code, b, httpapi.CodeContextLengthExceeded)
	}
	t.Logf("%d KB prompt:  %d %s", len(body)>>10, code, e.Error.Message)

	// 200 concurrent requests.
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			if err := small(i); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	loaded := memSnapshot(t)
	t.Logf("after load:     %s (200 requests in %s)", loaded, time.Since(t0).Round(time.Millisecond))
	tr.CloseIdleConnections()

	// Idle: the engine releases memory DefaultIdleRelease after its last work.
	releases := engine.IdleReleases()
	deadline := time.Now().Add(engine.DefaultIdleRelease + 10*time.Second)
	for engine.IdleReleases() == releases && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if engine.IdleReleases() == releases {
		t.Fatalf("the engine did not release memory within %s of going idle", engine.DefaultIdleRelease+10*time.Second)
	}
	goroutines := settle()
	idle := memSnapshot(t)
	t.Logf("idle, released: %s", idle)

	if grew := idle.RSS - base.RSS; grew > memoryBound {
		t.Errorf("idle RSS %.1f MB is %.1f MB above the post-start %.1f MB; the bound is %d MB",
			mb(idle.RSS), mb(grew), mb(base.RSS), memoryBound>>20)
	}
	// Relative to the start: earlier tests in this process may have left
	// free blocks of their own in the arenas.
	if idle.C.OK && idle.C.Free > base.C.Free+cHeapFreeBound {
		t.Errorf("malloc keeps %.1f MB free in its arenas once idle, %.1f MB more than after start; the bound is %d MB (is the mmap threshold fixed?)",
			mb(idle.C.Free), mb(idle.C.Free-base.C.Free), cHeapFreeBound>>20)
	}
	if goroutines > baseGoroutines+2 {
		t.Errorf("%d goroutines once idle, %d before the load", goroutines, baseGoroutines)
	}
}

type memFigures bench.Memory

func (m memFigures) String() string {
	return fmt.Sprintf("RSS %5.1f MB, Go mapped %5.1f MB (live %5.1f), malloc arenas %5.1f MB (free %5.1f), %d goroutines",
		mb(m.RSS), mb(m.GoMapped), mb(m.GoLive), mb(m.C.Arena), mb(m.C.Free), m.Goroutines)
}

func mb(b uint64) float64 { return float64(int64(b)) / (1 << 20) }

func memSnapshot(t testing.TB) memFigures {
	t.Helper()
	m := memFigures(bench.ReadMemory())
	if m.RSS == 0 {
		t.Fatal("no VmRSS in /proc/self/status")
	}
	return m
}
