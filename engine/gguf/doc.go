// Package gguf reads, validates, writes and transforms GGUF model files, in
// pure Go.
//
// SLED hands model files to llama.cpp through cgo, where a malformed file can
// crash the whole process. Open and Read therefore check everything llama.cpp
// would trust: the magic and version, that counts and lengths fit in the file,
// that tensor shapes are sane and their types known, and that every tensor's
// data lies inside the file, aligned and without overlap. Errors wrap
// ErrNotGGUF, ErrUnsupportedVersion, ErrTruncated or ErrCorrupt.
//
// A File gives typed access to metadata (String, Uint, Strings, ...), the
// tensor infos and their raw data, and a summary of the model (Info),
// including a vocabulary fingerprint that is equal for models sharing a
// tokenizer, which is what a draft and its target must share.
//
// Write streams a new file from metadata and tensor data sources. On top of
// it, Derive cuts a model to its first K transformer blocks (a
// self-speculative draft) and optionally converts its weight matrices to
// F16, Q8_0 or Q4_0, and Synth writes a random-weight llama model with the
// tensor shapes of a real one (see Shapes) and a real tokenizer, for
// measuring compute at realistic sizes.
package gguf
