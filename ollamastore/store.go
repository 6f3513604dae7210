// Package ollamastore finds models in an Ollama model store, so that SLED can
// serve a model a user already pulled with `ollama pull` by its Ollama name
// (qwen2.5-coder:1.5b), reading the GGUF blob where it lies, never copying it.
//
// The store layout (Ollama's, on disk under $OLLAMA_MODELS, default
// ~/.ollama/models):
//
//	manifests/<host>/<namespace>/<model>/<tag>   an OCI image manifest (JSON)
//	blobs/sha256-<hex>                           content-addressed layers
//
// A name is [host/][namespace/]model[:tag], with the defaults
// registry.ollama.ai, library and latest. The manifest's layer of media type
// application/vnd.ollama.image.model is the GGUF file.
package ollamastore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Defaults of a model name's parts, as Ollama fills them.
const (
	DefaultHost      = "registry.ollama.ai"
	DefaultNamespace = "library"
	DefaultTag       = "latest"
)

// ModelMediaType is the media type of a manifest's GGUF layer.
const ModelMediaType = "application/vnd.ollama.image.model"

// Errors, wrapped with the name and path they concern.
var (
	// ErrNotFound: the store has no manifest for the name.
	ErrNotFound = errors.New("ollamastore: model not in the store")
	// ErrBadName: the name is not an Ollama model name.
	ErrBadName = errors.New("ollamastore: not an Ollama model name")
	// ErrCorrupt: the manifest is unreadable, has no model layer, or its blob is
	// missing or of the wrong size.
	ErrCorrupt = errors.New("ollamastore: corrupt store entry")
)

// DefaultDir is the store Ollama uses: $OLLAMA_MODELS, else ~/.ollama/models.
func DefaultDir() string {
	if d := os.Getenv("OLLAMA_MODELS"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".ollama", "models")
	}
	return filepath.Join(home, ".ollama", "models")
}

// Name is a parsed model name.
type Name struct {
	Host, Namespace, Model, Tag string
}

// part is what Ollama allows in each part of a name.
var part = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)

// ParseName parses [host/][namespace/]model[:tag], filling the defaults. It
// returns an error wrapping ErrBadName for anything else (a path, say: the parts
// may not be "." or "..", so a name never leaves the store).
func ParseName(s string) (Name, error) {
	n := Name{Host: DefaultHost, Namespace: DefaultNamespace, Tag: DefaultTag}
	rest := s
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i:], "/") {
		rest, n.Tag = rest[:i], rest[i+1:]
	}
	parts := strings.Split(rest, "/")
	switch len(parts) {
	case 1:
		n.Model = parts[0]
	case 2:
		n.Namespace, n.Model = parts[0], parts[1]
	case 3:
		n.Host, n.Namespace, n.Model = parts[0], parts[1], parts[2]
	default:
		return Name{}, fmt.Errorf("%w: %q", ErrBadName, s)
	}
	for _, p := range []string{n.Host, n.Namespace, n.Model, n.Tag} {
		if !part.MatchString(p) || strings.Trim(p, ".") == "" {
			return Name{}, fmt.Errorf("%w: %q", ErrBadName, s)
		}
	}
	return n, nil
}

// String is the name as Ollama shows it: host and namespace only when not the
// defaults.
func (n Name) String() string {
	s := n.Model + ":" + n.Tag
	switch {
	case n.Host != DefaultHost:
		return n.Host + "/" + n.Namespace + "/" + s
	case n.Namespace != DefaultNamespace:
		return n.Namespace + "/" + s
	}
	return s
}

// Model is a model found in the store.
type Model struct {
	// Name is the model's Ollama name, as Name.String spells it.
	Name string
	// Path is the GGUF blob, in the store.
	Path string
	// Digest is the blob's "sha256:<hex>", as Ollama's API reports it.
	Digest string
	// Size is the blob's size in bytes.
	Size int64
}

type manifest struct {
	SchemaVersion int `json:"schemaVersion"`
	Layers        []struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	} `json:"layers"`
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Find looks name up in the store at dir (DefaultDir when empty). Errors wrap
// ErrBadName, ErrNotFound or ErrCorrupt. The blob's size is checked against the
// manifest; its hash is not (hashing gigabytes on every start would cost more
// than it guards: Ollama checked it when it pulled the blob).
func Find(dir, name string) (Model, error) {
	if dir == "" {
		dir = DefaultDir()
	}
	n, err := ParseName(name)
	if err != nil {
		return Model{}, err
	}
	mpath := filepath.Join(dir, "manifests", n.Host, n.Namespace, n.Model, n.Tag)
	b, err := os.ReadFile(mpath)
	if errors.Is(err, fs.ErrNotExist) {
		return Model{}, fmt.Errorf("%w: %s (no manifest %s; `ollama pull %s` puts it there)", ErrNotFound, n, mpath, n)
	}
	if err != nil {
		return Model{}, fmt.Errorf("%w: %s: %v", ErrCorrupt, n, err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Model{}, fmt.Errorf("%w: manifest %s: %v", ErrCorrupt, mpath, err)
	}
	for _, l := range m.Layers {
		if l.MediaType != ModelMediaType {
			continue
		}
		if !digestRE.MatchString(l.Digest) {
			return Model{}, fmt.Errorf("%w: manifest %s: model layer digest %q", ErrCorrupt, mpath, l.Digest)
		}
		blob := filepath.Join(dir, "blobs", strings.Replace(l.Digest, ":", "-", 1))
		st, err := os.Stat(blob)
		if err != nil {
			return Model{}, fmt.Errorf("%w: %s: model blob: %v", ErrCorrupt, n, err)
		}
		if st.Size() != l.Size {
			return Model{}, fmt.Errorf("%w: %s: blob %s is %d bytes, the manifest says %d", ErrCorrupt, n, blob, st.Size(), l.Size)
		}
		return Model{Name: n.String(), Path: blob, Digest: l.Digest, Size: l.Size}, nil
	}
	return Model{}, fmt.Errorf("%w: manifest %s has no %s layer", ErrCorrupt, mpath, ModelMediaType)
}

// Put writes the GGUF file at src into the store at dir under name, in Ollama's
// layout: the blob (hard-linked when src is on the same file system, else
// copied), and a manifest with a config and the model layer. It is what tests
// and tools use to build a store; serving never writes to one.
func Put(dir, name, src string) (Model, error) {
	n, err := ParseName(name)
	if err != nil {
		return Model{}, err
	}
	digest, size, err := fileDigest(src)
	if err != nil {
		return Model{}, err
	}
	blobs := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return Model{}, err
	}
	blob := filepath.Join(blobs, strings.Replace(digest, ":", "-", 1))
	if _, err := os.Stat(blob); errors.Is(err, fs.ErrNotExist) {
		if err := os.Link(src, blob); err != nil {
			if err := copyFile(src, blob); err != nil {
				return Model{}, err
			}
		}
	}
	config := []byte(`{"model_format":"gguf","model_family":"","file_type":""}`)
	cdigest := sha256Hex(config)
	if err := os.WriteFile(filepath.Join(blobs, "sha256-"+cdigest), config, 0o644); err != nil {
		return Model{}, err
	}
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.docker.distribution.manifest.v2+json",
		"config":        map[string]any{"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + cdigest, "size": len(config)},
		"layers":        []map[string]any{{"mediaType": ModelMediaType, "digest": digest, "size": size}},
	}
	b, _ := json.Marshal(m)
	mdir := filepath.Join(dir, "manifests", n.Host, n.Namespace, n.Model)
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		return Model{}, err
	}
	if err := os.WriteFile(filepath.Join(mdir, n.Tag), b, 0o644); err != nil {
		return Model{}, err
	}
	return Model{Name: n.String(), Path: blob, Digest: digest, Size: size}, nil
}
