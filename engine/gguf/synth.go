package gguf

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
)

// A Shape is the architecture of a llama-family model: enough to lay out
// every tensor of a model with the same compute cost per token.
type Shape struct {
	Name string `json:"name"`
	// Model names the real model whose shape this is.
	Model         string  `json:"model"`
	Embedding     int     `json:"embedding"`
	Layers        int     `json:"layers"`
	Heads         int     `json:"heads"`
	KVHeads       int     `json:"kv_heads"`
	FeedForward   int     `json:"feed_forward"`
	ContextLength int     `json:"context_length"`
	RopeFreqBase  float32 `json:"rope_freq_base"`
	NormEpsilon   float32 `json:"norm_epsilon"`
	// TiedEmbeddings is set when the model has no output matrix of its own
	// and reuses token_embd.
	TiedEmbeddings bool `json:"tied_embeddings"`
	// Vocab is the real model's vocabulary size, for reference: Synth gives
	// token_embd and output one row per token of the tokenizer it copies.
	Vocab int `json:"vocab"`
}

var shapes = []Shape{
	{Name: "test-tiny", Model: "a tiny llama for tests", Embedding: 64, Layers: 2, Heads: 8, KVHeads: 4,
		FeedForward: 128, ContextLength: 512, RopeFreqBase: 10000, NormEpsilon: 1e-5, Vocab: 512},
	{Name: "smollm-135m", Model: "HuggingFaceTB/SmolLM-135M", Embedding: 576, Layers: 30, Heads: 9, KVHeads: 3,
		FeedForward: 1536, ContextLength: 2048, RopeFreqBase: 10000, NormEpsilon: 1e-5, TiedEmbeddings: true, Vocab: 49152},
	{Name: "tinyllama-1.1b", Model: "TinyLlama/TinyLlama-1.1B", Embedding: 2048, Layers: 22, Heads: 32, KVHeads: 4,
		FeedForward: 5632, ContextLength: 2048, RopeFreqBase: 10000, NormEpsilon: 1e-5, Vocab: 32000},
	{Name: "llama-3.2-1b", Model: "meta-llama/Llama-3.2-1B", Embedding: 2048, Layers: 16, Heads: 32, KVHeads: 8,
		FeedForward: 8192, ContextLength: 131072, RopeFreqBase: 500000, NormEpsilon: 1e-5, TiedEmbeddings: true, Vocab: 128256},
	{Name: "llama-3.2-3b", Model: "meta-llama/Llama-3.2-3B", Embedding: 3072, Layers: 28, Heads: 24, KVHeads: 8,
		FeedForward: 8192, ContextLength: 131072, RopeFreqBase: 500000, NormEpsilon: 1e-5, TiedEmbeddings: true, Vocab: 128256},
	{Name: "llama-3.1-8b", Model: "meta-llama/Llama-3.1-8B", Embedding: 4096, Layers: 32, Heads: 32, KVHeads: 8,
		FeedForward: 14336, ContextLength: 131072, RopeFreqBase: 500000, NormEpsilon: 1e-5, Vocab: 128256},
}

// Shapes returns the shapes Synth knows, smallest first.
func Shapes() []Shape {
	out := make([]Shape, len(shapes))
	copy(out, shapes)
	return out
}

// ErrUnknownShape reports a shape name LookupShape does not know.
var ErrUnknownShape = errors.New("unknown model shape")

// LookupShape returns the shape called name.
func LookupShape(name string) (Shape, error) {
	var names []string
	for _, s := range shapes {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Shape{}, fmt.Errorf("gguf: %w %q; known: %s", ErrUnknownShape, name, strings.Join(names, ", "))
}

// headDim returns the size of one attention head.
func (s Shape) headDim() int { return s.Embedding / s.Heads }

// tensors lists the tensors of s, in llama.cpp's order, for a vocabulary of
// vocab tokens, with weight matrices of type wt.
func (s Shape) tensors(vocab int, wt Type) []WriteTensor {
	e, hd, ff := uint64(s.Embedding), uint64(s.headDim()), uint64(s.FeedForward)
	q, kv, v := uint64(s.Heads)*hd, uint64(s.KVHeads)*hd, uint64(vocab)
	mat := func(name string, cols, rows uint64) WriteTensor {
		return WriteTensor{Name: name, Type: wt, Dims: []uint64{cols, rows}}
	}
	norm := func(name string) WriteTensor {
		return WriteTensor{Name: name, Type: TypeF32, Dims: []uint64{e}}
	}
	ts := []WriteTensor{mat("token_embd.weight", e, v)}
	for i := range s.Layers {
		p := fmt.Sprintf("blk.%d.", i)
		ts = append(ts,
			norm(p+"attn_norm.weight"),
			mat(p+"attn_q.weight", e, q),
			mat(p+"attn_k.weight", e, kv),
			mat(p+"attn_v.weight", e, kv),
			mat(p+"attn_output.weight", q, e),
			norm(p+"ffn_norm.weight"),
			mat(p+"ffn_gate.weight", e, ff),
			mat(p+"ffn_up.weight", e, ff),
			mat(p+"ffn_down.weight", ff, e),
		)
	}
	ts = append(ts, norm("output_norm.weight"))
	if !s.TiedEmbeddings {
		ts = append(ts, mat("output.weight", e, v))
	}
	return ts
}

func (s Shape) validate() error {
	switch {
	case s.Embedding <= 0 || s.Layers <= 0 || s.Heads <= 0 || s.KVHeads <= 0 || s.FeedForward <= 0:
		return fmt.Errorf("gguf: shape %q: sizes must be positive", s.Name)
	case s.Embedding%s.Heads != 0:
		return fmt.Errorf("gguf: shape %q: embedding %d not divisible by %d heads", s.Name, s.Embedding, s.Heads)
	case s.Heads%s.KVHeads != 0:
		return fmt.Errorf("gguf: shape %q: %d heads not divisible by %d KV heads", s.Name, s.Heads, s.KVHeads)
	}
	return nil
}

// SynthOptions say how Synth builds a model.
type SynthOptions struct {
	// Type is the type of the weight matrices: F32 (the zero value), F16,
	// Q8_0 or Q4_0. Norms are always F32.
	Type Type
	// ContextLength overrides the shape's context length if positive.
	ContextLength int
	// Seed seeds the weights: equal seeds give byte-identical files.
	Seed uint64
	// Tokenizer is a GGUF file whose tokenizer.* metadata the model gets. It
	// is required: the vocabulary, and with it the number of rows of
	// token_embd and output, comes from it.
	Tokenizer *File
}

// Synth writes to dst a llama model of the given shape with random weights:
// matrices drawn from N(0, 0.02²), norms 1. Every tensor has the real model's
// shape except token_embd and output, which have one row per token of
// opt.Tokenizer's vocabulary instead of the real model's (Shape.Vocab), so
// that the model shares that tokenizer. Such a model costs what the real one
// costs per token, less the vocabulary projection, but produces noise; it is
// meant for measuring. Data is generated while it is written, so memory use
// does not grow with the model. dst is written atomically.
func Synth(dst string, s Shape, opt SynthOptions) error {
	if err := s.validate(); err != nil {
		return err
	}
	if !encodable(opt.Type) {
		return fmt.Errorf("gguf: synth: cannot write weights as %s; types: F32, F16, Q8_0, Q4_0", opt.Type)
	}
	if opt.Tokenizer == nil {
		return errors.New("gguf: synth: no tokenizer source given")
	}
	tokens, err := opt.Tokenizer.Strings("tokenizer.ggml.tokens")
	if err != nil {
		return fmt.Errorf("gguf: synth: tokenizer source: %w", err)
	}
	vocab := len(tokens)
	ctx := s.ContextLength
	if opt.ContextLength > 0 {
		ctx = opt.ContextLength
	}
	ft, _ := fileTypeFor(opt.Type)

	u32 := func(x int) Value { return Value{Type: ValueUint32, Data: uint32(x)} }
	f32 := func(x float32) Value { return Value{Type: ValueFloat32, Data: x} }
	str := func(x string) Value { return Value{Type: ValueString, Data: x} }
	kv := []KV{
		{"general.architecture", str("llama")},
		{"general.name", str("synthetic " + s.Name)},
		{"general.description", str(fmt.Sprintf(
			"SLED synthetic model: random weights (seed %d) in the tensor shapes of %s, "+
				"except token_embd/output, which have %d rows for the copied tokenizer instead of the real %d",
			opt.Seed, s.Model, vocab, s.Vocab))},
		{"general.file_type", Value{Type: ValueUint32, Data: ft}},
		{"llama.context_length", u32(ctx)},
		{"llama.embedding_length", u32(s.Embedding)},
		{"llama.block_count", u32(s.Layers)},
		{"llama.feed_forward_length", u32(s.FeedForward)},
		{"llama.attention.head_count", u32(s.Heads)},
		{"llama.attention.head_count_kv", u32(s.KVHeads)},
		{"llama.rope.dimension_count", u32(s.headDim())},
		{"llama.rope.freq_base", f32(s.RopeFreqBase)},
		{"llama.attention.layer_norm_rms_epsilon", f32(s.NormEpsilon)},
		{"llama.vocab_size", u32(vocab)},
	}
	if opt.Type != TypeF32 && opt.Type != TypeF16 {
		kv = append(kv, KV{"general.quantization_version", u32(2)})
	}
	for _, e := range opt.Tokenizer.KV {
		if strings.HasPrefix(e.Key, "tokenizer.") {
			kv = append(kv, e)
		}
	}

	tensors := s.tensors(vocab, opt.Type)
	for i := range tensors {
		t := &tensors[i]
		if t.Dims[0]%t.Type.BlockSize() != 0 {
			return fmt.Errorf("gguf: synth: shape %q: tensor %s row length %d does not fit %s blocks of %d",
				s.Name, t.Name, t.Dims[0], t.Type, t.Type.BlockSize())
		}
		t.Data = randomData(*t, opt.Seed)
	}
	return writeFile(dst, func(w io.Writer) error { return Write(w, kv, tensors) })
}

// chunkElems is about how many elements of a tensor one generator draws;
// chunks are generated in parallel and written in order.
const chunkElems = 1 << 18

// randomData returns a Data function for t: ones for one-dimensional tensors
// (norm weights), else N(0, 0.02²). Each chunk of rows has its own generator,
// seeded by seed, t's name and the chunk's index, so the values do not depend
// on t's type or on how many chunks are generated at once.
func randomData(t WriteTensor, seed uint64) func(io.Writer) error {
	return func(w io.Writer) error {
		n := int(t.Dims[0])
		rows := int(t.info().Elements() / t.Dims[0])
		per := max(1, chunkElems/n)
		chunks := (rows + per - 1) / per
		gen := func(c int) ([]byte, error) {
			h := fnv.New64a()
			fmt.Fprintf(h, "%s#%d", t.Name, c)
			rng := rand.New(rand.NewPCG(seed, h.Sum64()))
			k := min(per, rows-c*per)
			rb := rowBytes(t.Type, n)
			out := make([]byte, k*rb)
			row := make([]float32, n)
			for r := range k {
				for i := range row {
					if len(t.Dims) == 1 {
						row[i] = 1
					} else {
						row[i] = float32(rng.NormFloat64() * 0.02)
					}
				}
				if err := encodeRow(t.Type, row, out[r*rb:(r+1)*rb]); err != nil {
					return nil, err
				}
			}
			return out, nil
		}

		type result struct {
			b   []byte
			err error
		}
		workers := runtime.GOMAXPROCS(0)
		order := make(chan chan result, workers)
		done := make(chan struct{})
		defer close(done)
		go func() {
			defer close(order)
			for c := range chunks {
				ch := make(chan result, 1)
				select {
				case order <- ch:
				case <-done:
					return
				}
				go func() {
					b, err := gen(c)
					ch <- result{b, err}
				}()
			}
		}()
		for ch := range order {
			r := <-ch
			if r.err != nil {
				return r.err
			}
			if _, err := w.Write(r.b); err != nil {
				return err
			}
		}
		return nil
	}
}
