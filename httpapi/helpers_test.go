package httpapi_test

import (
	"context"
	"testing"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/textgen"
)

type textgenChunk = textgen.Chunk

func textgenRequest(prompt []engine.Token, n int) textgen.Request {
	return textgen.Request{Prompt: prompt, MaxTokens: n}
}

// mustGenerate is the target's greedy continuation of prompt, n tokens long.
func mustGenerate(t *testing.T, prompt []engine.Token, n int) []engine.Token {
	t.Helper()
	res, err := newGreedyGen(t, 0).Generate(context.Background(), textgenRequest(prompt, n), func(textgen.Chunk) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return res.Tokens
}
