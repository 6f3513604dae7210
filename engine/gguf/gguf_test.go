package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"github.com/sled-project/sled/internal/testmodels"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// modelPath returns the path of a shared test model (see internal/testmodels).
func modelPath(t testing.TB, name string) string { return testmodels.Path(t, name) }

func open(t testing.TB, path string) *File {
	t.Helper()
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestModelFacts(t *testing.T) {
	var fp string
	for _, tc := range []struct {
		file   string
		layers uint64
	}{
		{"stories260k.gguf", 5},
		{"stories260k-draft-4L.gguf", 4},
		{"stories260k-draft-3L.gguf", 3},
	} {
		f := open(t, modelPath(t, tc.file))
		in := f.Info()
		if in.Architecture != "llama" || in.Layers != tc.layers || in.EmbeddingSize != 64 ||
			in.ContextLength != 512 || in.VocabSize != 512 || in.BOS != 1 || in.EOS != 2 ||
			in.Quantization != "F32" || in.Tokenizer != "llama" || in.Version != 3 {
			t.Errorf("%s: unexpected facts %+v", tc.file, in)
		}
		// 512x64 embedding and output, a norm, and per block 4 attention
		// matrices, 3 FFN matrices and 2 norms.
		perBlock := uint64(64*64*2 + 64*32*2 + 3*64*172 + 2*64)
		if want := 2*512*64 + 64 + tc.layers*perBlock; in.Parameters != want {
			t.Errorf("%s: %d parameters, want %d", tc.file, in.Parameters, want)
		}
		if len(in.VocabFingerprint) != 64 {
			t.Errorf("%s: fingerprint %q", tc.file, in.VocabFingerprint)
		}
		if fp == "" {
			fp = in.VocabFingerprint
		} else if in.VocabFingerprint != fp {
			t.Errorf("%s: fingerprint %s, want %s like stories260k", tc.file, in.VocabFingerprint, fp)
		}
	}
}

func TestAccessors(t *testing.T) {
	f := open(t, modelPath(t, "stories260k.gguf"))
	if s, err := f.String("general.architecture"); err != nil || s != "llama" {
		t.Errorf("String = %q, %v", s, err)
	}
	if n, err := f.Uint("llama.block_count"); err != nil || n != 5 {
		t.Errorf("Uint = %d, %v", n, err)
	}
	if n, err := f.Int("llama.block_count"); err != nil || n != 5 {
		t.Errorf("Int = %d, %v", n, err)
	}
	if toks, err := f.Strings("tokenizer.ggml.tokens"); err != nil || len(toks) != 512 {
		t.Errorf("Strings = %d tokens, %v", len(toks), err)
	}
	if _, err := f.String("no.such.key"); !errors.Is(err, ErrNoKey) {
		t.Errorf("missing key: %v, want ErrNoKey", err)
	}
	if _, err := f.Uint("general.architecture"); !errors.Is(err, ErrType) {
		t.Errorf("wrong type: %v, want ErrType", err)
	}
	if _, err := f.Strings("llama.block_count"); !errors.Is(err, ErrType) {
		t.Errorf("wrong type: %v, want ErrType", err)
	}
	ti, ok := f.Tensor("output.weight")
	if !ok || ti.Type != TypeF32 || !reflect.DeepEqual(ti.Dims, []uint64{64, 512}) || ti.Size() != 64*512*4 {
		t.Fatalf("Tensor = %+v, %v", ti, ok)
	}
	b, err := f.TensorData("output.weight")
	if err != nil || len(b) != 64*512*4 {
		t.Fatalf("TensorData: %d bytes, %v", len(b), err)
	}
	for i := 0; i < len(b); i += 4 {
		x := math.Float32frombits(binary.LittleEndian.Uint32(b[i:]))
		if math.IsNaN(float64(x)) || math.Abs(float64(x)) > 100 {
			t.Fatalf("implausible weight %v at %d", x, i/4)
		}
	}
}

// TestRoundTrip rewrites a model from its parsed form: the result must be
// byte-identical, which checks the writer against a file llama.cpp accepts.
func TestRoundTrip(t *testing.T) {
	path := modelPath(t, "stories260k.gguf")
	f := open(t, path)
	var buf bytes.Buffer
	var ts []WriteTensor
	for _, ti := range f.Tensors {
		ts = append(ts, f.tensorSource(ti, ti.Type))
	}
	if err := Write(&buf, f.KV, ts); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), orig) {
		t.Fatalf("rewritten file differs: %d bytes, original %d", buf.Len(), len(orig))
	}
}

// header encodes a GGUF header for kv and tensors (with their offsets as
// given), padded to the default alignment.
func header(version uint32, kv []KV, tensors []TensorInfo) []byte {
	var buf bytes.Buffer
	e := &encoder{w: &buf}
	e.header(version, kv, tensors)
	e.pad(DefaultAlignment)
	return buf.Bytes()
}

// corrupt writes to a temporary file the model at path with its header
// changed by edit, followed by the original data section.
func corrupt(t *testing.T, path string, edit func(kv []KV, ts []TensorInfo) []byte) string {
	t.Helper()
	f := open(t, path)
	kv := append([]KV(nil), f.KV...)
	ts := make([]TensorInfo, len(f.Tensors))
	for i, ti := range f.Tensors {
		ti.Dims = append([]uint64(nil), ti.Dims...)
		ts[i] = ti
	}
	data := make([]byte, f.Size-f.DataOffset)
	if _, err := f.r.ReadAt(data, f.DataOffset); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "bad.gguf")
	if err := os.WriteFile(out, append(edit(kv, ts), data...), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestOpenErrors(t *testing.T) {
	model := modelPath(t, "stories260k.gguf")
	orig, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	withVersion := func(v uint32) []byte {
		b := bytes.Clone(orig)
		binary.LittleEndian.PutUint32(b[4:], v)
		return b
	}
	f := open(t, model)
	// Header offset of the first metadata count and the first key length.
	const tensorCountAt, kvCountAt, firstKeyLenAt = 8, 16, 24

	cases := []struct {
		name string
		path string
		want error
		text string // expected in the message
	}{
		{"missing", filepath.Join(dir, "nope.gguf"), fs.ErrNotExist, "no such file"},
		{"directory", dir, ErrNotGGUF, "not a regular file"},
		{"text", write("text.gguf", []byte("Once upon a time there was a text file.\n")), ErrNotGGUF, `starts with "Once"`},
		{"empty", write("empty.gguf", nil), ErrNotGGUF, "only 0 bytes"},
		{"v1", write("v1.gguf", withVersion(1)), ErrUnsupportedVersion, "version 1"},
		{"v4", write("v4.gguf", withVersion(4)), ErrUnsupportedVersion, "version 4"},
		{"big-endian", write("be.gguf", withVersion(3<<24)), ErrUnsupportedVersion, "big-endian"},
		{"cut in magic", write("cut0.gguf", orig[:6]), ErrTruncated, "version"},
		{"cut in header", write("cut1.gguf", orig[:200]), ErrTruncated, "tensor count 48"},
		{"cut in metadata", write("cut1b.gguf", orig[:2000]), ErrTruncated, "metadata"},
		{"cut in tensor infos", write("cut2.gguf", orig[:f.DataOffset-100]), ErrTruncated, "tensor"},
		{"cut in data", write("cut3.gguf", orig[:len(orig)-1000]), ErrTruncated, "beyond file size"},
		{"absurd tensor count", write("tc.gguf", func() []byte {
			b := bytes.Clone(orig)
			binary.LittleEndian.PutUint64(b[tensorCountAt:], 1<<40)
			return b
		}()), ErrCorrupt, "tensor count 1099511627776"},
		{"absurd metadata count", write("kc.gguf", func() []byte {
			b := bytes.Clone(orig)
			binary.LittleEndian.PutUint64(b[kvCountAt:], math.MaxUint64)
			return b
		}()), ErrCorrupt, "metadata count"},
		{"absurd key length", write("kl.gguf", func() []byte {
			b := bytes.Clone(orig)
			binary.LittleEndian.PutUint64(b[firstKeyLenAt:], 1<<62)
			return b
		}()), ErrCorrupt, "limit"},
		{"absurd tensor offset", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[3].Offset = 1 << 50
			return header(3, kv, ts)
		}), ErrCorrupt, "tensor " + f.Tensors[3].Name + ": data ["},
		{"offset overflow", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[0].Offset = math.MaxUint64 - 31
			return header(3, kv, ts)
		}), ErrCorrupt, "beyond file size"},
		{"misaligned offset", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[1].Offset += 4
			return header(3, kv, ts)
		}), ErrCorrupt, "not a multiple of the alignment"},
		{"overlap", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[2].Offset = ts[1].Offset
			return header(3, kv, ts)
		}), ErrCorrupt, "overlap"},
		{"unknown type", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[0].Type = 31
			return header(3, kv, ts)
		}), ErrCorrupt, "unknown ggml type 31"},
		{"zero dim", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[0].Dims[1] = 0
			return header(3, kv, ts)
		}), ErrCorrupt, "dimension 1 is zero"},
		{"dims overflow", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[0].Dims = []uint64{1 << 32, 1 << 32}
			return header(3, kv, ts)
		}), ErrCorrupt, "overflow"},
		{"too many dims", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[0].Dims = []uint64{1, 1, 1, 1, 1}
			return header(3, kv, ts)
		}), ErrCorrupt, "5 dimensions"},
		{"block misfit", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[0].Type, ts[0].Dims = TypeQ8_0, []uint64{48, 2}
			return header(3, kv, ts)
		}), ErrCorrupt, "not a multiple of the Q8_0 block size"},
		{"duplicate tensor", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			ts[1].Name = ts[0].Name
			return header(3, kv, ts)
		}), ErrCorrupt, "appears twice"},
		{"duplicate key", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			return header(3, append(kv, kv[0]), ts)
		}), ErrCorrupt, "appears twice"},
		{"bad alignment", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			return header(3, append(kv, KV{"general.alignment", Value{Type: ValueUint32, Data: uint32(24)}}), ts)
		}), ErrCorrupt, "power of two"},
		{"absurd array length", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			h := header(3, kv, ts)
			// The token list's length follows its key, type and element type.
			key := []byte("tokenizer.ggml.tokens")
			i := bytes.Index(h, key) + len(key) + 8
			binary.LittleEndian.PutUint64(h[i:], 1<<40)
			return h
		}), ErrCorrupt, "array length"},
		{"bad value type", corrupt(t, model, func(kv []KV, ts []TensorInfo) []byte {
			h := header(3, kv, ts)
			key := []byte("general.architecture")
			binary.LittleEndian.PutUint32(h[bytes.Index(h, key)+len(key):], 77)
			return h
		}), ErrCorrupt, "unknown value type 77"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Open(tc.path)
			if err == nil {
				f.Close()
				t.Fatal("Open succeeded")
			}
			t.Log(err)
			if !errors.Is(err, tc.want) {
				t.Errorf("error %q does not wrap %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not mention %q", err, tc.text)
			}
			if !strings.HasPrefix(err.Error(), "gguf: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestF16(t *testing.T) {
	for h := range 1 << 16 {
		f := f16ToF32(uint16(h))
		if math.IsNaN(float64(f)) {
			if back := f32ToF16(f); back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back := f32ToF16(f); back != uint16(h) {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, back)
		}
	}
	for _, tc := range []struct {
		f float32
		h uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {65520, 0x7c00}, {1e-8, 0}, {6e-8, 1},
		{1 + 1.0/2048, 0x3c00},        // halfway: rounds to even
		{1 + 3.0/2048, 0x3c02},        // halfway: rounds to even (up)
		{1 + 1.0/2048 + 1e-6, 0x3c01}, // above halfway
		{float32(math.Inf(-1)), 0xfc00},
	} {
		if got := f32ToF16(tc.f); got != tc.h {
			t.Errorf("f32ToF16(%g) = %#04x, want %#04x", tc.f, got, tc.h)
		}
	}
}

func TestQuantize(t *testing.T) {
	x := make([]float32, 64)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.7)) * float32(1+i%5)
	}
	for _, tc := range []struct {
		typ  Type
		tol  float64 // relative to the block's largest magnitude
		size int
	}{
		{TypeF16, 1e-3, 128},
		{TypeQ8_0, 1.0 / 127, 68},
		{TypeQ4_0, 1.0 / 8, 36},
	} {
		buf := make([]byte, rowBytes(tc.typ, len(x)))
		if len(buf) != tc.size {
			t.Fatalf("%s: row of 64 is %d bytes, want %d", tc.typ, len(buf), tc.size)
		}
		if err := encodeRow(tc.typ, x, buf); err != nil {
			t.Fatal(err)
		}
		y := make([]float32, len(x))
		if err := decodeRow(tc.typ, buf, y); err != nil {
			t.Fatal(err)
		}
		for b := 0; b < len(x); b += 32 {
			var amax float64
			for _, v := range x[b : b+32] {
				amax = max(amax, math.Abs(float64(v)))
			}
			for i := b; i < b+32; i++ {
				if d := math.Abs(float64(x[i] - y[i])); d > tc.tol*amax*0.51+1e-6 && tc.typ != TypeF16 || tc.typ == TypeF16 && d > tc.tol*math.Abs(float64(x[i])) {
					t.Errorf("%s: element %d: %g came back as %g", tc.typ, i, x[i], y[i])
				}
			}
		}
	}

	// The ggml Q4_0 layout: scale d = m/-8 for the element m of largest
	// magnitude; element j in the low nibble of byte j, j+16 in the high one.
	blk := make([]float32, 32)
	blk[0], blk[16], blk[1] = -8, 4, 7
	out := make([]byte, 18)
	quantQ4_0(blk, out)
	if d := f16ToF32(binary.LittleEndian.Uint16(out)); d != 1 {
		t.Fatalf("Q4_0 scale %g, want 1", d)
	}
	// (q-8)*1: -8 -> 0, 4 -> 12, 7 -> 15, 0 -> 8.
	if out[2] != 0|12<<4 || out[3] != 15|8<<4 || out[4] != 8|8<<4 {
		t.Fatalf("Q4_0 bytes % x", out[2:5])
	}
}

func TestDerive(t *testing.T) {
	src := modelPath(t, "stories260k.gguf")
	dst := filepath.Join(t.TempDir(), "4L.gguf")
	rep, err := Derive(src, dst, DeriveOptions{Layers: 4})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Layers != 4 || rep.SourceLayers != 5 || rep.Converted != 0 {
		t.Errorf("report %+v", rep)
	}
	got := open(t, dst)
	want := open(t, modelPath(t, "stories260k-draft-4L.gguf"))
	if !reflect.DeepEqual(got.KV, want.KV) {
		t.Errorf("metadata differs from the shipped 4-layer draft")
	}
	if len(got.Tensors) != len(want.Tensors) {
		t.Fatalf("%d tensors, the shipped draft has %d", len(got.Tensors), len(want.Tensors))
	}
	for _, wt := range want.Tensors {
		gt, ok := got.Tensor(wt.Name)
		if !ok || gt.Type != wt.Type || !reflect.DeepEqual(gt.Dims, wt.Dims) {
			t.Fatalf("tensor %s: got %+v, want %+v", wt.Name, gt, wt)
		}
		a, err := got.TensorData(wt.Name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := want.TensorData(wt.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("tensor %s data differs from the shipped draft's", wt.Name)
		}
	}
	if got.VocabFingerprint() != want.VocabFingerprint() {
		t.Error("fingerprint changed")
	}
}

func TestDeriveQuantize(t *testing.T) {
	src := modelPath(t, "stories260k.gguf")
	dir := t.TempDir()
	for _, typ := range []Type{TypeF16, TypeQ8_0, TypeQ4_0} {
		dst := filepath.Join(dir, typ.String()+".gguf")
		rep, err := Derive(src, dst, DeriveOptions{Type: &typ})
		if err != nil {
			t.Fatal(err)
		}
		f := open(t, dst)
		in := f.Info()
		if in.Quantization != typ.String() || in.Layers != 5 {
			t.Errorf("%s: facts %+v", typ, in)
		}
		if ft, _ := f.Uint("general.file_type"); ft != map[Type]uint64{TypeF16: 1, TypeQ8_0: 7, TypeQ4_0: 2}[typ] {
			t.Errorf("%s: general.file_type %d", typ, ft)
		}
		for _, p := range rep.Tensors {
			ti, _ := f.Tensor(p.Name)
			switch {
			case ti.Type != p.To:
				t.Errorf("%s: %s is %s, report says %s", typ, p.Name, ti.Type, p.To)
			case len(ti.Dims) == 1 && (p.To != TypeF32 || !strings.Contains(p.Reason, "one-dimensional")):
				t.Errorf("%s: norm %s: %+v", typ, p.Name, p)
			case typ != TypeF16 && strings.HasSuffix(p.Name, "ffn_down.weight") && (p.To != TypeF32 || !strings.Contains(p.Reason, "row length 172")):
				t.Errorf("%s: %s (rows of 172) should stay F32: %+v", typ, p.Name, p)
			case len(ti.Dims) == 2 && !strings.HasSuffix(p.Name, "ffn_down.weight") && p.To != typ:
				t.Errorf("%s: %s not converted: %+v", typ, p.Name, p)
			}
		}
		if in.VocabFingerprint != open(t, src).VocabFingerprint() {
			t.Errorf("%s: fingerprint changed", typ)
		}
	}

	// Converting to the type every tensor already has converts nothing.
	f32 := TypeF32
	rep, err := Derive(src, filepath.Join(dir, "none.gguf"), DeriveOptions{Type: &f32})
	if !errors.Is(err, ErrNothingToConvert) || rep == nil || !strings.Contains(err.Error(), "already F32") {
		t.Errorf("Derive to F32: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "none.gguf")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Derive wrote a file despite failing: %v", err)
	}
	q4k := TypeQ4_K
	if _, err := Derive(src, filepath.Join(dir, "x.gguf"), DeriveOptions{Type: &q4k}); err == nil {
		t.Error("Derive to Q4_K succeeded")
	}
	if _, err := Derive(src, filepath.Join(dir, "x.gguf"), DeriveOptions{Layers: 6}); err == nil {
		t.Error("Derive of 6 layers of 5 succeeded")
	}
}

func TestSynth(t *testing.T) {
	tok := open(t, modelPath(t, "stories260k.gguf"))
	s, err := LookupShape("test-tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	synth := func(name string, seed uint64, typ Type) []byte {
		p := filepath.Join(dir, name)
		if err := Synth(p, s, SynthOptions{Type: typ, Seed: seed, Tokenizer: tok}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b, c := synth("a.gguf", 1, TypeF16), synth("b.gguf", 1, TypeF16), synth("c.gguf", 2, TypeF16)
	if !bytes.Equal(a, b) {
		t.Error("equal seeds gave different files")
	}
	if bytes.Equal(a, c) {
		t.Error("different seeds gave equal files")
	}
	f := open(t, filepath.Join(dir, "a.gguf"))
	in := f.Info()
	if in.Layers != 2 || in.EmbeddingSize != 64 || in.VocabSize != 512 || in.Quantization != "F16" ||
		in.VocabFingerprint != tok.VocabFingerprint() || in.Heads != 8 || in.KVHeads != 4 {
		t.Errorf("facts %+v", in)
	}
	data, err := f.TensorData("blk.0.ffn_up.weight")
	if err != nil {
		t.Fatal(err)
	}
	var sum, sq float64
	n := len(data) / 2
	for i := 0; i < len(data); i += 2 {
		x := float64(f16ToF32(binary.LittleEndian.Uint16(data[i:])))
		sum += x
		sq += x * x
	}
	if mean, sd := sum/float64(n), math.Sqrt(sq/float64(n)); math.Abs(mean) > 0.002 || math.Abs(sd-0.02) > 0.002 {
		t.Errorf("weights have mean %g, sd %g; want N(0, 0.02)", mean, sd)
	}
	synth("q8.gguf", 1, TypeQ8_0)
	if q := open(t, filepath.Join(dir, "q8.gguf")).Info().Quantization; q != "Q8_0" {
		t.Errorf("Q8_0 synth has quantization %s", q)
	}

	// The big shapes lay out as the real models do (the vocabulary aside).
	for _, tc := range []struct {
		name   string
		params uint64 // without token_embd and output
	}{
		{"smollm-135m", 106_203_456},
		{"llama-3.2-1b", 973_146_112},
		{"llama-3.1-8b", 6_979_588_096},
	} {
		s, err := LookupShape(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, wt := range s.tensors(512, TypeF16) {
			if wt.Name != "token_embd.weight" && wt.Name != "output.weight" {
				n += wt.info().Elements()
			}
		}
		if n != tc.params {
			t.Errorf("%s: %d parameters outside the vocabulary matrices, want %d", tc.name, n, tc.params)
		}
	}
	if _, err := LookupShape("gpt-5"); !errors.Is(err, ErrUnknownShape) {
		t.Errorf("LookupShape: %v", err)
	}
}

func TestWriteChecks(t *testing.T) {
	data := func(n int) func(io.Writer) error {
		return func(w io.Writer) error { _, err := w.Write(make([]byte, n)); return err }
	}
	kv := []KV{{"general.architecture", Value{Type: ValueString, Data: "llama"}}}
	for name, tc := range map[string]struct {
		kv []KV
		ts []WriteTensor
	}{
		"short data":   {kv, []WriteTensor{{Name: "a", Type: TypeF32, Dims: []uint64{4}, Data: data(15)}}},
		"long data":    {kv, []WriteTensor{{Name: "a", Type: TypeF32, Dims: []uint64{4}, Data: data(17)}}},
		"ill-typed":    {[]KV{{"k", Value{Type: ValueUint32, Data: 1}}}, nil},
		"bad array":    {[]KV{{"k", Value{Type: ValueArray, Elem: ValueString, Data: []int32{1}}}}, nil},
		"dup key":      {append(kv, kv...), nil},
		"dup tensor":   {kv, []WriteTensor{{Name: "a", Type: TypeF32, Dims: []uint64{1}, Data: data(4)}, {Name: "a", Type: TypeF32, Dims: []uint64{1}, Data: data(4)}}},
		"block misfit": {kv, []WriteTensor{{Name: "a", Type: TypeQ8_0, Dims: []uint64{16}, Data: data(17)}}},
	} {
		if err := Write(io.Discard, tc.kv, tc.ts); err == nil {
			t.Errorf("%s: Write succeeded", name)
		}
	}
}

// FuzzRead checks that no input makes Read panic, and that whatever it
// accepts is consistent.
func FuzzRead(f *testing.F) {
	var buf bytes.Buffer
	kv := []KV{
		{"general.architecture", Value{Type: ValueString, Data: "llama"}},
		{"llama.block_count", Value{Type: ValueUint32, Data: uint32(1)}},
		{"tokenizer.ggml.tokens", Value{Type: ValueArray, Elem: ValueString, Data: []string{"a", "b"}}},
		{"nested", Value{Type: ValueArray, Elem: ValueArray, Data: []Value{{Type: ValueArray, Elem: ValueInt8, Data: []int8{-1}}}}},
	}
	ts := []WriteTensor{
		{Name: "blk.0.w", Type: TypeQ8_0, Dims: []uint64{32, 2}, Data: func(w io.Writer) error { _, err := w.Write(make([]byte, 68)); return err }},
		{Name: "n", Type: TypeF32, Dims: []uint64{3}, Data: func(w io.Writer) error { _, err := w.Write(make([]byte, 12)); return err }},
	}
	if err := Write(&buf, kv, ts); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:40])
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := Read(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrNotGGUF) && !errors.Is(err, ErrUnsupportedVersion) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		for _, ti := range g.Tensors {
			if g.DataOffset+int64(ti.Offset)+int64(ti.Size()) > int64(len(b)) {
				t.Fatalf("tensor %s beyond the input", ti.Name)
			}
			if _, err := g.TensorData(ti.Name); err != nil {
				t.Fatal(err)
			}
		}
		g.Info()
	})
}
