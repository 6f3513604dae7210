package engine

// The cgo boundary. Everything that calls into llama.cpp lives in this file so the
// rest of the package is plain Go. llama.cpp is compiled and linked by
// github.com/ollama/ollama/llama (pinned in go.mod); this file includes llama.h
// from that module (the Makefile puts its include directories on CGO_CPPFLAGS) and
// calls the C API directly, because the ollama wrapper cannot free a context, copies
// the whole vocabulary for every logits row, and gives no control over the KV cache
// layout that ragged multi-sequence batches need (see newContext).

/*
#include <stdio.h>
#include <stdlib.h>
#include "llama.h"
#include "ggml-cpu.h"

// sled_threadpool_attach gives a context its own ggml threadpool of n threads
// (the calling thread is one of them) for every pass, small or large. Without
// one, ggml creates and joins n-1 threads for every graph it computes. poll 0:
// between passes the workers sleep on a condition variable instead of
// spinning, so an idle context leaves the cores to the rest of the process
// (on 2 cores the messaging, HTTP and batching goroutines).
static struct ggml_threadpool * sled_threadpool_attach(struct llama_context * c, int n) {
	struct ggml_threadpool_params p = ggml_threadpool_params_default(n);
	p.poll = 0;
	struct ggml_threadpool * tp = ggml_threadpool_new(&p);
	if (tp != NULL) {
		llama_attach_threadpool(c, tp, tp);
	}
	return tp;
}

// llama.cpp logs through one process-wide callback. SLED keeps errors and, when
// asked, everything; warnings about harmless settings (a unified KV cache larger
// than the training context, say) and model-loading progress dots stay quiet.
static int sled_log_verbose = 0;

static void sled_log(enum ggml_log_level level, const char * text, void * user_data) {
	(void)user_data;
	if (sled_log_verbose || level == GGML_LOG_LEVEL_ERROR) {
		fputs(text, stderr);
	}
}

static void sled_log_init(int verbose) {
	sled_log_verbose = verbose;
	llama_log_set(sled_log, NULL);
}

static bool sled_quiet_progress(float progress, void * user_data) {
	(void)progress; (void)user_data;
	return true;
}

static void sled_quiet_loading(struct llama_model_params * p) {
	p->progress_callback = sled_quiet_progress;
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"unsafe"

	"github.com/ollama/ollama/llama"
)

var backendOnce sync.Once

// initBackend loads the ggml backends once per process and routes llama.cpp's log:
// everything when the default slog logger is at debug level, else errors only.
func initBackend() {
	backendOnce.Do(func() {
		fixMmapThreshold() // before llama.cpp allocates: see memory.go
		llama.BackendInit()
		verbose := 0
		if slog.Default().Enabled(context.Background(), slog.LevelDebug) {
			verbose = 1
		}
		C.sled_log_init(C.int(verbose))
	})
}

type cModel struct {
	m     *C.struct_llama_model
	vocab *C.struct_llama_vocab
}

func loadCModel(path string, gpuLayers int, mmap, vocabOnly bool) (*cModel, error) {
	initBackend()
	beginWork()
	defer endWork()
	p := C.llama_model_default_params()
	p.n_gpu_layers = C.int32_t(gpuLayers)
	p.use_mmap = C.bool(mmap)
	p.vocab_only = C.bool(vocabOnly)
	C.sled_quiet_loading(&p)
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	m := C.llama_model_load_from_file(cpath, p)
	if m == nil {
		return nil, fmt.Errorf("llama.cpp could not load %s (run with --log-level info for its reason)", path)
	}
	return &cModel{m: m, vocab: C.llama_model_get_vocab(m)}, nil
}

func (cm *cModel) free() {
	beginWork()
	defer endWork()
	C.llama_model_free(cm.m)
}

type cFacts struct {
	nVocab, nCtxTrain, nLayer, nEmbd int
	nParams, size                    uint64
	bos, eos                         Token
	addBOS                           bool
	desc, chatTemplate               string
}

func (cm *cModel) facts() cFacts {
	f := cFacts{
		nVocab:    int(C.llama_vocab_n_tokens(cm.vocab)),
		nCtxTrain: int(C.llama_model_n_ctx_train(cm.m)),
		nLayer:    int(C.llama_model_n_layer(cm.m)),
		nEmbd:     int(C.llama_model_n_embd(cm.m)),
		nParams:   uint64(C.llama_model_n_params(cm.m)),
		size:      uint64(C.llama_model_size(cm.m)),
		bos:       Token(C.llama_vocab_bos(cm.vocab)),
		eos:       Token(C.llama_vocab_eos(cm.vocab)),
		addBOS:    bool(C.llama_vocab_get_add_bos(cm.vocab)),
	}
	buf := make([]byte, 256)
	if n := C.llama_model_desc(cm.m, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf))); n > 0 {
		f.desc = string(buf[:min(int(n), len(buf)-1)])
	}
	if t := C.llama_model_chat_template(cm.m, nil); t != nil {
		f.chatTemplate = C.GoString(t)
	}
	return f
}

func (cm *cModel) isEOG(t Token) bool { return bool(C.llama_vocab_is_eog(cm.vocab, C.llama_token(t))) }

func (cm *cModel) isControl(t Token) bool {
	return bool(C.llama_vocab_is_control(cm.vocab, C.llama_token(t)))
}

// tokenize converts text to tokens. parseSpecial lets text name control tokens such as
// "<s>"; it is off for user text so a prompt cannot forge them.
func (cm *cModel) tokenize(text string, addSpecial, parseSpecial bool) ([]Token, error) {
	if len(text) > 1<<30 {
		return nil, errors.New("text too long to tokenize")
	}
	beginWork()
	defer endWork()
	ctext := C.CString(text)
	defer C.free(unsafe.Pointer(ctext))
	out := make([]Token, len(text)+2)
	call := func() int {
		return int(C.llama_tokenize(cm.vocab, ctext, C.int32_t(len(text)),
			(*C.llama_token)(unsafe.Pointer(&out[0])), C.int32_t(len(out)),
			C.bool(addSpecial), C.bool(parseSpecial)))
	}
	n := call()
	if n < 0 {
		out = make([]Token, -n)
		if n = call(); n < 0 {
			return nil, fmt.Errorf("tokenize: llama.cpp needs %d tokens", -n)
		}
	}
	return out[:n], nil
}

// piece is the text of one token; control tokens render as nothing unless
// special is set (then as their spelling).
func (cm *cModel) piece(t Token, special bool) []byte {
	buf := make([]byte, 32)
	for {
		n := int(C.llama_token_to_piece(cm.vocab, C.llama_token(t),
			(*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), 0, C.bool(special)))
		if n >= 0 {
			return buf[:n]
		}
		buf = make([]byte, -n)
	}
}

// applyChatTemplate formats messages with a built-in llama.cpp template (tmpl may be
// the model's own template text or a template name). It reports false when llama.cpp
// does not recognise the template.
func applyChatTemplate(tmpl string, roles, contents []string, addAssistant bool) (string, bool) {
	if len(roles) == 0 {
		return "", false
	}
	var pins []unsafe.Pointer
	defer func() {
		for _, p := range pins {
			C.free(p)
		}
	}()
	cstr := func(s string) *C.char {
		p := C.CString(s)
		pins = append(pins, unsafe.Pointer(p))
		return p
	}
	msgs := (*[1 << 20]C.struct_llama_chat_message)(C.malloc(C.size_t(len(roles)) * C.size_t(unsafe.Sizeof(C.struct_llama_chat_message{}))))[:len(roles):len(roles)]
	pins = append(pins, unsafe.Pointer(&msgs[0]))
	total := 0
	for i := range roles {
		msgs[i].role = cstr(roles[i])
		msgs[i].content = cstr(contents[i])
		total += len(roles[i]) + len(contents[i])
	}
	ctmpl := cstr(tmpl)
	size := 2*total + 256
	for range 2 {
		buf := make([]byte, size)
		n := int(C.llama_chat_apply_template(ctmpl, &msgs[0], C.size_t(len(msgs)), C.bool(addAssistant),
			(*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf))))
		if n < 0 {
			return "", false
		}
		if n <= len(buf) {
			return string(buf[:n]), true
		}
		size = n
	}
	return "", false
}

// cContext is a llama_context plus the batch buffer its decodes reuse.
type cContext struct {
	c      *C.struct_llama_context
	tp     *C.struct_ggml_threadpool // nil: ggml's per-pass threads
	batch  C.struct_llama_batch
	nBatch int
}

// newContext creates a context whose KV cache is one unified buffer shared by all
// sequences (or, with separateKV, a stream per sequence). Unified is what makes a
// ragged batch one forward pass: with a cache stream per sequence llama.cpp splits a
// batch into micro-batches of equal length over consecutive sequences, so drafts of
// different lengths would cost several passes.
func newContext(cm *cModel, nCtx, nBatch, nSeq, threads int, flash, separateKV bool, kvType string, pool bool) (*cContext, error) {
	beginWork()
	defer endWork()
	p := C.llama_context_default_params()
	p.n_ctx = C.uint32_t(nCtx)
	p.n_batch = C.uint32_t(nBatch)
	p.n_ubatch = C.uint32_t(nBatch)
	p.n_seq_max = C.uint32_t(nSeq)
	p.n_threads = C.int32_t(threads)
	p.n_threads_batch = C.int32_t(threads)
	p.embeddings = false
	p.no_perf = true
	p.kv_unified = C.bool(!separateKV)
	if flash {
		// Auto: flash attention on every layer whose backend device supports it.
		p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_AUTO
	} else {
		p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
	}
	switch kvType {
	case "", "f16":
		p.type_k, p.type_v = C.GGML_TYPE_F16, C.GGML_TYPE_F16
	case "f32":
		p.type_k, p.type_v = C.GGML_TYPE_F32, C.GGML_TYPE_F32
	case "q8_0":
		p.type_k, p.type_v = C.GGML_TYPE_Q8_0, C.GGML_TYPE_Q8_0
	default:
		return nil, fmt.Errorf("unknown KV cache type %q (want f16, f32 or q8_0)", kvType)
	}
	c := C.llama_init_from_model(cm.m, p)
	if c == nil {
		return nil, errors.New("llama.cpp could not create a context (out of memory, or sizes the model rejects)")
	}
	n := int(C.llama_n_batch(c))
	// A persistent threadpool: on the smollm-135m shape (2-core AMD EPYC, 2
	// threads) a one-token pass takes 4.6-5.1 ms with it and 5.4-5.7 ms with
	// ggml's per-pass threads; on the Qwen 1.5B, 21.4-24.6 ms against 21.9-25.1
	// (BenchmarkDecodeThreadpool). If ggml cannot make one, passes still run.
	var tp *C.struct_ggml_threadpool
	if pool {
		tp = C.sled_threadpool_attach(c, C.int(threads))
	}
	return &cContext{c: c, tp: tp, batch: C.llama_batch_init(C.int32_t(n), 0, 1), nBatch: n}, nil
}

func (cc *cContext) free() {
	beginWork()
	defer endWork()
	C.llama_batch_free(cc.batch)
	C.llama_free(cc.c)
	if cc.tp != nil {
		C.ggml_threadpool_free(cc.tp)
	}
}

func (cc *cContext) nCtx() int { return int(C.llama_n_ctx(cc.c)) }

// decode runs one forward pass over entries (already validated by the caller).
func (cc *cContext) decode(entries []Entry) (int, error) {
	beginWork()
	defer endWork()
	n := len(entries)
	tok := unsafe.Slice(cc.batch.token, cc.nBatch)
	pos := unsafe.Slice(cc.batch.pos, cc.nBatch)
	nseq := unsafe.Slice(cc.batch.n_seq_id, cc.nBatch)
	seq := unsafe.Slice(cc.batch.seq_id, cc.nBatch)
	logits := unsafe.Slice(cc.batch.logits, cc.nBatch)
	for i, e := range entries {
		tok[i] = C.llama_token(e.Token)
		pos[i] = C.llama_pos(e.Pos)
		nseq[i] = 1
		*seq[i] = C.llama_seq_id(e.Seq)
		if e.Logits {
			logits[i] = 1
		} else {
			logits[i] = 0
		}
	}
	cc.batch.n_tokens = C.int32_t(n)
	return int(C.llama_decode(cc.c, cc.batch)), nil
}

// logitsRow is a view of the logits of batch index i inside llama.cpp's output
// buffer; it is valid until the next decode on the context.
func (cc *cContext) logitsRow(i, nVocab int) []float32 {
	p := C.llama_get_logits_ith(cc.c, C.int32_t(i))
	if p == nil {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), nVocab)
}

// seqRemove drops seq's KV entries at positions >= from (all of them when from <= 0).
func (cc *cContext) seqRemove(seq, from int) bool {
	if from <= 0 {
		from = -1
	}
	return bool(C.llama_memory_seq_rm(C.llama_get_memory(cc.c), C.llama_seq_id(seq), C.llama_pos(from), -1))
}

// seqSave serialises seq's cells (llama.cpp's per-sequence state) into buf,
// grown as needed, and returns it. Copying cells between KV streams this way
// costs the cells seq holds; llama.cpp's own cross-stream copy moves whole
// streams.
func (cc *cContext) seqSave(seq int, buf []byte) ([]byte, error) {
	size := int(C.llama_state_seq_get_size(cc.c, C.llama_seq_id(seq)))
	if size <= 0 {
		return buf, fmt.Errorf("llama.cpp reports no state for slot %d", seq)
	}
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	p := (*C.uint8_t)(unsafe.Pointer(&buf[0]))
	if got := int(C.llama_state_seq_get_data(cc.c, p, C.size_t(size), C.llama_seq_id(seq))); got != size {
		return buf, fmt.Errorf("llama.cpp wrote %d of %d state bytes of slot %d", got, size, seq)
	}
	return buf, nil
}

// seqLoad replaces seq's cells with those seqSave wrote into buf. (Reading a
// state with no cells leaves the destination as it was, so it is emptied first.)
func (cc *cContext) seqLoad(seq int, buf []byte) error {
	C.llama_memory_seq_rm(C.llama_get_memory(cc.c), C.llama_seq_id(seq), -1, -1)
	p := (*C.uint8_t)(unsafe.Pointer(&buf[0]))
	if got := int(C.llama_state_seq_set_data(cc.c, p, C.size_t(len(buf)), C.llama_seq_id(seq))); got != len(buf) {
		return fmt.Errorf("llama.cpp read %d of %d state bytes into slot %d", got, len(buf), seq)
	}
	return nil
}

// seqSwap exchanges the cells of sequences a and b (seqSave both, seqLoad each
// into the other), reusing bufs.
func (cc *cContext) seqSwap(a, b int, bufs [2][]byte) ([2][]byte, error) {
	beginWork()
	defer endWork()
	var err error
	if bufs[0], err = cc.seqSave(a, bufs[0]); err != nil {
		return bufs, err
	}
	if bufs[1], err = cc.seqSave(b, bufs[1]); err != nil {
		return bufs, err
	}
	if err := cc.seqLoad(a, bufs[1]); err != nil {
		return bufs, err
	}
	return bufs, cc.seqLoad(b, bufs[0])
}

// seqCopy makes dst hold src's cells at positions below n (dst's own cells are
// dropped first; src is unchanged). In a unified cache that is bookkeeping
// (cells shared by both sequences); with a stream per sequence the cells go
// through buf (seqSave, seqLoad), which is returned for reuse.
func (cc *cContext) seqCopy(src, dst, n int, separate bool, buf []byte) ([]byte, error) {
	beginWork()
	defer endWork()
	mem := C.llama_get_memory(cc.c)
	C.llama_memory_seq_rm(mem, C.llama_seq_id(dst), -1, -1)
	if n <= 0 {
		return buf, nil
	}
	if !separate {
		C.llama_memory_seq_cp(mem, C.llama_seq_id(src), C.llama_seq_id(dst), 0, C.llama_pos(n))
		return buf, nil
	}
	buf, err := cc.seqSave(src, buf)
	if err != nil {
		return buf, err
	}
	if err := cc.seqLoad(dst, buf); err != nil {
		return buf, err
	}
	C.llama_memory_seq_rm(mem, C.llama_seq_id(dst), C.llama_pos(n), -1)
	return buf, nil
}

// seqPosMax is the largest position of seq in the KV cache, or -1 when it has none.
func (cc *cContext) seqPosMax(seq int) int {
	return int(C.llama_memory_seq_pos_max(C.llama_get_memory(cc.c), C.llama_seq_id(seq)))
}

// quantizeFile writes src's weights requantized to ftype into dst with llama.cpp's
// own quantizer (allowing already-quantized sources). It returns llama.cpp's status:
// 0 on success.
func quantizeFile(src, dst string, ftype, threads int) int {
	initBackend()
	beginWork()
	defer endWork()
	p := C.llama_model_quantize_default_params()
	p.nthread = C.int32_t(threads)
	p.ftype = C.enum_llama_ftype(ftype)
	p.allow_requantize = true
	cs, cd := C.CString(src), C.CString(dst)
	defer C.free(unsafe.Pointer(cs))
	defer C.free(unsafe.Pointer(cd))
	return int(C.llama_model_quantize(cs, cd, &p))
}
