package gguf

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
)

// Info summarises a model file. Fields whose metadata is absent are zero (or
// -1 for token ids).
type Info struct {
	Architecture string `json:"architecture"`
	Name         string `json:"name,omitempty"`
	Version      uint32 `json:"gguf_version"`
	FileSize     int64  `json:"file_size"`
	Tensors      int    `json:"tensors"`
	// Parameters is the total number of tensor elements.
	Parameters    uint64 `json:"parameters"`
	Layers        uint64 `json:"layers"`
	EmbeddingSize uint64 `json:"embedding_size"`
	FeedForward   uint64 `json:"feed_forward_size,omitempty"`
	Heads         uint64 `json:"heads,omitempty"`
	KVHeads       uint64 `json:"kv_heads,omitempty"`
	ContextLength uint64 `json:"context_length"`
	// Quantization is the type holding the most elements among the weight
	// matrices (tensors of two or more dimensions).
	Quantization string `json:"quantization"`
	// FileType is general.file_type by llama.cpp's name, such as "MOSTLY_Q8_0".
	FileType string `json:"file_type,omitempty"`
	// TensorTypes counts tensors by type.
	TensorTypes map[string]int `json:"tensor_types"`

	Tokenizer string `json:"tokenizer,omitempty"`
	VocabSize int    `json:"vocab_size"`
	BOS       int64  `json:"bos_id"`
	EOS       int64  `json:"eos_id"`
	// VocabFingerprint is VocabFingerprint's result.
	VocabFingerprint string `json:"vocab_fingerprint"`
}

// Info returns the model facts recorded in f.
func (f *File) Info() Info {
	in := Info{
		Version:     f.Version,
		FileSize:    f.Size,
		Tensors:     len(f.Tensors),
		TensorTypes: map[string]int{},
		BOS:         -1,
		EOS:         -1,
	}
	in.Architecture, _ = f.String("general.architecture")
	in.Name, _ = f.String("general.name")
	arch := in.Architecture
	in.Layers, _ = f.Uint(arch + ".block_count")
	in.EmbeddingSize, _ = f.Uint(arch + ".embedding_length")
	in.FeedForward, _ = f.Uint(arch + ".feed_forward_length")
	in.Heads, _ = f.Uint(arch + ".attention.head_count")
	in.KVHeads, _ = f.Uint(arch + ".attention.head_count_kv")
	in.ContextLength, _ = f.Uint(arch + ".context_length")
	if ft, err := f.Uint("general.file_type"); err == nil {
		in.FileType = fileTypeNames[ft]
		if in.FileType == "" {
			in.FileType = "unknown"
		}
	}

	elems := map[Type]uint64{}
	matrices := false
	for _, t := range f.Tensors {
		in.Parameters += t.Elements()
		in.TensorTypes[t.Type.String()]++
		if len(t.Dims) >= 2 {
			if !matrices {
				clear(elems)
				matrices = true
			}
			elems[t.Type] += t.Elements()
		} else if !matrices {
			elems[t.Type] += t.Elements()
		}
	}
	var best uint64
	for _, t := range slices.Sorted(maps.Keys(elems)) {
		if elems[t] > best {
			best, in.Quantization = elems[t], t.String()
		}
	}

	in.Tokenizer, _ = f.String("tokenizer.ggml.model")
	if v, ok := f.Value("tokenizer.ggml.tokens"); ok {
		in.VocabSize = v.Len()
	}
	if id, err := f.Int("tokenizer.ggml.bos_token_id"); err == nil {
		in.BOS = id
	}
	if id, err := f.Int("tokenizer.ggml.eos_token_id"); err == nil {
		in.EOS = id
	}
	in.VocabFingerprint = f.VocabFingerprint()
	return in
}

// fingerprintKeys are the metadata that decide what token ids mean and how
// text becomes them.
var fingerprintKeys = []string{
	"tokenizer.ggml.model",
	"tokenizer.ggml.tokens",
	"tokenizer.ggml.token_type",
	"tokenizer.ggml.scores",
	"tokenizer.ggml.merges",
}

// VocabFingerprint returns a hex SHA-256 identifying f's vocabulary: it
// covers the tokenizer model name, the token strings, and, where present,
// the token types, scores and BPE merges, each with its key and GGUF value
// encoding. Models that share a tokenizer share a fingerprint whatever their
// weights, so a draft model can be matched to a target by it. It returns ""
// if f has no token list.
func (f *File) VocabFingerprint() string {
	if _, ok := f.Value("tokenizer.ggml.tokens"); !ok {
		return ""
	}
	h := sha256.New()
	e := &encoder{w: h}
	e.str("sled vocab fingerprint v1")
	for _, k := range fingerprintKeys {
		v, ok := f.Value(k)
		if !ok {
			continue
		}
		e.str(k)
		e.u32(uint32(v.Type))
		e.value(v)
	}
	return hex.EncodeToString(h.Sum(nil))
}
