package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
)

// A WriteTensor is one tensor given to Write: its shape, and a function that
// produces its data.
type WriteTensor struct {
	Name string
	Type Type
	// Dims are the dimensions, innermost first, as in TensorInfo.
	Dims []uint64
	// Data writes the tensor's data to w: exactly Size() bytes, in Type's
	// layout. Write calls it once, in tensor order, so data can be produced
	// as it is written rather than held in memory.
	Data func(w io.Writer) error
}

// Size returns the number of bytes of t's data.
func (t WriteTensor) Size() uint64 { return t.info().Size() }

func (t WriteTensor) info() TensorInfo { return TensorInfo{Name: t.Name, Type: t.Type, Dims: t.Dims} }

// Write writes a GGUF version 3 file holding kv and tensors to w, streaming
// each tensor's data from its Data function. Tensors are aligned to
// general.alignment if kv sets it (it must then be a uint32 power of two),
// else to DefaultAlignment. Write checks what it is given as Read checks what
// it reads: duplicate keys or names, ill-typed values, bad shapes and data of
// the wrong length are errors.
func Write(w io.Writer, kv []KV, tensors []WriteTensor) error {
	align := uint64(DefaultAlignment)
	keys := make(map[string]bool, len(kv))
	for _, e := range kv {
		if e.Key == "" || len(e.Key) > maxKeyLen {
			return fmt.Errorf("gguf: write: bad metadata key %q", e.Key)
		}
		if keys[e.Key] {
			return fmt.Errorf("gguf: write: metadata key %q given twice", e.Key)
		}
		keys[e.Key] = true
		if err := e.Value.check(); err != nil {
			return fmt.Errorf("gguf: write: metadata %q: %w", e.Key, err)
		}
		if e.Key == "general.alignment" {
			a, ok := e.Value.Data.(uint32)
			if !ok || a == 0 || a&(a-1) != 0 {
				return fmt.Errorf("gguf: write: general.alignment must be a uint32 power of two")
			}
			align = uint64(a)
		}
	}
	names := make(map[string]bool, len(tensors))
	infos := make([]TensorInfo, len(tensors))
	var off uint64
	for i, t := range tensors {
		if t.Name == "" || len(t.Name) > maxNameLen {
			return fmt.Errorf("gguf: write: bad tensor name %q", t.Name)
		}
		if names[t.Name] {
			return fmt.Errorf("gguf: write: tensor %q given twice", t.Name)
		}
		names[t.Name] = true
		if err := checkShape(t.Name, t.Type, t.Dims); err != nil {
			return fmt.Errorf("gguf: write: %w", err)
		}
		if t.Data == nil {
			return fmt.Errorf("gguf: write: tensor %q has no data", t.Name)
		}
		infos[i] = TensorInfo{Name: t.Name, Type: t.Type, Dims: t.Dims, Offset: off}
		off = alignUp(off+t.Size(), align)
	}

	bw := bufio.NewWriterSize(w, 1<<20)
	e := &encoder{w: bw}
	e.header(3, kv, infos)
	e.pad(align)
	if e.err != nil {
		return fmt.Errorf("gguf: write: %w", e.err)
	}
	for _, t := range tensors {
		cw := &limitWriter{w: bw, left: t.Size()}
		if err := t.Data(cw); err != nil {
			return fmt.Errorf("gguf: write: tensor %q: %w", t.Name, err)
		}
		if cw.err != nil {
			return fmt.Errorf("gguf: write: tensor %q: %w", t.Name, cw.err)
		}
		if cw.left != 0 {
			return fmt.Errorf("gguf: write: tensor %q: data is %d bytes short of %d", t.Name, cw.left, t.Size())
		}
		e.n += int64(t.Size())
		e.pad(align)
		if e.err != nil {
			return fmt.Errorf("gguf: write: %w", e.err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("gguf: write: %w", err)
	}
	return nil
}

// checkShape checks dims and type as the reader does.
func checkShape(name string, t Type, dims []uint64) error {
	if !t.Known() {
		return fmt.Errorf("tensor %q: unknown type %d", name, uint32(t))
	}
	if len(dims) == 0 || len(dims) > maxDims {
		return fmt.Errorf("tensor %q: %d dimensions; ggml allows 1 to %d", name, len(dims), maxDims)
	}
	n := uint64(1)
	for _, d := range dims {
		if d == 0 || n > math.MaxInt64/d {
			return fmt.Errorf("tensor %q: bad dimensions %v", name, dims)
		}
		n *= d
	}
	if dims[0]%t.BlockSize() != 0 {
		return fmt.Errorf("tensor %q: row length %d is not a multiple of the %s block size %d", name, dims[0], t, t.BlockSize())
	}
	return nil
}

var errTooLong = errors.New("data longer than the tensor")

// limitWriter passes at most left bytes to w.
type limitWriter struct {
	w    io.Writer
	left uint64
	err  error
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if uint64(len(p)) > l.left {
		l.err = errTooLong
		return 0, l.err
	}
	n, err := l.w.Write(p)
	l.left -= uint64(n)
	if err != nil {
		l.err = err
	}
	return n, err
}

// encoder writes the little-endian GGUF encoding, remembering the first
// error and the number of bytes written.
type encoder struct {
	w   io.Writer
	n   int64
	err error
	buf [8]byte
}

// header encodes a GGUF header: magic, version, counts, metadata and tensor
// infos, without the padding that follows. It encodes what it is given, valid or
// not (tests build corrupt files with it).
func (e *encoder) header(version uint32, kv []KV, tensors []TensorInfo) {
	e.raw([]byte(Magic))
	e.u32(version)
	e.u64(uint64(len(tensors)))
	e.u64(uint64(len(kv)))
	for _, kv := range kv {
		e.str(kv.Key)
		e.u32(uint32(kv.Value.Type))
		e.value(kv.Value)
	}
	for _, t := range tensors {
		e.str(t.Name)
		e.u32(uint32(len(t.Dims)))
		for _, d := range t.Dims {
			e.u64(d)
		}
		e.u32(uint32(t.Type))
		e.u64(t.Offset)
	}
}

func (e *encoder) raw(b []byte) {
	if e.err != nil {
		return
	}
	n, err := e.w.Write(b)
	e.n += int64(n)
	e.err = err
}

func (e *encoder) u8(x uint8) { e.buf[0] = x; e.raw(e.buf[:1]) }
func (e *encoder) u16(x uint16) {
	binary.LittleEndian.PutUint16(e.buf[:], x)
	e.raw(e.buf[:2])
}
func (e *encoder) u32(x uint32) {
	binary.LittleEndian.PutUint32(e.buf[:], x)
	e.raw(e.buf[:4])
}
func (e *encoder) u64(x uint64) {
	binary.LittleEndian.PutUint64(e.buf[:], x)
	e.raw(e.buf[:8])
}
func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	if e.err == nil {
		n, err := io.WriteString(e.w, s)
		e.n += int64(n)
		e.err = err
	}
}

func (e *encoder) pad(align uint64) {
	var zero [64]byte
	for n := alignUp(uint64(e.n), align) - uint64(e.n); n > 0; {
		k := min(n, uint64(len(zero)))
		e.raw(zero[:k])
		n -= k
	}
}

// value writes v without its type tag; v must have passed check.
func (e *encoder) value(v Value) {
	switch x := v.Data.(type) {
	case uint8:
		e.u8(x)
	case int8:
		e.u8(uint8(x))
	case bool:
		e.u8(b2u8(x))
	case uint16:
		e.u16(x)
	case int16:
		e.u16(uint16(x))
	case uint32:
		e.u32(x)
	case int32:
		e.u32(uint32(x))
	case float32:
		e.u32(math.Float32bits(x))
	case uint64:
		e.u64(x)
	case int64:
		e.u64(uint64(x))
	case float64:
		e.u64(math.Float64bits(x))
	case string:
		e.str(x)
	case []uint8:
		e.arrayHead(v)
		e.raw(x)
	case []int8:
		e.arrayHead(v)
		eachArray(e, x, func(y int8) { e.u8(uint8(y)) })
	case []bool:
		e.arrayHead(v)
		eachArray(e, x, func(y bool) { e.u8(b2u8(y)) })
	case []uint16:
		e.arrayHead(v)
		eachArray(e, x, e.u16)
	case []int16:
		e.arrayHead(v)
		eachArray(e, x, func(y int16) { e.u16(uint16(y)) })
	case []uint32:
		e.arrayHead(v)
		eachArray(e, x, e.u32)
	case []int32:
		e.arrayHead(v)
		eachArray(e, x, func(y int32) { e.u32(uint32(y)) })
	case []float32:
		e.arrayHead(v)
		eachArray(e, x, func(y float32) { e.u32(math.Float32bits(y)) })
	case []uint64:
		e.arrayHead(v)
		eachArray(e, x, e.u64)
	case []int64:
		e.arrayHead(v)
		eachArray(e, x, func(y int64) { e.u64(uint64(y)) })
	case []float64:
		e.arrayHead(v)
		eachArray(e, x, func(y float64) { e.u64(math.Float64bits(y)) })
	case []string:
		e.arrayHead(v)
		eachArray(e, x, e.str)
	case []Value:
		e.arrayHead(v)
		for _, y := range x {
			e.value(y)
		}
	}
}

func (e *encoder) arrayHead(v Value) {
	e.u32(uint32(v.Elem))
	e.u64(uint64(v.Len()))
}

func eachArray[T any](e *encoder, s []T, put func(T)) {
	for _, x := range s {
		if e.err != nil {
			return
		}
		put(x)
	}
}

func b2u8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// writeFile writes a file at path through fn, atomically: the data goes to a
// temporary file in the same directory, renamed to path only once fn and
// every write have succeeded.
func writeFile(path string, fn func(w io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fn(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	return nil
}
