package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"slices"
)

// Errors describing why a file was refused. Errors from Open and Read wrap
// exactly one of them (or an error from the operating system), with details.
var (
	// ErrNotGGUF reports that a file does not start with the GGUF magic.
	ErrNotGGUF = errors.New("not a GGUF file")
	// ErrUnsupportedVersion reports a GGUF version other than 2 or 3.
	ErrUnsupportedVersion = errors.New("unsupported GGUF version")
	// ErrTruncated reports that a file ends before its header says it does.
	ErrTruncated = errors.New("truncated GGUF file")
	// ErrCorrupt reports a header that is inconsistent or out of bounds.
	ErrCorrupt = errors.New("corrupt GGUF file")
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// DefaultAlignment is the alignment of tensor data when general.alignment is
// absent.
const DefaultAlignment = 32

// Limits that keep a hostile header from making the reader (or llama.cpp)
// allocate without bound.
const (
	maxDims        = 4        // GGML_MAX_DIMS
	maxNameLen     = 63       // GGML_MAX_NAME - 1
	maxKeyLen      = 65535    // the GGUF specification's limit on key length
	maxStringLen   = 64 << 20 // far above any real metadata string
	maxArrayDepth  = 4        // arrays of arrays of ...
	minKVBytes     = 8 + 4 + 1
	plausibleCount = 1 << 20 // tensors or metadata entries in a real model
	plausibleArray = 1 << 28 // elements in a real metadata array
	minTensorBytes = 8 + 4 + 8 + 4 + 8
)

// A TensorInfo describes one tensor of a GGUF file.
type TensorInfo struct {
	Name string `json:"name"`
	Type Type   `json:"type"`
	// Dims are the tensor's dimensions, innermost (row length) first, as
	// ggml's ne.
	Dims []uint64 `json:"dims"`
	// Offset is where the tensor's data starts, relative to the file's data
	// section.
	Offset uint64 `json:"offset"`
}

// Elements returns the number of elements of t.
func (t TensorInfo) Elements() uint64 {
	n := uint64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// Size returns the number of bytes of t's data.
func (t TensorInfo) Size() uint64 {
	if len(t.Dims) == 0 || t.Type.BlockSize() == 0 {
		return 0
	}
	return t.Elements() / t.Type.BlockSize() * t.Type.BlockBytes()
}

// A File is a parsed and validated GGUF file. Its metadata and tensor infos
// are held in memory; tensor data is read on demand.
type File struct {
	// Version is the GGUF version, 2 or 3.
	Version uint32
	// KV is the metadata in file order.
	KV []KV
	// Tensors are the tensor infos in file order.
	Tensors []TensorInfo
	// Alignment is the alignment of the data section and of each tensor.
	Alignment uint64
	// DataOffset is the file offset of the data section.
	DataOffset int64
	// Size is the size of the file in bytes.
	Size int64

	r       io.ReaderAt
	closer  io.Closer
	index   map[string]int
	tensors map[string]int
}

// Open opens and validates the GGUF file at path. The File must be closed.
// Errors wrap ErrNotGGUF, ErrUnsupportedVersion, ErrTruncated, ErrCorrupt or
// the operating system's error (such as fs.ErrNotExist).
func Open(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, fmt.Errorf("gguf: %w", err)
	}
	if !st.Mode().IsRegular() {
		fh.Close()
		return nil, fmt.Errorf("gguf: %s: %w: not a regular file", path, ErrNotGGUF)
	}
	f, err := read(fh, st.Size())
	if err != nil {
		fh.Close()
		return nil, fmt.Errorf("gguf: %s: %w", path, err)
	}
	f.closer = fh
	return f, nil
}

// Read parses and validates the GGUF file held by r, which is size bytes
// long. Tensor data is read from r later, on demand, so r must stay usable
// while the File is. Errors wrap ErrNotGGUF, ErrUnsupportedVersion,
// ErrTruncated, ErrCorrupt, or an error from r.
func Read(r io.ReaderAt, size int64) (*File, error) {
	f, err := read(r, size)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	return f, nil
}

// Close closes the underlying file if f came from Open; otherwise it does
// nothing.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	c := f.closer
	f.closer = nil
	return c.Close()
}

// Tensor returns the info of the tensor called name.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := f.tensors[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Tensors[i], true
}

// TensorReader returns a reader of the raw data of the tensor called name.
func (f *File) TensorReader(name string) (*io.SectionReader, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("gguf: no tensor %q", name)
	}
	return io.NewSectionReader(f.r, f.DataOffset+int64(t.Offset), int64(t.Size())), nil
}

// TensorData reads the raw data of the tensor called name, in its stored
// type and layout.
func (f *File) TensorData(name string) ([]byte, error) {
	sr, err := f.TensorReader(name)
	if err != nil {
		return nil, err
	}
	b := make([]byte, sr.Size())
	if _, err := io.ReadFull(sr, b); err != nil {
		return nil, fmt.Errorf("gguf: reading tensor %q: %w", name, err)
	}
	return b, nil
}

// decoder reads the little-endian header of a GGUF file, tracking its
// position so that every length can be checked against what is left.
type decoder struct {
	br   *bufio.Reader
	pos  int64
	size int64
	buf  [8]byte
}

func (d *decoder) left() int64 { return d.size - d.pos }

// need fails with ErrTruncated unless n more bytes are left.
func (d *decoder) need(n int64, what string) error {
	if n > d.left() {
		return fmt.Errorf("%w: %s at offset %d needs %d bytes, the file has %d left", ErrTruncated, what, d.pos, n, d.left())
	}
	return nil
}

func (d *decoder) fill(b []byte, what string) error {
	if err := d.need(int64(len(b)), what); err != nil {
		return err
	}
	n, err := io.ReadFull(d.br, b)
	d.pos += int64(n)
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: %s at offset %d: file shorter than its stated size", ErrTruncated, what, d.pos)
		}
		return fmt.Errorf("reading %s at offset %d: %w", what, d.pos, err)
	}
	return nil
}

func (d *decoder) u8(what string) (uint8, error) {
	err := d.fill(d.buf[:1], what)
	return d.buf[0], err
}

func (d *decoder) u16(what string) (uint16, error) {
	err := d.fill(d.buf[:2], what)
	return binary.LittleEndian.Uint16(d.buf[:]), err
}

func (d *decoder) u32(what string) (uint32, error) {
	err := d.fill(d.buf[:4], what)
	return binary.LittleEndian.Uint32(d.buf[:]), err
}

func (d *decoder) u64(what string) (uint64, error) {
	err := d.fill(d.buf[:8], what)
	return binary.LittleEndian.Uint64(d.buf[:]), err
}

func (d *decoder) str(what string, limit int64) (string, error) {
	n, err := d.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > uint64(limit) {
		return "", fmt.Errorf("%w: %s at offset %d is %d bytes long, over the %d-byte limit", ErrCorrupt, what, d.pos-8, n, limit)
	}
	if err := d.need(int64(n), what); err != nil {
		return "", err
	}
	b := make([]byte, n)
	if err := d.fill(b, what); err != nil {
		return "", err
	}
	return string(b), nil
}

// count reads an element count and checks that n elements of at least
// minSize bytes each fit in what is left of the file. A count that does not
// fit is reported as truncation if it is at most plausible, else as
// corruption.
func (d *decoder) count(what string, minSize int64, plausible uint64) (uint64, error) {
	n, err := d.u64(what)
	if err != nil {
		return 0, err
	}
	if n > uint64(d.left()/minSize) {
		if n <= plausible {
			return 0, fmt.Errorf("%w: %s %d at offset %d: that many need at least %d bytes, the file ends %d bytes later",
				ErrTruncated, what, n, d.pos-8, n*uint64(minSize), d.left())
		}
		return 0, fmt.Errorf("%w: %s %d at offset %d is impossible: %d elements need at least %d bytes each, the file has %d left",
			ErrCorrupt, what, n, d.pos-8, n, minSize, d.left())
	}
	return n, nil
}

func read(r io.ReaderAt, size int64) (*File, error) {
	if size < int64(len(Magic)) {
		return nil, fmt.Errorf("%w: the file is only %d bytes long", ErrNotGGUF, size)
	}
	d := &decoder{br: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 64<<10), size: size}
	var magic [4]byte
	if err := d.fill(magic[:], "magic"); err != nil {
		return nil, err
	}
	if string(magic[:]) != Magic {
		return nil, fmt.Errorf("%w: the file starts with %q, not %q", ErrNotGGUF, magic[:], Magic)
	}
	f := &File{r: r, Size: size, Alignment: DefaultAlignment, index: map[string]int{}, tensors: map[string]int{}}
	var err error
	if f.Version, err = d.u32("version"); err != nil {
		return nil, err
	}
	switch {
	case f.Version == 1:
		return nil, fmt.Errorf("%w: version 1 (32-bit counts) is obsolete and refused by llama.cpp; convert the file to version 3", ErrUnsupportedVersion)
	case f.Version > 0xffff && bits.ReverseBytes32(f.Version) <= 3:
		return nil, fmt.Errorf("%w: the file is big-endian (version %d byte-swapped); only little-endian files are supported", ErrUnsupportedVersion, bits.ReverseBytes32(f.Version))
	case f.Version != 2 && f.Version != 3:
		return nil, fmt.Errorf("%w: version %d; this reader knows versions 2 and 3", ErrUnsupportedVersion, f.Version)
	}
	nTensors, err := d.count("tensor count", minTensorBytes, plausibleCount)
	if err != nil {
		return nil, err
	}
	nKV, err := d.count("metadata count", minKVBytes, plausibleCount)
	if err != nil {
		return nil, err
	}
	if nTensors*minTensorBytes+nKV*minKVBytes > uint64(d.left()) {
		return nil, fmt.Errorf("%w: %d tensors and %d metadata entries cannot fit in a %d-byte file", ErrCorrupt, nTensors, nKV, size)
	}

	f.KV = make([]KV, 0, nKV)
	for i := uint64(0); i < nKV; i++ {
		kv, err := d.kv(i)
		if err != nil {
			return nil, err
		}
		if _, dup := f.index[kv.Key]; dup {
			return nil, fmt.Errorf("%w: metadata key %q appears twice", ErrCorrupt, kv.Key)
		}
		f.index[kv.Key] = len(f.KV)
		f.KV = append(f.KV, kv)
	}
	if v, ok := f.Value("general.alignment"); ok {
		a, isU32 := v.Data.(uint32)
		if !isU32 || a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("%w: general.alignment must be a uint32 power of two, got %s %v", ErrCorrupt, v.Type, v.Data)
		}
		f.Alignment = uint64(a)
	}

	f.Tensors = make([]TensorInfo, 0, nTensors)
	for i := uint64(0); i < nTensors; i++ {
		t, err := d.tensorInfo(i, f.Alignment)
		if err != nil {
			return nil, err
		}
		if _, dup := f.tensors[t.Name]; dup {
			return nil, fmt.Errorf("%w: tensor %q appears twice", ErrCorrupt, t.Name)
		}
		f.tensors[t.Name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, t)
	}
	f.DataOffset = int64(alignUp(uint64(d.pos), f.Alignment))
	if err := f.checkData(); err != nil {
		return nil, err
	}
	return f, nil
}

func (d *decoder) kv(i uint64) (KV, error) {
	key, err := d.str(fmt.Sprintf("metadata key #%d", i), maxKeyLen)
	if err != nil {
		return KV{}, err
	}
	if key == "" {
		return KV{}, fmt.Errorf("%w: metadata key #%d is empty", ErrCorrupt, i)
	}
	what := fmt.Sprintf("metadata %q", key)
	t, err := d.u32(what + " type")
	if err != nil {
		return KV{}, err
	}
	v, err := d.value(ValueType(t), what, 0)
	if err != nil {
		return KV{}, err
	}
	return KV{Key: key, Value: v}, nil
}

func (d *decoder) value(t ValueType, what string, depth int) (Value, error) {
	v := Value{Type: t}
	var err error
	switch t {
	case ValueUint8:
		v.Data, err = d.u8(what)
	case ValueInt8:
		var x uint8
		x, err = d.u8(what)
		v.Data = int8(x)
	case ValueUint16:
		v.Data, err = d.u16(what)
	case ValueInt16:
		var x uint16
		x, err = d.u16(what)
		v.Data = int16(x)
	case ValueUint32:
		v.Data, err = d.u32(what)
	case ValueInt32:
		var x uint32
		x, err = d.u32(what)
		v.Data = int32(x)
	case ValueFloat32:
		var x uint32
		x, err = d.u32(what)
		v.Data = math.Float32frombits(x)
	case ValueBool:
		var x uint8
		if x, err = d.u8(what); err == nil && x > 1 {
			err = fmt.Errorf("%w: %s: bool byte is %d", ErrCorrupt, what, x)
		}
		v.Data = x == 1
	case ValueString:
		v.Data, err = d.str(what, maxStringLen)
	case ValueUint64:
		v.Data, err = d.u64(what)
	case ValueInt64:
		var x uint64
		x, err = d.u64(what)
		v.Data = int64(x)
	case ValueFloat64:
		var x uint64
		x, err = d.u64(what)
		v.Data = math.Float64frombits(x)
	case ValueArray:
		return d.array(what, depth)
	default:
		return v, fmt.Errorf("%w: %s has unknown value type %d", ErrCorrupt, what, uint32(t))
	}
	return v, err
}

func (d *decoder) array(what string, depth int) (Value, error) {
	if depth >= maxArrayDepth {
		return Value{}, fmt.Errorf("%w: %s: arrays nested deeper than %d", ErrCorrupt, what, maxArrayDepth)
	}
	et, err := d.u32(what + " element type")
	if err != nil {
		return Value{}, err
	}
	elem := ValueType(et)
	if !elem.known() {
		return Value{}, fmt.Errorf("%w: %s is an array of unknown value type %d", ErrCorrupt, what, et)
	}
	n, err := d.count(what+" array length", elem.size(), plausibleArray)
	if err != nil {
		return Value{}, err
	}
	v := Value{Type: ValueArray, Elem: elem}
	// Grow slices as elements arrive rather than trusting n, so that memory
	// stays proportional to the bytes actually read.
	c := int(min(n, 1<<12))
	switch elem {
	case ValueString:
		s := make([]string, 0, c)
		for i := uint64(0); i < n; i++ {
			x, err := d.str(what, maxStringLen)
			if err != nil {
				return v, err
			}
			s = append(s, x)
		}
		v.Data = s
	case ValueArray:
		s := make([]Value, 0, c)
		for i := uint64(0); i < n; i++ {
			x, err := d.array(what, depth+1)
			if err != nil {
				return v, err
			}
			s = append(s, x)
		}
		v.Data = s
	case ValueUint8:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u8, func(x uint8) uint8 { return x })
	case ValueInt8:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u8, func(x uint8) int8 { return int8(x) })
	case ValueBool:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u8, func(x uint8) bool { return x != 0 })
	case ValueUint16:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u16, func(x uint16) uint16 { return x })
	case ValueInt16:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u16, func(x uint16) int16 { return int16(x) })
	case ValueUint32:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u32, func(x uint32) uint32 { return x })
	case ValueInt32:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u32, func(x uint32) int32 { return int32(x) })
	case ValueFloat32:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u32, math.Float32frombits)
	case ValueUint64:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u64, func(x uint64) uint64 { return x })
	case ValueInt64:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u64, func(x uint64) int64 { return int64(x) })
	case ValueFloat64:
		v.Data, err = readScalars(d, n, c, what, (*decoder).u64, math.Float64frombits)
	}
	return v, err
}

func readScalars[R, T any](d *decoder, n uint64, c int, what string, get func(*decoder, string) (R, error), conv func(R) T) ([]T, error) {
	s := make([]T, 0, c)
	for i := uint64(0); i < n; i++ {
		x, err := get(d, what)
		if err != nil {
			return nil, err
		}
		s = append(s, conv(x))
	}
	return s, nil
}

func (d *decoder) tensorInfo(i uint64, alignment uint64) (TensorInfo, error) {
	name, err := d.str(fmt.Sprintf("tensor #%d name", i), maxStringLen)
	if err != nil {
		return TensorInfo{}, err
	}
	if name == "" {
		return TensorInfo{}, fmt.Errorf("%w: tensor #%d has an empty name", ErrCorrupt, i)
	}
	if len(name) > maxNameLen {
		return TensorInfo{}, fmt.Errorf("%w: tensor #%d name is %d bytes, over ggml's limit of %d", ErrCorrupt, i, len(name), maxNameLen)
	}
	what := fmt.Sprintf("tensor %s", name)
	nd, err := d.u32(what + " dimension count")
	if err != nil {
		return TensorInfo{}, err
	}
	if nd == 0 || nd > maxDims {
		return TensorInfo{}, fmt.Errorf("%w: %s has %d dimensions; ggml allows 1 to %d", ErrCorrupt, what, nd, maxDims)
	}
	t := TensorInfo{Name: name, Dims: make([]uint64, nd)}
	elems := uint64(1)
	for j := range t.Dims {
		if t.Dims[j], err = d.u64(what + " dimension"); err != nil {
			return t, err
		}
		if t.Dims[j] == 0 {
			return t, fmt.Errorf("%w: %s dimension %d is zero", ErrCorrupt, what, j)
		}
		hi, lo := bits.Mul64(elems, t.Dims[j])
		if hi != 0 || lo > math.MaxInt64 {
			return t, fmt.Errorf("%w: %s dimensions %v overflow", ErrCorrupt, what, t.Dims[:j+1])
		}
		elems = lo
	}
	ty, err := d.u32(what + " type")
	if err != nil {
		return t, err
	}
	t.Type = Type(ty)
	if !t.Type.Known() {
		return t, fmt.Errorf("%w: %s has unknown ggml type %d", ErrCorrupt, what, ty)
	}
	if t.Dims[0]%t.Type.BlockSize() != 0 {
		return t, fmt.Errorf("%w: %s: row length %d is not a multiple of the %s block size %d", ErrCorrupt, what, t.Dims[0], t.Type, t.Type.BlockSize())
	}
	if t.Offset, err = d.u64(what + " offset"); err != nil {
		return t, err
	}
	if t.Offset%alignment != 0 {
		return t, fmt.Errorf("%w: %s: data offset %d is not a multiple of the alignment %d", ErrCorrupt, what, t.Offset, alignment)
	}
	return t, nil
}

// checkData checks that every tensor's data lies inside the file and that no
// two tensors overlap.
func (f *File) checkData() error {
	if len(f.Tensors) > 0 && f.DataOffset > f.Size {
		return fmt.Errorf("%w: the data section would start at %d, beyond the end of the %d-byte file", ErrTruncated, f.DataOffset, f.Size)
	}
	type span struct {
		start, end uint64
		name       string
	}
	spans := make([]span, 0, len(f.Tensors))
	limit := uint64(f.Size - min(f.DataOffset, f.Size))
	var bad error
	for _, t := range f.Tensors {
		n := t.Size()
		end, carry := bits.Add64(t.Offset, n, 0)
		if carry == 0 && end <= limit {
			spans = append(spans, span{t.Offset, end, t.Name})
			continue
		}
		if t.Offset >= limit {
			// Starts beyond the end: an absurd offset, unless an earlier
			// tensor already shows the file was cut short.
			start := satAdd(uint64(f.DataOffset), t.Offset)
			switch {
			case bad != nil:
			case start == math.MaxUint64 || satAdd(start, n) == math.MaxUint64:
				bad = fmt.Errorf("%w: tensor %s: data offset %d beyond file size %d", ErrCorrupt, t.Name, t.Offset, f.Size)
			default:
				bad = fmt.Errorf("%w: tensor %s: data [%d,%d) beyond file size %d", ErrCorrupt, t.Name, start, start+n, f.Size)
			}
			continue
		}
		// Starts inside the file but runs past its end: the file was cut short.
		start := uint64(f.DataOffset) + t.Offset
		return fmt.Errorf("%w: tensor %s: data [%d,%d) beyond file size %d", ErrTruncated, t.Name, start, start+n, f.Size)
	}
	if bad != nil {
		return bad
	}
	slices.SortFunc(spans, func(a, b span) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			a, b := spans[i-1], spans[i]
			return fmt.Errorf("%w: tensors %s [%d,%d) and %s [%d,%d) overlap", ErrCorrupt, a.name, a.start, a.end, b.name, b.start, b.end)
		}
	}
	return nil
}

// satAdd returns a+b, or the largest uint64 if that overflows.
func satAdd(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	if c != 0 {
		return math.MaxUint64
	}
	return s
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }
