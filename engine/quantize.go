package engine

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrQuantType means Quantize was asked for a file type it does not offer.
var ErrQuantType = errors.New("engine: unsupported quantization type")

// quantTypes maps the file types Quantize offers to llama.cpp's llama_ftype.
var quantTypes = map[string]int{
	"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
	"Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
}

// QuantTypes lists the file types Quantize accepts.
func QuantTypes() []string {
	return []string{"F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0"}
}

// Quantize writes the model src requantized to typ (one of QuantTypes,
// case-insensitive) into dst with llama.cpp's own quantizer. Unlike
// gguf.Derive it reads every weight type llama.cpp knows, K-quants included;
// requantizing an already quantized model compounds the loss. The file is written
// to dst.partial and renamed when complete, so dst never names a half-written
// model. src is validated first (errors wrap ErrModelFile). threads <= 0 uses
// DefaultThreads().
func Quantize(src, dst, typ string, threads int) error {
	ft, ok := quantTypes[strings.ToUpper(typ)]
	if !ok {
		return fmt.Errorf("%w: %q (want one of %s)", ErrQuantType, typ, strings.Join(QuantTypes(), ", "))
	}
	if _, err := ValidateFile(src); err != nil {
		return err
	}
	if threads <= 0 {
		threads = DefaultThreads()
	}
	tmp := dst + ".partial"
	if rc := quantizeFile(src, tmp, ft, threads); rc != 0 {
		os.Remove(tmp)
		return fmt.Errorf("engine: llama.cpp could not quantize %s to %s (status %d)", src, typ, rc)
	}
	if _, err := ValidateFile(tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("engine: quantized %s: %w", src, err)
	}
	return os.Rename(tmp, dst)
}
