// Package engine runs LLM inference with llama.cpp for SLED's drafters, verifiers
// and benchmarks, and hides cgo behind a small API.
//
// A Model is a loaded GGUF file: its vocabulary (Tokenize, Piece, Detokenize,
// Fingerprint) and weights. Files are validated in Go (package engine/gguf) before
// llama.cpp sees them, because a crash inside cgo kills the whole process.
//
// A Context holds a KV cache with several sequence slots and evaluates one batch of
// tokens from many sequences in a single forward pass (Decode), returning the logits
// rows the caller asked for. Drafters use one slot; a verifier uses one slot per
// device session and verifies a whole batch of drafts in one Decode.
//
// Thread-safety: a Model is safe for concurrent use, and several Contexts may share
// one Model. A Context is a single llama.cpp context, which is single-threaded; its
// methods serialise on an internal lock, so concurrent calls are safe but run one at
// a time. Logits returned by Decode are views into llama.cpp's buffers and are valid
// only until the next Decode, Remove, Clear or Close on the same Context.
package engine
