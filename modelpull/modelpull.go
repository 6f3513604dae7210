// Package modelpull downloads GGUF model files over HTTP(S): resumably, with
// checksum verification, validation of the result as GGUF, and an atomic rename
// into place so that a model path never names a half-written file.
//
// A download goes to DEST.partial, beside a small DEST.partial.json that records
// the URL and the server's validators (ETag, Last-Modified). A later Pull of the
// same URL resumes it with an HTTP Range request (guarded by If-Range); a server
// that ignores the range, or whose file changed, answers with the whole file and
// the download restarts from the beginning.
package modelpull

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/sled-project/sled/engine/gguf"
)

// Errors of Pull; match them with errors.Is. HTTP failures are *StatusError.
var (
	// ErrChecksum means the downloaded file's SHA-256 is not the expected one. The
	// partial download is removed.
	ErrChecksum = errors.New("modelpull: SHA-256 mismatch")
	// ErrNotGGUF means the downloaded content is not a valid GGUF file (an HTML
	// error page, a truncated file, ...). The partial download is removed.
	ErrNotGGUF = errors.New("modelpull: not a GGUF file")
)

// DefaultRetries is Options.Retries' default.
const DefaultRetries = 3

// StatusError is an HTTP response Pull could not use.
type StatusError struct {
	URL        string
	StatusCode int
	Status     string // such as "404 Not Found"
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("modelpull: GET %s: server answered %s", e.URL, e.Status)
}

// Options configures Pull. The zero value is valid.
type Options struct {
	// Out is the destination: a file path, or a directory (an existing one, or a
	// path ending in a separator) that receives the file under the URL's last path
	// element. Default: the current directory.
	Out string
	// SHA256 is the expected SHA-256 of the file, in hex. Empty: the server's
	// X-Checksum-Sha256, Repr-Digest or Digest (sha-256) header is used if there is
	// one; otherwise the sum is only computed and reported.
	SHA256 string
	// Overwrite allows replacing an existing destination file. Default: refuse.
	Overwrite bool
	// Progress receives a one-line progress display, redrawn in place with \r (for
	// a terminal). Default nil: no display.
	Progress io.Writer
	// Client makes the requests. Default http.DefaultClient.
	Client *http.Client
	// Retries is how many times a transfer cut short (connection reset, truncated
	// body) is resumed within one Pull. Default DefaultRetries; negative: none.
	Retries int
	// Logger receives debug lines about resumes and restarts. Default slog.Default().
	Logger *slog.Logger
}

// Result describes a finished download.
type Result struct {
	Path   string // the destination file
	Size   int64  // its size in bytes
	SHA256 string // its SHA-256, hex
	// Verified tells where the expected SHA-256 came from: "option", "header", or
	// "" when there was none to check against.
	Verified string
	// ResumedFrom is the number of bytes of an earlier partial download that were
	// kept; 0 when the file was downloaded from its start.
	ResumedFrom int64
}

// partialMeta is the sidecar of a partial download.
type partialMeta struct {
	URL          string `json:"url"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// Pull downloads rawURL to the destination opts describe and returns what it
// wrote. The file appears at its destination only when complete, checksum-verified
// (when a sum is known) and valid GGUF. When ctx ends, or the transfer fails after
// the retries, the partial download is kept so that a later Pull resumes it.
func Pull(ctx context.Context, rawURL string, opts Options) (*Result, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("modelpull: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("modelpull: %q: only http and https URLs are supported", rawURL)
	}
	var want []byte
	if opts.SHA256 != "" {
		if want, err = hex.DecodeString(opts.SHA256); err != nil || len(want) != sha256.Size {
			return nil, fmt.Errorf("modelpull: %q is not a SHA-256 in hex (64 hex digits)", opts.SHA256)
		}
	}
	dest, err := destination(opts.Out, u)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dest); err == nil && !opts.Overwrite {
		return nil, fmt.Errorf("modelpull: %s: %w", dest, fs.ErrExist)
	}
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	if opts.Retries == 0 {
		opts.Retries = DefaultRetries
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	d := &download{opts: opts, url: u.String(), dest: dest, partial: dest + ".partial", h: sha256.New(), want: want}
	if want != nil {
		d.source = "option"
	}
	return d.run(ctx)
}

// destination resolves Options.Out for u.
func destination(out string, u *url.URL) (string, error) {
	if out == "" {
		out = "."
	}
	isDir := strings.HasSuffix(out, "/") || strings.HasSuffix(out, string(filepath.Separator))
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		isDir = true
	}
	if !isDir {
		return out, nil
	}
	name := path.Base(u.Path)
	if name == "" || name == "." || name == "/" {
		return "", fmt.Errorf("modelpull: %s has no file name to save under; give a destination file", u)
	}
	return filepath.Join(out, name), nil
}

type download struct {
	opts          Options
	url           string
	dest, partial string

	h      hash.Hash
	hashed int64  // bytes of the partial file h has seen
	want   []byte // expected SHA-256; nil when unknown
	source string // where want came from

	resumedFrom int64
	prog        *progress
}

func (d *download) metaPath() string { return d.partial + ".json" }

func (d *download) run(ctx context.Context) (*Result, error) {
	if d.opts.Progress != nil {
		d.prog = newProgress(d.opts.Progress)
	}
	offset := d.existing()
	if offset > 0 {
		d.resumedFrom = offset
	}
	for attempt := 0; ; attempt++ {
		done, err := d.fetch(ctx, &offset)
		if err == nil && done {
			break
		}
		if err != nil {
			var se *StatusError
			retryable := ctx.Err() == nil && !errors.As(err, &se) && !errors.Is(err, ErrNotGGUF) && !errors.Is(err, fs.ErrPermission)
			if !retryable || attempt >= d.opts.Retries {
				d.prog.finish()
				return nil, err
			}
			d.opts.Logger.Debug("modelpull: transfer failed, resuming", "url", d.url, "offset", offset, "err", err)
		}
	}
	d.prog.finish()
	return d.finish()
}

// existing is the size of a partial download of the same URL, or 0 after clearing
// a stale one.
func (d *download) existing() int64 {
	st, err := os.Stat(d.partial)
	if err != nil || st.Size() == 0 {
		return 0
	}
	var m partialMeta
	if b, err := os.ReadFile(d.metaPath()); err != nil || json.Unmarshal(b, &m) != nil || m.URL != d.url {
		d.opts.Logger.Debug("modelpull: discarding a partial download of another URL", "path", d.partial)
		d.discard()
		return 0
	}
	return st.Size()
}

func (d *download) discard() {
	os.Remove(d.partial)
	os.Remove(d.metaPath())
}

// fetch makes one request from *offset on and appends the body to the partial
// file, advancing *offset. It reports done when the file is complete.
func (d *download) fetch(ctx context.Context, offset *int64) (done bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return false, fmt.Errorf("modelpull: %w", err)
	}
	if *offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", *offset))
		if b, err := os.ReadFile(d.metaPath()); err == nil {
			var m partialMeta
			if json.Unmarshal(b, &m) == nil {
				// If-Range takes a strong ETag or a date; the server sends the
				// whole file when the validator no longer matches.
				if m.ETag != "" && !strings.HasPrefix(m.ETag, "W/") {
					req.Header.Set("If-Range", m.ETag)
				} else if m.LastModified != "" {
					req.Header.Set("If-Range", m.LastModified)
				}
			}
		}
	}
	resp, err := d.opts.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("modelpull: GET %s: %w", d.url, err)
	}
	defer resp.Body.Close()

	var total int64 = -1
	switch resp.StatusCode {
	case http.StatusOK:
		if *offset > 0 {
			d.opts.Logger.Debug("modelpull: server sent the whole file; restarting", "url", d.url, "had", *offset)
			d.resumedFrom = 0
		}
		*offset = 0
		if resp.ContentLength >= 0 {
			total = resp.ContentLength
		}
		if err := d.writeMeta(resp); err != nil {
			return false, err
		}
	case http.StatusPartialContent:
		start, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != *offset {
			// Not the range asked for: start over with a plain request.
			err := fmt.Errorf("modelpull: GET %s: unexpected Content-Range %q for a request from %d", d.url, resp.Header.Get("Content-Range"), *offset)
			d.discard()
			*offset, d.resumedFrom = 0, 0
			return false, err
		}
		total = size
	case http.StatusRequestedRangeNotSatisfiable:
		if _, size, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && size == *offset {
			d.noteChecksum(resp.Header)
			return true, nil // the partial file is the whole file
		}
		err := fmt.Errorf("modelpull: GET %s: range from %d not satisfiable; restarting", d.url, *offset)
		d.discard()
		*offset, d.resumedFrom = 0, 0
		return false, err
	default:
		return false, &StatusError{URL: d.url, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	d.noteChecksum(resp.Header)

	body := bufio.NewReaderSize(resp.Body, 64<<10)
	if *offset < int64(len(gguf.Magic)) {
		// Refuse an error page or other non-GGUF content before saving any of it.
		want := gguf.Magic[*offset:]
		head, err := body.Peek(len(want))
		if err != nil && !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("modelpull: GET %s: reading the start of the file: %w", d.url, err)
		}
		if string(head) != want {
			d.discard()
			return false, fmt.Errorf("%w: %s does not start with the GGUF magic (content type %q)", ErrNotGGUF, d.url, resp.Header.Get("Content-Type"))
		}
	}

	f, err := os.OpenFile(d.partial, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return false, fmt.Errorf("modelpull: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(*offset); err != nil {
		return false, fmt.Errorf("modelpull: %w", err)
	}
	if _, err := f.Seek(*offset, io.SeekStart); err != nil {
		return false, fmt.Errorf("modelpull: %w", err)
	}
	if err := d.catchUpHash(*offset); err != nil {
		return false, err
	}
	d.prog.start(*offset, total)
	w := &countingWriter{w: io.MultiWriter(f, d.h), n: offset, hashed: &d.hashed, prog: d.prog}
	_, copyErr := io.Copy(w, body)
	if err := f.Sync(); err != nil && copyErr == nil {
		copyErr = err
	}
	if err := f.Close(); err != nil && copyErr == nil {
		copyErr = err
	}
	if copyErr != nil {
		d.hashed = -1 // the hash may not match the file any more: rehash on resume
		if ctxErr := ctx.Err(); ctxErr != nil {
			return false, fmt.Errorf("modelpull: download of %s interrupted at %d bytes (run again to resume): %w", d.url, *offset, ctxErr)
		}
		return false, fmt.Errorf("modelpull: GET %s: transfer cut at %d bytes: %w", d.url, *offset, copyErr)
	}
	if total >= 0 && *offset != total {
		return false, fmt.Errorf("modelpull: GET %s: got %d of %d bytes: %w", d.url, *offset, total, io.ErrUnexpectedEOF)
	}
	return true, nil
}

func errOrEOF(err error) error {
	if err == nil {
		return io.ErrUnexpectedEOF
	}
	return err
}

// catchUpHash makes h cover exactly the partial file's first offset bytes.
func (d *download) catchUpHash(offset int64) error {
	if d.hashed == offset {
		return nil
	}
	d.h.Reset()
	d.hashed = 0
	if offset == 0 {
		return nil
	}
	f, err := os.Open(d.partial)
	if err != nil {
		return fmt.Errorf("modelpull: %w", err)
	}
	defer f.Close()
	n, err := io.Copy(d.h, io.LimitReader(f, offset))
	d.hashed = n
	if err != nil || n != offset {
		return fmt.Errorf("modelpull: hashing the partial download: read %d of %d bytes: %w", n, offset, errOrEOF(err))
	}
	return nil
}

func (d *download) writeMeta(resp *http.Response) error {
	m := partialMeta{URL: d.url, ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(d.metaPath(), b, 0o644); err != nil {
		return fmt.Errorf("modelpull: %w", err)
	}
	return nil
}

// noteChecksum takes the expected sum from the response headers when none was
// given.
func (d *download) noteChecksum(h http.Header) {
	if d.want != nil {
		return
	}
	if sum := headerSHA256(h); sum != nil {
		d.want, d.source = sum, "header"
	}
}

// finish verifies the complete partial file and moves it into place.
func (d *download) finish() (*Result, error) {
	if err := d.catchUpHash(d.fileSize()); err != nil {
		return nil, err
	}
	sum := d.h.Sum(nil)
	res := &Result{Path: d.dest, Size: d.hashed, SHA256: hex.EncodeToString(sum), Verified: d.source, ResumedFrom: d.resumedFrom}
	if d.want != nil && !bytes.Equal(sum, d.want) {
		d.discard()
		return nil, fmt.Errorf("%w: %s has SHA-256 %s, expected %s (from the %s); the download was removed",
			ErrChecksum, d.url, res.SHA256, hex.EncodeToString(d.want), d.source)
	}
	f, err := gguf.Open(d.partial)
	if err != nil {
		d.discard()
		return nil, fmt.Errorf("%w: %s: %w; the download was removed", ErrNotGGUF, d.url, err)
	}
	f.Close()
	if err := os.Rename(d.partial, d.dest); err != nil {
		return nil, fmt.Errorf("modelpull: %w", err)
	}
	os.Remove(d.metaPath())
	if dir, err := os.Open(filepath.Dir(d.dest)); err == nil {
		dir.Sync() // make the rename durable; best effort
		dir.Close()
	}
	return res, nil
}

func (d *download) fileSize() int64 {
	st, err := os.Stat(d.partial)
	if err != nil {
		return 0
	}
	return st.Size()
}

// countingWriter advances *n and *hashed by what it writes and updates the
// progress display.
type countingWriter struct {
	w      io.Writer
	n      *int64
	hashed *int64
	prog   *progress
}

func (c *countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	*c.n += int64(k)
	*c.hashed += int64(k)
	c.prog.update(*c.n)
	return k, err
}
