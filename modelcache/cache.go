package modelcache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// EnvDir names the environment variable that overrides the cache directory.
const EnvDir = "SLED_MODEL_CACHE"

// DefaultDir is the cache directory: $SLED_MODEL_CACHE, else sled/models under
// os.UserCacheDir (on Linux $XDG_CACHE_HOME or ~/.cache), else under the temporary
// directory when the system has no user cache directory.
func DefaultDir() string {
	if d := os.Getenv(EnvDir); d != "" {
		return d
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "sled", "models")
}

// Cache is a model cache directory. Its methods are safe for concurrent use, also
// by several processes sharing the directory: fetches of one model are serialised
// by a lock file beside it.
type Cache struct {
	dir string
}

// Open returns the cache in dir; "" means DefaultDir(). The directory is created
// when a model is first fetched.
func Open(dir string) *Cache {
	if dir == "" {
		dir = DefaultDir()
	}
	return &Cache{dir: dir}
}

// Dir is the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// Path is where m's file lives in the cache (whether or not it is there yet).
func (c *Cache) Path(m Model) string { return filepath.Join(c.dir, m.File()) }

// stampPath is the sidecar recording a successful verification of path: the
// digest, size and modification time, so that a later check of an unchanged file
// needs no rehashing.
func stampPath(path string) string { return path + ".sha256" }

// Verified reports whether m's file is in the cache, complete and with the
// published SHA-256. A file whose stamp is missing or stale is hashed once (and
// stamped when it is right); a wrong file reports false with ErrChecksum.
func (c *Cache) Verified(m Model) (bool, error) {
	path := c.Path(m)
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("modelcache: %w", err)
	}
	if st.Size() != m.Size {
		return false, fmt.Errorf("modelcache: %s: %w: %d bytes, want %d", path, ErrChecksum, st.Size(), m.Size)
	}
	if stampMatches(path, st, m.SHA256) {
		return true, nil
	}
	sum, err := hashFile(path)
	if err != nil {
		return false, fmt.Errorf("modelcache: %w", err)
	}
	if sum != m.SHA256 {
		return false, fmt.Errorf("modelcache: %s: %w: sha256 %s, want %s", path, ErrChecksum, sum, m.SHA256)
	}
	return true, writeStamp(path, sum)
}

func stampMatches(path string, st os.FileInfo, sum string) bool {
	b, err := os.ReadFile(stampPath(path))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return len(f) == 3 && f[0] == sum && f[1] == strconv.FormatInt(st.Size(), 10) &&
		f[2] == strconv.FormatInt(st.ModTime().UnixNano(), 10)
}

func writeStamp(path, sum string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("modelcache: %w", err)
	}
	line := fmt.Sprintf("%s %d %d\n", sum, st.Size(), st.ModTime().UnixNano())
	if err := os.WriteFile(stampPath(path), []byte(line), 0o644); err != nil {
		return fmt.Errorf("modelcache: %w", err)
	}
	return nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Entry is one file of a listing.
type Entry struct {
	Path string
	Size int64
	// Model is the catalogue entry the file is, if any, and Verified whether the
	// file matches its published digest (checked by size and stamp only: List never
	// hashes).
	Model    *Model
	Verified bool
}

// List returns the GGUF files in dirs (the cache directory and, say, a model
// directory), in the order of dirs and by name within each. Missing directories are
// skipped. Catalogue models are recognised by file name.
func List(dirs ...string) ([]Entry, error) {
	var out []Entry
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("modelcache: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() || !strings.HasSuffix(e.Name(), ".gguf") {
				continue
			}
			st, err := e.Info()
			if err != nil {
				continue
			}
			en := Entry{Path: filepath.Join(dir, e.Name()), Size: st.Size()}
			if m, ok := Lookup(e.Name()); ok && m.File() == e.Name() {
				en.Model = &m
				en.Verified = st.Size() == m.Size && stampMatches(en.Path, st, m.SHA256)
			}
			out = append(out, en)
		}
	}
	return out, nil
}

// lock takes an exclusive lock on path (created if needed), waiting until ctx ends.
// The returned function releases it.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for another fetch holding %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
