package ollamastore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	cases := map[string]string{
		"qwen2.5-coder:1.5b":                "registry.ollama.ai/library/qwen2.5-coder:1.5b",
		"llama3":                            "registry.ollama.ai/library/llama3:latest",
		"me/mymodel:v2":                     "registry.ollama.ai/me/mymodel:v2",
		"example.com:5000/ns/model:tag":     "",
		"hf.co/bartowski/Model-GGUF:Q4_K_M": "hf.co/bartowski/Model-GGUF:Q4_K_M",
	}
	for in, want := range cases {
		n, err := ParseName(in)
		if want == "" {
			if err == nil {
				t.Errorf("ParseName(%q) = %+v, want an error (a port is not a name part)", in, n)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseName(%q): %v", in, err)
			continue
		}
		if got := n.Host + "/" + n.Namespace + "/" + n.Model + ":" + n.Tag; got != want {
			t.Errorf("ParseName(%q) = %s, want %s", in, got, want)
		}
	}
	for _, bad := range []string{"", "../etc/passwd", "a/b/c/d", "x:", "..:latest", "a b", "/abs/path.gguf"} {
		if _, err := ParseName(bad); !errors.Is(err, ErrBadName) {
			t.Errorf("ParseName(%q): %v, want ErrBadName", bad, err)
		}
	}
	if n, _ := ParseName("qwen2.5-coder:1.5b"); n.String() != "qwen2.5-coder:1.5b" {
		t.Errorf("String() = %q", n.String())
	}
}

// A model put in the store is found by name, as a path into the store (no copy),
// and damage to the store is reported, not loaded.
func TestFindInPlace(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(t.TempDir(), "m.gguf")
	if err := os.WriteFile(src, []byte("GGUF fake weights for a layout test"), 0o644); err != nil {
		t.Fatal(err)
	}
	put, err := Put(dir, "tiny:1k", src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Find(dir, "tiny:1k")
	if err != nil {
		t.Fatal(err)
	}
	if got != put || !strings.HasPrefix(got.Path, filepath.Join(dir, "blobs")+string(filepath.Separator)+"sha256-") ||
		!digestRE.MatchString(got.Digest) || got.Name != "tiny:1k" {
		t.Fatalf("Find = %+v, Put = %+v", got, put)
	}
	if _, err := Find(dir, "tiny"); !errors.Is(err, ErrNotFound) {
		t.Errorf("tag latest: %v, want ErrNotFound", err)
	}
	if _, err := Find(dir, "other:1k"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "ollama pull other:1k") {
		t.Errorf("missing model: %v", err)
	}
	// A truncated blob.
	if err := os.WriteFile(got.Path+".tmp", []byte("GGUF"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(got.Path)
	os.Rename(got.Path+".tmp", got.Path)
	if _, err := Find(dir, "tiny:1k"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated blob: %v, want ErrCorrupt", err)
	}
	os.Remove(got.Path)
	if _, err := Find(dir, "tiny:1k"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("missing blob: %v, want ErrCorrupt", err)
	}
	// A manifest that is not JSON, or has no model layer.
	mpath := filepath.Join(dir, "manifests", DefaultHost, DefaultNamespace, "tiny", "1k")
	os.WriteFile(mpath, []byte("{"), 0o644)
	if _, err := Find(dir, "tiny:1k"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("bad manifest: %v, want ErrCorrupt", err)
	}
	os.WriteFile(mpath, []byte(`{"schemaVersion":2,"layers":[{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:`+strings.Repeat("0", 64)+`","size":1}]}`), 0o644)
	if _, err := Find(dir, "tiny:1k"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("no model layer: %v, want ErrCorrupt", err)
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("OLLAMA_MODELS", "/srv/ollama")
	if DefaultDir() != "/srv/ollama" {
		t.Errorf("DefaultDir with OLLAMA_MODELS = %q", DefaultDir())
	}
	t.Setenv("OLLAMA_MODELS", "")
	if !strings.HasSuffix(DefaultDir(), filepath.Join(".ollama", "models")) {
		t.Errorf("DefaultDir = %q", DefaultDir())
	}
}
