package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"

	"github.com/sled-project/sled/engine/gguf"
)

// Token is a vocabulary id.
type Token = int32

// Errors returned by the package; match them with errors.Is.
var (
	// ErrModelFile means the model file is missing, unreadable, not a GGUF file, or
	// corrupt. The wrapped error says which.
	ErrModelFile = errors.New("engine: bad model file")
	// ErrVocabMismatch means two models do not share a tokenizer, so one cannot
	// draft for the other.
	ErrVocabMismatch = errors.New("engine: vocabularies differ")
	// ErrClosed is returned by methods of a closed Model or Context.
	ErrClosed = errors.New("engine: closed")
)

// ModelOptions configures LoadModel. The zero value is valid.
type ModelOptions struct {
	// GPULayers is the number of layers offloaded to a GPU when llama.cpp was built
	// with one. Default 0 (CPU only).
	GPULayers int
	// NoMmap reads the weights into memory instead of mapping the file.
	NoMmap bool
	// VocabOnly loads the tokenizer and nothing else: a model that tokenizes
	// and detokenizes (a cross-vocabulary device's view of the target's
	// vocabulary) but cannot evaluate (NewContext fails). Loading reads the
	// file's metadata only.
	VocabOnly bool
}

// Info describes a loaded model.
type Info struct {
	Path         string `json:"path"`
	Description  string `json:"description"` // llama.cpp's one-line summary, e.g. "llama ?B all F32"
	Params       uint64 `json:"params"`
	SizeBytes    uint64 `json:"size_bytes"`
	Layers       int    `json:"layers"`
	Embedding    int    `json:"embedding"`
	ContextTrain int    `json:"context_train"`
	VocabSize    int    `json:"vocab_size"`
	Fingerprint  string `json:"vocab_fingerprint"`
	BOS          Token  `json:"bos"`
	EOS          Token  `json:"eos"`
	AddBOS       bool   `json:"add_bos"`
	ChatTemplate string `json:"chat_template,omitempty"`
}

// Model is a loaded GGUF model. It is safe for concurrent use.
type Model struct {
	mu     sync.RWMutex // guards cm against Close while in use
	cm     *cModel
	info   Info
	pieces [][]byte // text of every token; control tokens map to nil
	ctrl   []bool   // control (non-text) tokens
	// spell holds each control token's spelling ("<|im_end|>"), for text
	// that crosses vocabularies (DetokenizeSpecial).
	spell   map[Token][]byte
	vocabOK bool // loaded VocabOnly
}

// LoadModel validates the GGUF file at path and loads it. A missing or malformed
// file gives an error wrapping ErrModelFile and never reaches llama.cpp.
func LoadModel(path string, opts ModelOptions) (*Model, error) {
	fp, err := ValidateFile(path)
	if err != nil {
		return nil, err
	}
	cm, err := loadCModel(path, opts.GPULayers, !opts.NoMmap, opts.VocabOnly)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModelFile, err)
	}
	f := cm.facts()
	m := &Model{
		cm: cm,
		info: Info{
			Path: path, Description: f.desc, Params: f.nParams, SizeBytes: f.size,
			Layers: f.nLayer, Embedding: f.nEmbd, ContextTrain: f.nCtxTrain,
			VocabSize: f.nVocab, Fingerprint: fp, BOS: f.bos, EOS: f.eos, AddBOS: f.addBOS,
			ChatTemplate: f.chatTemplate,
		},
		pieces: make([][]byte, f.nVocab),
		ctrl:   make([]bool, f.nVocab),
	}
	m.spell = make(map[Token][]byte)
	m.vocabOK = opts.VocabOnly
	for t := range f.nVocab {
		m.ctrl[t] = cm.isControl(Token(t))
		if !m.ctrl[t] {
			m.pieces[t] = cm.piece(Token(t), false)
		} else {
			m.spell[Token(t)] = cm.piece(Token(t), true)
		}
	}
	return m, nil
}

// ValidateFile checks that path is a well-formed GGUF file whose tensors lie inside
// it, and returns its vocabulary fingerprint. Errors wrap ErrModelFile.
func ValidateFile(path string) (fingerprint string, err error) {
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%w: %w", ErrModelFile, err)
	}
	f, err := gguf.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrModelFile, err)
	}
	defer f.Close()
	fp := f.VocabFingerprint()
	if fp == "" {
		return "", fmt.Errorf("%w: %s has no tokenizer (tokenizer.ggml.tokens)", ErrModelFile, path)
	}
	return fp, nil
}

// Close frees the model. Contexts created from it must be closed first.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cm == nil {
		return ErrClosed
	}
	m.cm.free()
	m.cm = nil
	return nil
}

// ModelID is the id a model file is known by: its file name without the
// extension. SLED serves a target under it, labels a draft's metrics with it and
// names devices after it, so that one file has one id everywhere.
func ModelID(path string) string {
	base := filepath.Base(path)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// ID is the model's ModelID.
func (m *Model) ID() string { return ModelID(m.info.Path) }

// Info describes the model.
func (m *Model) Info() Info { return m.info }

// VocabSize is the number of tokens in the vocabulary; valid ids are [0, VocabSize).
func (m *Model) VocabSize() int { return m.info.VocabSize }

// Fingerprint identifies the tokenizer: models with equal fingerprints tokenize
// identically and may draft for each other.
func (m *Model) Fingerprint() string { return m.info.Fingerprint }

// BOS is the beginning-of-sequence token.
func (m *Model) BOS() Token { return m.info.BOS }

// EOS is the end-of-sequence token.
func (m *Model) EOS() Token { return m.info.EOS }

// IsEOG reports whether t ends generation (EOS, end-of-turn and the like).
func (m *Model) IsEOG(t Token) bool {
	if !m.ValidToken(t) {
		return false
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.cm == nil {
		return false
	}
	return m.cm.isEOG(t)
}

// ValidToken reports whether t is a vocabulary id.
func (m *Model) ValidToken(t Token) bool { return t >= 0 && int(t) < m.info.VocabSize }

// CheckCompatible returns an error wrapping ErrVocabMismatch, naming both models,
// unless draft and m share a tokenizer.
func (m *Model) CheckCompatible(draft *Model) error {
	if draft.info.Fingerprint != m.info.Fingerprint {
		return fmt.Errorf("%w: draft %s (vocabulary %.12s, %d tokens) cannot draft for target %s (vocabulary %.12s, %d tokens)",
			ErrVocabMismatch, draft.info.Path, draft.info.Fingerprint, draft.info.VocabSize,
			m.info.Path, m.info.Fingerprint, m.info.VocabSize)
	}
	return nil
}

// Tokenize converts text to tokens, with the model's BOS in front when addBOS is set
// and the model wants one. Text that spells a control token (such as "<s>") is
// tokenized as plain text, so user input cannot forge control tokens.
func (m *Model) Tokenize(text string, addBOS bool) ([]Token, error) {
	return m.tokenize(text, addBOS, false)
}

// TokenizeSpecial is Tokenize for trusted text, such as the output of a chat
// template, in which control-token spellings become control tokens.
func (m *Model) TokenizeSpecial(text string, addBOS bool) ([]Token, error) {
	return m.tokenize(text, addBOS, true)
}

func (m *Model) tokenize(text string, addBOS, special bool) ([]Token, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.cm == nil {
		return nil, ErrClosed
	}
	return m.cm.tokenize(text, addBOS, special)
}

// Piece returns the bytes token t stands for: empty for control tokens and invalid
// ids. A piece may be part of a multi-byte character; use a TextStream to turn a
// stream of tokens into whole characters. The caller must not modify the result.
func (m *Model) Piece(t Token) []byte {
	if !m.ValidToken(t) {
		return nil
	}
	return m.pieces[t]
}

// Detokenize concatenates the pieces of tokens. SentencePiece vocabularies mark a
// word start with a space, so text tokenized from the start of a sequence comes back
// with one leading space; Detokenize keeps it, so that detokenizing consecutive runs
// of tokens and concatenating gives the detokenization of the whole.
func (m *Model) Detokenize(tokens []Token) string {
	var b []byte
	for _, t := range tokens {
		b = append(b, m.Piece(t)...)
	}
	return string(b)
}

// DetokenizeSpecial is Detokenize with control tokens spelled out ("<|im_start|>"
// rather than nothing): text that TokenizeSpecial turns back into the same
// control tokens, in this model's vocabulary or in another that spells them
// alike. For trusted text only (a committed sequence crossing vocabularies).
func (m *Model) DetokenizeSpecial(tokens []Token) string {
	var b []byte
	for _, t := range tokens {
		if m.ValidToken(t) && m.ctrl[t] {
			b = append(b, m.spell[t]...)
			continue
		}
		b = append(b, m.Piece(t)...)
	}
	return string(b)
}

// VocabOnly reports whether m was loaded with ModelOptions.VocabOnly.
func (m *Model) VocabOnly() bool { return m.vocabOK }

// ChatMessage is one turn of a conversation.
type ChatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// FormatChat renders messages as a prompt with the model's chat template, ready for
// TokenizeSpecial, and reports whether the template was used. llama.cpp renders
// the templates it knows by their format alone, so the one thing a template's
// own code adds, a fixed system turn when the conversation has none (Qwen2.5's
// "You are Qwen, created by Alibaba Cloud..."), is added here, as the template's
// Jinja (and llama-server) would (see defaultSystemTurn). A model without a
// template, or with one llama.cpp does not know, gets a plain fallback: each message
// on its own line as "role: content", then "assistant:" when addAssistant is set.
func (m *Model) FormatChat(msgs []ChatMessage, addAssistant bool) (prompt string, templated bool) {
	if m.info.ChatTemplate != "" {
		if sys := defaultSystemTurn(m.info.ChatTemplate); sys != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]ChatMessage{{Role: "system", Content: sys}}, msgs...)
		}
		roles, contents := make([]string, len(msgs)), make([]string, len(msgs))
		for i, msg := range msgs {
			roles[i], contents[i] = msg.Role, msg.Content
		}
		if s, ok := applyChatTemplate(m.info.ChatTemplate, roles, contents, addAssistant); ok {
			return s, true
		}
	}
	var b []byte
	for _, msg := range msgs {
		b = append(b, msg.Role...)
		b = append(b, ": "...)
		b = append(b, msg.Content...)
		b = append(b, '\n')
	}
	if addAssistant {
		b = append(b, "assistant:"...)
	}
	return string(b), false
}

// defaultTurn finds, in a ChatML template's source, a system turn written as one
// fixed string: '<|im_start|>system\n...<|im_end|>\n', what Qwen2.5's template
// writes when the first message is not a system message. A turn that splices in
// a message ('<|im_start|>system\n' + messages[0]['content'] + ...) ends its
// string before the <|im_end|> and does not match.
var defaultTurn = regexp.MustCompile(`'<\|im_start\|>system\\n((?:[^'\\]|\\.)+?)<\|im_end\|>\\n'`)

// defaultSystemTurn is the content of the fixed system turn tmpl writes when a
// conversation has none, or "".
func defaultSystemTurn(tmpl string) string {
	m := defaultTurn.FindStringSubmatch(tmpl)
	if m == nil {
		return ""
	}
	return strings.NewReplacer(`\n`, "\n", `\'`, "'", `\\`, `\`).Replace(m[1])
}

// MaxDefaultSlotContext caps Model.DefaultSlotContext.
const MaxDefaultSlotContext = 4096

// DefaultSlotContext is the context one sequence gets when none is configured:
// the model's training context, at most MaxDefaultSlotContext (2048 when the model
// does not say). Real models train on 32K positions and more; a KV cache that long
// for every slot would take gigabytes per slot, for requests that rarely need it.
func (m *Model) DefaultSlotContext() int {
	if m.info.ContextTrain <= 0 {
		return 2048
	}
	return min(m.info.ContextTrain, MaxDefaultSlotContext)
}

// DefaultThreads is the thread count for a large model: every core, at most 8
// (more rarely helps a single decode).
func DefaultThreads() int { return min(runtime.NumCPU(), 8) }

// SmallModelParams is the size below which a model's contexts default to one
// thread.
const SmallModelParams = 50_000_000

// DefaultThreads is the thread count a Context on m uses when none is configured:
// one for models under SmallModelParams, else the package's DefaultThreads. A
// llama.cpp decode synchronises its threads after every operation; a small model's
// operations are so short that the synchronisation dominates, and when the cores
// are shared with other work a waiting thread can lose its core for a scheduler
// time slice at every one of them. Measured on the 2-core dev box with another
// process busy: stories260k, 5 tokens per pass, 0.5-0.8 ms with one thread against
// 280-630 ms with two.
func (m *Model) DefaultThreads() int {
	if m.info.Params < SmallModelParams {
		return 1
	}
	return DefaultThreads()
}
