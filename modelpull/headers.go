package modelpull

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
)

// headerSHA256 returns the SHA-256 a response announces for the whole file, from
// X-Checksum-Sha256 (hex or base64), Repr-Digest (RFC 9530: sha-256=:base64:) or
// Digest (RFC 3230: SHA-256=base64); nil when none is present and well-formed.
func headerSHA256(h http.Header) []byte {
	if v := strings.TrimSpace(h.Get("X-Checksum-Sha256")); v != "" {
		if b, err := hex.DecodeString(v); err == nil && len(b) == sha256.Size {
			return b
		}
		if b := decodeBase64(v); b != nil {
			return b
		}
	}
	for _, name := range []string{"Repr-Digest", "Digest"} {
		for _, field := range h.Values(name) {
			for item := range strings.SplitSeq(field, ",") {
				alg, val, ok := strings.Cut(strings.TrimSpace(item), "=")
				if !ok || !strings.EqualFold(alg, "sha-256") {
					continue
				}
				if b := decodeBase64(strings.Trim(val, ":")); b != nil {
					return b
				}
			}
		}
	}
	return nil
}

func decodeBase64(s string) []byte {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == sha256.Size {
			return b
		}
	}
	return nil
}

// parseContentRange parses "bytes START-END/SIZE" or "bytes */SIZE"; size is -1
// when the server gives "*". ok is false for anything else.
func parseContentRange(v string) (start, size int64, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, total, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	size = -1
	if total != "*" {
		n, err := strconv.ParseInt(total, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false
		}
		size = n
	}
	if rng == "*" {
		return 0, size, size >= 0
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start || (size >= 0 && end >= size) {
		return 0, 0, false
	}
	return start, size, true
}
