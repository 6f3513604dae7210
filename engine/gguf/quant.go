package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
)

// This file converts rows of tensor data between float32 and the storage
// types this package can write (F32, F16, Q8_0, Q4_0) or read (those and BF16).

// f32ToF16 converts f to IEEE half precision, rounding to nearest even.
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff { // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 { // subnormal half, or zero
		if e < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - e)
		h := mant >> shift
		rem := mant & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // a carry into the exponent is correct, up to Inf
	}
	return sign | uint16(h)
}

// f16ToF32 converts an IEEE half to float32 exactly.
func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case 0:
		f := float32(mant) / (1 << 24)
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// Decodable reports whether Derive can read tensors of type t (and so convert
// them to another type).
func Decodable(t Type) bool { return decodable(t) }

// decodable reports whether decodeRow can read rows of t.
func decodable(t Type) bool {
	switch t {
	case TypeF32, TypeF16, TypeBF16, TypeQ8_0, TypeQ4_0:
		return true
	}
	return false
}

// encodable reports whether encodeRow can write rows of t.
func encodable(t Type) bool {
	switch t {
	case TypeF32, TypeF16, TypeQ8_0, TypeQ4_0:
		return true
	}
	return false
}

// rowBytes returns the size of a row of n elements of t; n must be a multiple
// of t's block size.
func rowBytes(t Type, n int) int {
	return n / int(t.BlockSize()) * int(t.BlockBytes())
}

// decodeRow decodes len(dst) elements of type t from src.
func decodeRow(t Type, src []byte, dst []float32) error {
	le := binary.LittleEndian
	switch t {
	case TypeF32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
		}
	case TypeF16:
		for i := range dst {
			dst[i] = f16ToF32(le.Uint16(src[2*i:]))
		}
	case TypeBF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(le.Uint16(src[2*i:])) << 16)
		}
	case TypeQ8_0:
		for b := 0; b < len(dst)/32; b++ {
			blk := src[34*b : 34*b+34]
			d := f16ToF32(le.Uint16(blk))
			for j := range 32 {
				dst[32*b+j] = d * float32(int8(blk[2+j]))
			}
		}
	case TypeQ4_0:
		for b := 0; b < len(dst)/32; b++ {
			blk := src[18*b : 18*b+18]
			d := f16ToF32(le.Uint16(blk))
			out := dst[32*b : 32*b+32]
			for j := range 16 {
				q := blk[2+j]
				out[j] = d * float32(int(q&0x0f)-8)
				out[j+16] = d * float32(int(q>>4)-8)
			}
		}
	default:
		return fmt.Errorf("gguf: cannot decode %s", t)
	}
	return nil
}

// encodeRow encodes src as type t into dst, which is rowBytes(t, len(src))
// long. For the block types len(src) must be a multiple of 32.
func encodeRow(t Type, src []float32, dst []byte) error {
	le := binary.LittleEndian
	switch t {
	case TypeF32:
		for i, x := range src {
			le.PutUint32(dst[4*i:], math.Float32bits(x))
		}
	case TypeF16:
		for i, x := range src {
			le.PutUint16(dst[2*i:], f32ToF16(x))
		}
	case TypeQ8_0:
		for b := 0; b < len(src)/32; b++ {
			quantQ8_0(src[32*b:32*b+32], dst[34*b:34*b+34])
		}
	case TypeQ4_0:
		for b := 0; b < len(src)/32; b++ {
			quantQ4_0(src[32*b:32*b+32], dst[18*b:18*b+18])
		}
	default:
		return fmt.Errorf("gguf: cannot encode %s", t)
	}
	return nil
}

// quantQ8_0 quantizes 32 values to one Q8_0 block: a half-precision scale d
// and 32 signed bytes q with x ≈ d*q, d = max|x|/127.
func quantQ8_0(x []float32, blk []byte) {
	var amax float32
	for _, v := range x {
		amax = max(amax, abs32(v))
	}
	d := amax / 127
	var inv float32
	if d != 0 {
		inv = 1 / d
	}
	binary.LittleEndian.PutUint16(blk, f32ToF16(d))
	for j, v := range x {
		blk[2+j] = byte(int8(math.Round(float64(v * inv))))
	}
}

// quantQ4_0 quantizes 32 values to one Q4_0 block: a half-precision scale d
// and 32 four-bit q with x ≈ (q-8)*d. The value of largest magnitude m maps
// to q = 0 exactly (d = m / -8); element j sits in the low nibble of byte j and
// element j+16 in its high nibble, as in ggml.
func quantQ4_0(x []float32, blk []byte) {
	var amax, m float32
	for _, v := range x {
		if a := abs32(v); a > amax {
			amax, m = a, v
		}
	}
	d := m / -8
	var inv float32
	if d != 0 {
		inv = 1 / d
	}
	binary.LittleEndian.PutUint16(blk, f32ToF16(d))
	q := func(v float32) byte {
		// v*inv lies in [-8, 8]; +8.5 and truncation round it to 0..16,
		// and 16 (only reachable by the largest magnitude's opposite) clamps.
		return byte(min(15, int(v*inv+8.5)))
	}
	for j := range 16 {
		blk[2+j] = q(x[j]) | q(x[j+16])<<4
	}
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }
