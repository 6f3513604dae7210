package gguf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrNothingToConvert reports that a conversion was asked for but no tensor
// of the model can take the requested type.
var ErrNothingToConvert = errors.New("no tensor can be converted to the requested type")

// DeriveOptions say how Derive transforms a model.
type DeriveOptions struct {
	// Layers is the number of transformer blocks (tensors blk.N.* with
	// N < Layers) to keep; 0 keeps them all.
	Layers int
	// Type, if not nil, is the type to convert weight matrices to: F32, F16,
	// Q8_0 or Q4_0. One-dimensional tensors (norms, biases) and matrices whose
	// row length is not a multiple of the type's block size keep their type.
	Type *Type
}

// A TensorPlan says what Derive does with one tensor of the source.
type TensorPlan struct {
	Name string `json:"name"`
	From Type   `json:"from"`
	To   Type   `json:"to"`
	// Dropped is set for tensors of removed blocks.
	Dropped bool `json:"dropped,omitempty"`
	// Reason says why a tensor kept its type although a conversion was asked
	// for; it is empty otherwise.
	Reason string `json:"reason,omitempty"`
}

// A DeriveReport says what Derive did.
type DeriveReport struct {
	// Layers is the number of blocks in the output, of SourceLayers.
	Layers       int `json:"layers"`
	SourceLayers int `json:"source_layers"`
	// Tensors has one entry per source tensor, in file order.
	Tensors []TensorPlan `json:"tensors"`
	// Converted counts the tensors whose type changed.
	Converted int `json:"converted"`
}

// Derive writes to dst a model made from the GGUF file src: its first
// opt.Layers transformer blocks, with weight matrices converted to opt.Type.
// Metadata is copied, with <arch>.block_count (and any per-layer metadata
// array) cut to opt.Layers and general.file_type updated for the new type.
// Tensors that are kept without conversion are copied byte for byte. dst is
// written atomically: on error it is left untouched.
//
// If a conversion is asked for and no tensor can take it, Derive writes
// nothing and returns the report with an error wrapping ErrNothingToConvert.
func Derive(src, dst string, opt DeriveOptions) (*DeriveReport, error) {
	f, err := Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	kv, tensors, rep, err := f.derive(opt)
	if err != nil {
		return rep, err
	}
	err = writeFile(dst, func(w io.Writer) error { return Write(w, kv, tensors) })
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// derive plans Derive: the output metadata, the output tensors and a report.
func (f *File) derive(opt DeriveOptions) ([]KV, []WriteTensor, *DeriveReport, error) {
	arch, err := f.String("general.architecture")
	if err != nil {
		return nil, nil, nil, err
	}
	blockKey := arch + ".block_count"
	n, err := f.Uint(blockKey)
	if err != nil {
		return nil, nil, nil, err
	}
	if opt.Layers < 0 || uint64(opt.Layers) > n {
		return nil, nil, nil, fmt.Errorf("gguf: derive: cannot keep %d layers of a %d-layer model", opt.Layers, n)
	}
	keep := int(n)
	if opt.Layers > 0 {
		keep = opt.Layers
	}
	if opt.Type != nil && !encodable(*opt.Type) {
		return nil, nil, nil, fmt.Errorf("gguf: derive: cannot convert to %s; types: F32, F16, Q8_0, Q4_0", *opt.Type)
	}
	rep := &DeriveReport{Layers: keep, SourceLayers: int(n)}

	kv := make([]KV, 0, len(f.KV)+1)
	hasFileType := false
	for _, e := range f.KV {
		switch {
		case e.Key == blockKey:
			e.Value = uintValue(e.Value.Type, uint64(keep))
		case e.Key == "general.file_type" && opt.Type != nil:
			hasFileType = true
			ft, _ := fileTypeFor(*opt.Type)
			e.Value = Value{Type: ValueUint32, Data: ft}
		case strings.HasPrefix(e.Key, arch+".") && e.Value.Type == ValueArray && e.Value.Elem != ValueArray &&
			e.Value.Len() == int(n) && keep < int(n):
			// Per-layer hyperparameters (head counts, window patterns, ...).
			e.Value.Data = e.Value.slice(keep)
		}
		kv = append(kv, e)
	}
	if opt.Type != nil && !hasFileType {
		ft, _ := fileTypeFor(*opt.Type)
		kv = append(kv, KV{"general.file_type", Value{Type: ValueUint32, Data: ft}})
	}

	var tensors []WriteTensor
	for _, t := range f.Tensors {
		p := TensorPlan{Name: t.Name, From: t.Type, To: t.Type}
		if b, ok := blockIndex(t.Name); ok && b >= keep {
			p.Dropped = true
			rep.Tensors = append(rep.Tensors, p)
			continue
		}
		if opt.Type != nil {
			to := *opt.Type
			switch {
			case t.Type == to:
				p.Reason = "already " + to.String()
			case len(t.Dims) < 2:
				p.Reason = "one-dimensional (norm or bias): kept at full precision"
			case !decodable(t.Type):
				p.Reason = "cannot decode " + t.Type.String()
			case t.Dims[0]%to.BlockSize() != 0:
				p.Reason = fmt.Sprintf("row length %d is not a multiple of the %s block size %d", t.Dims[0], to, to.BlockSize())
			default:
				p.To = to
				rep.Converted++
			}
		}
		rep.Tensors = append(rep.Tensors, p)
		tensors = append(tensors, f.tensorSource(t, p.To))
	}
	if opt.Type != nil && rep.Converted == 0 {
		return nil, nil, rep, fmt.Errorf("gguf: derive: %w (%s): %s", ErrNothingToConvert, *opt.Type, summarizeReasons(rep))
	}
	return kv, tensors, rep, nil
}

// summarizeReasons lists the distinct reasons tensors kept their types.
func summarizeReasons(rep *DeriveReport) string {
	var reasons []string
	count := map[string]int{}
	for _, p := range rep.Tensors {
		if p.Reason == "" {
			continue
		}
		if count[p.Reason] == 0 {
			reasons = append(reasons, p.Reason)
		}
		count[p.Reason]++
	}
	for i, r := range reasons {
		reasons[i] = fmt.Sprintf("%d tensors %s", count[r], r)
	}
	return strings.Join(reasons, "; ")
}

// blockIndex returns N for a tensor called blk.N.*.
func blockIndex(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "blk.")
	if !ok {
		return 0, false
	}
	num, _, ok := strings.Cut(rest, ".")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(num)
	return n, err == nil && n >= 0
}

// uintValue returns x as a value of integer type t (uint32 if t is not an
// integer type).
func uintValue(t ValueType, x uint64) Value {
	switch t {
	case ValueUint8:
		return Value{Type: t, Data: uint8(x)}
	case ValueInt8:
		return Value{Type: t, Data: int8(x)}
	case ValueUint16:
		return Value{Type: t, Data: uint16(x)}
	case ValueInt16:
		return Value{Type: t, Data: int16(x)}
	case ValueInt32:
		return Value{Type: t, Data: int32(x)}
	case ValueUint64:
		return Value{Type: t, Data: x}
	case ValueInt64:
		return Value{Type: t, Data: int64(x)}
	}
	return Value{Type: ValueUint32, Data: uint32(x)}
}

// tensorSource returns a WriteTensor that streams t's data from f,
// converted to type to.
func (f *File) tensorSource(t TensorInfo, to Type) WriteTensor {
	wt := WriteTensor{Name: t.Name, Type: to, Dims: t.Dims}
	sr := io.NewSectionReader(f.r, f.DataOffset+int64(t.Offset), int64(t.Size()))
	if to == t.Type {
		wt.Data = func(w io.Writer) error {
			_, err := io.Copy(w, sr)
			return err
		}
		return wt
	}
	wt.Data = func(w io.Writer) error {
		n := int(t.Dims[0])
		in := make([]byte, rowBytes(t.Type, n))
		out := make([]byte, rowBytes(to, n))
		row := make([]float32, n)
		br := bufio.NewReaderSize(sr, 1<<20)
		for r := t.Elements() / t.Dims[0]; r > 0; r-- {
			if _, err := io.ReadFull(br, in); err != nil {
				return fmt.Errorf("reading %s: %w", t.Name, err)
			}
			if err := decodeRow(t.Type, in, row); err != nil {
				return err
			}
			if err := encodeRow(to, row, out); err != nil {
				return err
			}
			if _, err := w.Write(out); err != nil {
				return err
			}
		}
		return nil
	}
	return wt
}

// ExtractVocab writes the metadata of the model file at src, its tokenizer
// included, without a tensor: a file of a few megabytes that
// engine.ModelOptions.VocabOnly loads, for a device that drafts across
// vocabularies and needs the target's tokenizer but not its weights. dst is
// written atomically.
func ExtractVocab(src, dst string) error {
	f, err := Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.VocabFingerprint() == "" {
		return fmt.Errorf("gguf: %s has no tokenizer (tokenizer.ggml.tokens)", src)
	}
	return writeFile(dst, func(w io.Writer) error { return Write(w, f.KV, nil) })
}
