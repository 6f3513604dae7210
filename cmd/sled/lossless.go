package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
)

// losslessCmd is `sled bench lossless`: SLED against the target alone, token for
// token.
func losslessCmd() *cobra.Command {
	var (
		promptsPath, jsonPath, pairName, target, models string
		drafts                                          []string
		maxTokens, threads                              int
		chat                                            string
		cross, every, static                            bool
	)
	cmd := &cobra.Command{
		Use:   "lossless",
		Short: "Check that SLED's greedy output is the target's own, prompt by prompt, with the margin of every difference",
		Long: "lossless serves every prompt with SLED (sled up in this process, one device per draft, one\n" +
			"request at a time) and with the target alone (one sequence, one token per forward pass), both\n" +
			"greedy, and reports per prompt whether the outputs are identical; where not, the first differing\n" +
			"position and the reference's top-2 logit gap there, so that a reader sees whether each\n" +
			"difference is a near-tie (llama.cpp's batched and single-token passes round differently).\n" +
			"--prompts FILE holds one prompt per line: a JSON string, or {\"prompt\": ..., \"kind\": ...}.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pair, ok := modelcache.LookupPair(pairName)
			if !ok {
				return fmt.Errorf("--pair %q: want qwen or tiny", pairName)
			}
			cfg := bench.LosslessConfig{
				Target: target, Drafts: drafts, MaxTokens: maxTokens, Threads: threads, Chat: pair.Chat,
				CrossVocab: cross, EveryDevice: every, Budget: goodput.Policy{Static: static},
				Find:     services.FindOptions{Dir: models, Progress: os.Stderr},
				Progress: cmd.ErrOrStderr(), Logger: slog.Default(),
			}
			if cfg.Target == "" {
				cfg.Target = pair.Target
			}
			if len(cfg.Drafts) == 0 {
				cfg.Drafts = pair.Drafts
			}
			switch chat {
			case "auto":
			case "on":
				cfg.Chat = true
			case "off":
				cfg.Chat = false
			default:
				return fmt.Errorf("--chat %q: want auto, on or off", chat)
			}
			ps, err := benchPrompts(promptsPath, pair)
			if err != nil {
				return err
			}
			cfg.Prompts = ps
			r, err := bench.RunLossless(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			r.Command = "sled " + strings.Join(os.Args[1:], " ")
			r.Print(cmd.OutOrStdout())
			res := r.Result.(*bench.LosslessResult)
			fmt.Fprintf(cmd.OutOrStdout(), "\n%d prompts: %d identical, %d near-ties, %d unexplained differences\n",
				len(res.Rows), res.Identical, res.NearTies, res.Unexplained)
			if jsonPath != "" {
				if err := r.WriteJSON(jsonPath); err != nil {
					return err
				}
			}
			if res.Unexplained > 0 {
				return fmt.Errorf("%d differences are not near-ties", res.Unexplained)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&promptsPath, "prompts", "", "prompt file, one JSON string or {\"prompt\",\"kind\"} object per line (default: 4 code and 4 prose prompts)")
	f.IntVar(&maxTokens, "max-tokens", 64, "tokens generated per prompt")
	f.StringVar(&jsonPath, "json", "", "write the report as JSON to this file")
	f.StringVar(&pairName, "pair", modelcache.DefaultPair, "model pair: qwen or tiny")
	f.StringVar(&target, "target", "", "target model (default: the pair's)")
	f.StringArrayVar(&drafts, "draft", nil, "draft model, repeatable: one device each (default: the pair's)")
	f.StringVar(&models, "models", "", "model directory (default $SLED_MODEL_DIR or ../shared/models)")
	f.IntVar(&threads, "threads", 0, "llama.cpp threads of the reference and the verifier (default all cores, at most 8)")
	f.BoolVar(&cross, "cross-vocab", false, "let drafts with another tokenizer draft across vocabularies (the device maps its text onto the target's tokens)")
	f.BoolVar(&static, "static-length", false, "devices draft by their own policy (the paper's fixed length) instead of the server's draft budgets: for acceptance figures")
	f.BoolVar(&every, "every-device", false, "serve every prompt on every device (compare drafts on the same prompts)")
	f.StringVar(&chat, "chat", "auto", "format prompts as a chat user turn: auto (the pair's instruct models do), on, off")
	return cmd
}

// benchPrompts are the prompts of a lossless or sampling run: the file's when
// one is given, else the tiny pair's stories (as prose), else nil (the
// experiment's defaults: 4 code and 4 prose chat prompts).
func benchPrompts(path string, pair modelcache.Pair) ([]bench.Prompt, error) {
	if path != "" {
		return bench.ReadPrompts(path)
	}
	if pair.Name != modelcache.PairTiny {
		return nil, nil
	}
	var out []bench.Prompt
	for _, p := range bench.DefaultPrompts {
		out = append(out, bench.Prompt{Text: p, Kind: "prose"})
	}
	return out, nil
}
