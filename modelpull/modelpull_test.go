package modelpull_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/modelpull"
)

// model is the real target model file, served by the test servers.
func model(t *testing.T) ([]byte, string) {
	t.Helper()
	b, err := os.ReadFile(testmodels.Path(t, testmodels.Target))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// server serves content at /m/model.gguf with Range support (http.ServeContent),
// and records the Range headers it receives.
type server struct {
	*httptest.Server
	content []byte
	mu      sync.Mutex
	ranges  []string
	// cutAt, when > 0, makes the next full or ranged response stop after the
	// response reaches that offset of the file and drop the connection.
	cutAt       atomic.Int64
	ignoreRange bool
	header      http.Header
	etag        string
}

func newServer(t *testing.T, content []byte) *server {
	s := &server{content: content, header: http.Header{}, etag: `"v1"`}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *server) url() string { return s.URL + "/m/model.gguf" }

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/m/model.gguf" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	s.mu.Unlock()
	for k, v := range s.header {
		w.Header()[k] = v
	}
	if s.ignoreRange {
		r.Header.Del("Range")
	}
	if cut := s.cutAt.Swap(0); cut > 0 {
		start := int64(0)
		if rg := r.Header.Get("Range"); rg != "" {
			start, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
			w.Header().Set("Content-Range", "bytes "+strconv.FormatInt(start, 10)+"-"+strconv.Itoa(len(s.content)-1)+"/"+strconv.Itoa(len(s.content)))
			w.Header().Set("Content-Length", strconv.FormatInt(int64(len(s.content))-start, 10))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(s.content)))
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusOK)
		}
		w.Write(s.content[start:cut])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	w.Header().Set("ETag", s.etag)
	http.ServeContent(w, r, "model.gguf", time.Time{}, bytes.NewReader(s.content))
}

func (s *server) rangeHeaders() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d served", path, len(got), len(want))
	}
	for _, leftover := range []string{path + ".partial", path + ".partial.json"} {
		if _, err := os.Stat(leftover); err == nil {
			t.Errorf("%s left behind", leftover)
		}
	}
}

func noFiles(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		t.Errorf("file left behind: %s", e.Name())
	}
}

func TestFullDownload(t *testing.T) {
	content, sum := model(t)
	s := newServer(t, content)
	dir := t.TempDir()
	var prog bytes.Buffer
	res, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dir, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "model.gguf")
	if res.Path != want || res.Size != int64(len(content)) || res.SHA256 != sum || res.Verified != "" || res.ResumedFrom != 0 {
		t.Errorf("result %+v", res)
	}
	checkFile(t, want, content)
	if p := prog.String(); !strings.Contains(p, "100.0%") || !strings.Contains(p, "MiB") || !strings.HasSuffix(p, "\n") {
		t.Errorf("progress %q", p)
	}

	// An existing file is kept unless overwriting is allowed; a file path works.
	if _, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: want}); !errors.Is(err, fs.ErrExist) {
		t.Errorf("existing destination: %v", err)
	}
	other := filepath.Join(dir, "renamed.gguf")
	res, err = modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: other, SHA256: strings.ToUpper(sum)})
	if err != nil || res.Verified != "option" {
		t.Fatalf("%+v %v", res, err)
	}
	checkFile(t, other, content)
	if _, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: other, Overwrite: true}); err != nil {
		t.Fatal(err)
	}
}

func TestResumeAfterCut(t *testing.T) {
	content, sum := model(t)
	s := newServer(t, content)
	dir := t.TempDir()
	dest := filepath.Join(dir, "m.gguf")
	cut := int64(len(content) / 3)
	s.cutAt.Store(cut)
	_, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest, Retries: -1})
	if err == nil {
		t.Fatal("a cut transfer succeeded")
	}
	st, statErr := os.Stat(dest + ".partial")
	if statErr != nil || st.Size() == 0 || st.Size() > cut {
		t.Fatalf("partial after the cut: %v %v (cut at %d)", st, statErr, cut)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("destination exists after a failed download")
	}
	have := st.Size()
	res, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest, SHA256: sum})
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom != have || res.SHA256 != sum {
		t.Errorf("result %+v, want resumed from %d", res, have)
	}
	if rs := s.rangeHeaders(); len(rs) != 2 || rs[1] != "bytes="+strconv.FormatInt(have, 10)+"-" {
		t.Errorf("range headers %q", rs)
	}
	checkFile(t, dest, content)

	// With retries, one Pull survives a cut by resuming on its own.
	dest2 := filepath.Join(dir, "m2.gguf")
	s.cutAt.Store(cut)
	res, err = modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest2})
	if err != nil {
		t.Fatal(err)
	}
	if res.SHA256 != sum {
		t.Errorf("sum %s", res.SHA256)
	}
	checkFile(t, dest2, content)
	if rs := s.rangeHeaders(); !strings.HasPrefix(rs[len(rs)-1], "bytes=") {
		t.Errorf("the retry did not resume: %q", rs)
	}
}

func TestServerIgnoringRange(t *testing.T) {
	content, sum := model(t)
	s := newServer(t, content)
	dest := filepath.Join(t.TempDir(), "m.gguf")
	s.cutAt.Store(int64(len(content) / 2))
	if _, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest, Retries: -1}); err == nil {
		t.Fatal("a cut transfer succeeded")
	}
	// Spoil the partial file: appending the whole file after it would be caught
	// only if the restart did not truncate.
	f, _ := os.OpenFile(dest+".partial", os.O_WRONLY, 0)
	f.WriteAt([]byte("GGUFjunk"), 0)
	f.Close()
	s.ignoreRange = true
	res, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest})
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom != 0 || res.SHA256 != sum {
		t.Errorf("result %+v", res)
	}
	checkFile(t, dest, content)
}

func TestChecksumMismatch(t *testing.T) {
	content, sum := model(t)
	s := newServer(t, content)
	dir := t.TempDir()
	wrong := strings.Repeat("ab", 32)
	_, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dir, SHA256: wrong})
	if !errors.Is(err, modelpull.ErrChecksum) || !strings.Contains(err.Error(), sum) || !strings.Contains(err.Error(), wrong) {
		t.Fatalf("err = %v", err)
	}
	noFiles(t, dir)

	// A header's sum is checked too, and a right one is reported as verified.
	s.header.Set("X-Checksum-Sha256", wrong)
	if _, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dir}); !errors.Is(err, modelpull.ErrChecksum) {
		t.Fatalf("header mismatch: %v", err)
	}
	noFiles(t, dir)
	raw, _ := hex.DecodeString(sum)
	s.header.Del("X-Checksum-Sha256")
	s.header.Set("Digest", "md5=xyz, SHA-256="+base64.StdEncoding.EncodeToString(raw))
	res, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dir})
	if err != nil || res.Verified != "header" {
		t.Fatalf("digest header: %+v %v", res, err)
	}

	// A malformed expected sum is refused before downloading.
	if _, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: t.TempDir(), SHA256: "xyz"}); err == nil {
		t.Error("malformed --sha256 accepted")
	}
}

func TestHTTPErrorsAndBadContent(t *testing.T) {
	content, _ := model(t)
	s := newServer(t, content)
	dir := t.TempDir()
	_, err := modelpull.Pull(context.Background(), s.URL+"/missing.gguf", modelpull.Options{Out: dir})
	var se *modelpull.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusNotFound || !strings.Contains(err.Error(), "404") {
		t.Fatalf("404: %v", err)
	}
	noFiles(t, dir)

	html := newServer(t, []byte("<html><body>Sign in to download</body></html>"))
	_, err = modelpull.Pull(context.Background(), html.url(), modelpull.Options{Out: dir})
	if !errors.Is(err, modelpull.ErrNotGGUF) {
		t.Fatalf("HTML page: %v", err)
	}
	noFiles(t, dir)

	// The right magic, but truncated: the GGUF validator refuses it.
	trunc := newServer(t, content[:len(content)/2])
	_, err = modelpull.Pull(context.Background(), trunc.url(), modelpull.Options{Out: dir})
	if !errors.Is(err, modelpull.ErrNotGGUF) {
		t.Fatalf("truncated GGUF: %v", err)
	}
	noFiles(t, dir)

	empty := newServer(t, nil)
	if _, err = modelpull.Pull(context.Background(), empty.url(), modelpull.Options{Out: dir}); !errors.Is(err, modelpull.ErrNotGGUF) {
		t.Fatalf("empty body: %v", err)
	}
	noFiles(t, dir)

	if _, err := modelpull.Pull(context.Background(), "ftp://example.com/x.gguf", modelpull.Options{Out: dir}); err == nil {
		t.Error("ftp URL accepted")
	}
	if _, err := modelpull.Pull(context.Background(), s.URL+"/", modelpull.Options{Out: dir}); err == nil {
		t.Error("URL without a file name accepted for a directory destination")
	}
}

func TestCancel(t *testing.T) {
	content, _ := model(t)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.Write(content[:1000])
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	dest := filepath.Join(t.TempDir(), "m.gguf")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := modelpull.Pull(ctx, srv.URL+"/m.gguf", modelpull.Options{Out: dest})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if st, err := os.Stat(dest + ".partial"); err != nil || st.Size() != 1000 {
		t.Errorf("partial kept for resuming: %v %v", st, err)
	}
}

func TestResumeEdgeCases(t *testing.T) {
	content, sum := model(t)
	s := newServer(t, content)
	dest := filepath.Join(t.TempDir(), "m.gguf")

	// The file changed on the server since the partial download: If-Range makes
	// the server send the whole new file.
	s.cutAt.Store(int64(len(content) / 2))
	if _, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest, Retries: -1}); err == nil {
		t.Fatal("a cut transfer succeeded")
	}
	s.etag = `"v2"`
	res, err := modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest})
	if err != nil || res.ResumedFrom != 0 || res.SHA256 != sum {
		t.Fatalf("changed file: %+v %v", res, err)
	}
	checkFile(t, dest, content)

	// A partial download that is already whole gets 416 and is finished as is.
	dest2 := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(dest2+".partial", content, 0o644)
	os.WriteFile(dest2+".partial.json", []byte(`{"url":"`+s.url()+`","etag":"\"v2\""}`), 0o644)
	res, err = modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest2})
	if err != nil || res.ResumedFrom != int64(len(content)) || res.SHA256 != sum {
		t.Fatalf("complete partial: %+v %v", res, err)
	}
	checkFile(t, dest2, content)

	// A partial download of another URL is discarded.
	dest3 := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(dest3+".partial", []byte("GGUFstale"), 0o644)
	os.WriteFile(dest3+".partial.json", []byte(`{"url":"http://elsewhere/x.gguf"}`), 0o644)
	res, err = modelpull.Pull(context.Background(), s.url(), modelpull.Options{Out: dest3})
	if err != nil || res.ResumedFrom != 0 {
		t.Fatalf("stale partial: %+v %v", res, err)
	}
	checkFile(t, dest3, content)
}
