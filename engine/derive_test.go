package engine

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sled-project/sled/engine/gguf"
	"github.com/sled-project/sled/internal/testmodels"
)

// TestDerivedDraftAgreement derives a 4-block draft from the target with the
// project's own tooling and measures, teacher-forced on the target's greedy
// continuations of five prompts, how often the draft predicts the target's next
// token. The shared models' README reports about 0.51 for this pair.
func TestDerivedDraftAgreement(t *testing.T) {
	target := load(t, testmodels.Target)
	dst := filepath.Join(t.TempDir(), "draft-4L.gguf")
	if _, err := gguf.Derive(testmodels.Path(t, testmodels.Target), dst, gguf.DeriveOptions{Layers: 4}); err != nil {
		t.Fatal(err)
	}
	draft, err := LoadModel(dst, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer draft.Close()
	if err := target.CheckCompatible(draft); err != nil {
		t.Fatal(err)
	}
	if draft.Info().Layers != 4 {
		t.Fatalf("derived draft has %d layers", draft.Info().Layers)
	}
	tc := newCtx(t, target, ContextOptions{})
	dc := newCtx(t, draft, ContextOptions{})
	agree, total := 0, 0
	for _, p := range []string{"Once upon a time", "One day, Lily", "Tom had a dog", "The sun was", "Mom and Dad"} {
		prompt, _ := target.Tokenize(p, true)
		tc.Clear(0)
		cont := greedy(t, tc, prompt, 100)
		seq := append(append([]Token(nil), prompt...), cont...)
		es := make([]Entry, len(seq)-1)
		for i := range es {
			es[i] = Entry{Seq: 0, Pos: i, Token: seq[i], Logits: i >= len(prompt)-1}
		}
		dc.Clear(0)
		rows, err := dc.Decode(context.Background(), es)
		if err != nil {
			t.Fatal(err)
		}
		for i, row := range rows {
			if Argmax(row) == cont[i] {
				agree++
			}
			total++
		}
	}
	rate := float64(agree) / float64(total)
	t.Logf("derive --layers 4: greedy agreement with the target %.3f (%d/%d positions)", rate, agree, total)
	if rate < 0.4 || rate > 0.6 {
		t.Fatalf("agreement %.3f, expected about 0.5", rate)
	}
}

// copyWithKV writes a copy of the target with edit applied to its metadata.
func copyWithKV(t *testing.T, name string, edit func([]gguf.KV) []gguf.KV) string {
	t.Helper()
	src, err := gguf.Open(testmodels.Path(t, testmodels.Target))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var tensors []gguf.WriteTensor
	for _, ti := range src.Tensors {
		name := ti.Name
		tensors = append(tensors, gguf.WriteTensor{Name: name, Type: ti.Type, Dims: ti.Dims, Data: func(w io.Writer) error {
			b, err := src.TensorData(name)
			if err != nil {
				return err
			}
			_, err = w.Write(b)
			return err
		}})
	}
	dst := filepath.Join(t.TempDir(), name)
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := gguf.Write(f, edit(append([]gguf.KV(nil), src.KV...)), tensors); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestChatTemplate gives the target a ChatML template: FormatChat must use it.
func TestChatTemplate(t *testing.T) {
	const chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
	p := copyWithKV(t, "chatml.gguf", func(kv []gguf.KV) []gguf.KV {
		return append(kv, gguf.KV{Key: "tokenizer.chat_template", Value: gguf.Value{Type: gguf.ValueString, Data: chatml}})
	})
	m, err := LoadModel(p, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got, templated := m.FormatChat([]ChatMessage{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Hi"}}, true)
	want := "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
	if !templated || got != want {
		t.Fatalf("FormatChat = %q (templated %v), want %q", got, templated, want)
	}
	plain, templated := load(t, testmodels.Target).FormatChat([]ChatMessage{{Role: "user", Content: "Hi"}}, true)
	if templated || plain != "user: Hi\nassistant:" {
		t.Fatalf("plain fallback %q (templated %v)", plain, templated)
	}
}

// TestChatTemplateDefaultSystemTurn gives the target Qwen2.5's way of writing a
// system turn: the conversation's own, else a fixed one. FormatChat adds the
// fixed one when the conversation has none, as the template's Jinja would, and
// leaves a conversation's own system turn alone.
func TestChatTemplateDefaultSystemTurn(t *testing.T) {
	const qwen = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}" +
		"{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You\\'re helpful.<|im_end|>\\n' }}{%- endif %}" +
		"{%- for message in messages %}{%- if message.role != 'system' or not loop.first %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}" +
		"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
	p := copyWithKV(t, "qwen-template.gguf", func(kv []gguf.KV) []gguf.KV {
		return append(kv, gguf.KV{Key: "tokenizer.chat_template", Value: gguf.Value{Type: gguf.ValueString, Data: qwen}})
	})
	m, err := LoadModel(p, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got, _ := m.FormatChat([]ChatMessage{{Role: "user", Content: "Hi"}}, true)
	want := "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You're helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
	if got != want {
		t.Fatalf("no system turn: FormatChat = %q, want %q", got, want)
	}
	got, _ = m.FormatChat([]ChatMessage{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Hi"}}, true)
	want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
	if got != want {
		t.Fatalf("own system turn: FormatChat = %q, want %q", got, want)
	}
}

// TestVocabMismatch loads a copy of the target whose tokenizer spells one token
// differently: it loads, but may not draft for the target.
func TestVocabMismatch(t *testing.T) {
	target := load(t, testmodels.Target)
	dst := copyWithKV(t, "other-vocab.gguf", func(kv []gguf.KV) []gguf.KV {
		for i, e := range kv {
			if e.Key == "tokenizer.ggml.tokens" {
				toks := append([]string(nil), e.Value.Data.([]string)...)
				toks[300] = "▁changed"
				kv[i].Value.Data = toks
			}
		}
		return kv
	})
	other, err := LoadModel(dst, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	err = target.CheckCompatible(other)
	if !errors.Is(err, ErrVocabMismatch) || !strings.Contains(err.Error(), "other-vocab.gguf") || !strings.Contains(err.Error(), testmodels.Target) {
		t.Fatalf("CheckCompatible = %v, want ErrVocabMismatch naming both models", err)
	}
	t.Log(err)
}
