package events

import "encoding/hex"

// FNV-1a 64-bit parameters.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// PrefixHash is the hash of a committed token sequence that device and
// verifier compare to detect divergence: FNV-1a 64 over the tokens as
// little-endian int32, as 16 lowercase hex digits. It is not cryptographic;
// it detects accidental divergence, not forgery.
func PrefixHash(tokens []int32) string {
	var h PrefixHasher
	h.Reset()
	h.Write(tokens...)
	return h.Sum()
}

// PrefixHasher computes [PrefixHash] incrementally: Write the committed
// tokens of each round as they come, Sum at any point. The zero value is not
// ready; call Reset first (or use NewPrefixHasher). It is a small value type:
// copying it forks the hash. Not safe for concurrent use.
type PrefixHasher struct {
	h uint64
	n int
}

// NewPrefixHasher returns a hasher of the empty sequence.
func NewPrefixHasher() PrefixHasher { return PrefixHasher{h: fnvOffset64} }

// Reset returns the hasher to the empty sequence.
func (p *PrefixHasher) Reset() { p.h, p.n = fnvOffset64, 0 }

// Write appends tokens to the hashed sequence.
func (p *PrefixHasher) Write(tokens ...int32) {
	h := p.h
	for _, t := range tokens {
		u := uint32(t)
		h = (h ^ uint64(u&0xff)) * fnvPrime64
		h = (h ^ uint64((u>>8)&0xff)) * fnvPrime64
		h = (h ^ uint64((u>>16)&0xff)) * fnvPrime64
		h = (h ^ uint64(u>>24)) * fnvPrime64
	}
	p.h = h
	p.n += len(tokens)
}

// Len is the number of tokens written since Reset.
func (p *PrefixHasher) Len() int { return p.n }

// Sum returns the hash of the tokens written so far, as [PrefixHash] does.
func (p *PrefixHasher) Sum() string {
	var b [8]byte
	h := p.h
	for i := 7; i >= 0; i-- {
		b[i] = byte(h)
		h >>= 8
	}
	return hex.EncodeToString(b[:])
}
