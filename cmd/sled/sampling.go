package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
)

// samplingCmd is `sled bench sampling`: acceptance and speed of each
// speculative sampling mode, and coupled sampling against the target's own
// seeded sample.
func samplingCmd() *cobra.Command {
	var (
		promptsPath, jsonPath, pairName, target, draft, models string
		temps                                                  []float32
		modes                                                  []string
		maxTokens, threads, topK                               int
		seed                                                   uint64
	)
	cmd := &cobra.Command{
		Use:   "sampling",
		Short: "Measure acceptance and tokens/s of each sampling mode (point, topk, coupled) at each temperature",
		Long: "sampling serves every prompt on one SLED device (sled up in this process, static draft length) at\n" +
			"each --temperature in every --mode back to back, and the target alone's coupled sample of the\n" +
			"prompt for the same seed (one token per pass: the reference and the single-stream baseline).\n" +
			"It reports, per temperature, mode and prompt kind, accepted tokens per round, the acceptance\n" +
			"rate and tokens/s, and for coupled sampling whether each text is the target's own sample\n" +
			"(identical, or parted at a near-tie). It fails when a coupled text parts with a clear margin.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pair, ok := modelcache.LookupPair(pairName)
			if !ok {
				return fmt.Errorf("--pair %q: want qwen or tiny", pairName)
			}
			for _, m := range modes {
				if m != textgen.SamplingPoint && m != textgen.SamplingTopK && m != textgen.SamplingCoupled {
					return fmt.Errorf("--mode %q: want point, topk or coupled", m)
				}
			}
			cfg := bench.SamplingConfig{
				Target: target, Draft: draft, Chat: pair.Chat, Temperatures: temps, Modes: modes, DraftTopK: topK,
				MaxTokens: maxTokens, Seed: seed, Threads: threads,
				Find:     services.FindOptions{Dir: models, Progress: os.Stderr},
				Progress: cmd.ErrOrStderr(), Logger: slog.Default(),
			}
			if cfg.Target == "" {
				cfg.Target = pair.Target
			}
			if cfg.Draft == "" {
				cfg.Draft = pair.Drafts[0]
			}
			ps, err := benchPrompts(promptsPath, pair)
			if err != nil {
				return err
			}
			cfg.Prompts = ps
			r, err := bench.RunSampling(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			r.Command = "sled " + strings.Join(os.Args[1:], " ")
			r.Print(cmd.OutOrStdout())
			if jsonPath != "" {
				if err := r.WriteJSON(jsonPath); err != nil {
					return err
				}
			}
			bad := 0
			for _, row := range r.Result.(*bench.SamplingResult).Rows {
				bad += row.Unexplained
			}
			if bad > 0 {
				return fmt.Errorf("%d coupled texts part from the target's sample with a clear margin", bad)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&promptsPath, "prompts", "", "prompt file as for `sled bench lossless` (default: its 4 code and 4 prose prompts)")
	f.Float32SliceVar(&temps, "temperature", []float32{0.7, 1}, "temperatures, comma-separated")
	f.StringSliceVar(&modes, "mode", []string{textgen.SamplingPoint, textgen.SamplingTopK, textgen.SamplingCoupled}, "sampling modes: point, topk, coupled")
	f.IntVar(&topK, "draft-top-k", textgen.DefaultDraftTopK, "draft distribution size in topk mode")
	f.IntVar(&maxTokens, "max-tokens", 64, "tokens generated per prompt")
	f.Uint64Var(&seed, "seed", 1, "seed of the first prompt (prompt i: seed+i)")
	f.StringVar(&jsonPath, "json", "", "write the report as JSON to this file")
	f.StringVar(&pairName, "pair", modelcache.DefaultPair, "model pair: qwen or tiny")
	f.StringVar(&target, "target", "", "target model (default: the pair's)")
	f.StringVar(&draft, "draft", "", "draft model of the device (default: the pair's first)")
	f.StringVar(&models, "models", "", "model directory (default $SLED_MODEL_DIR or ../shared/models)")
	f.IntVar(&threads, "threads", 0, "llama.cpp threads of the reference and the verifier (default all cores, at most 8)")
	return cmd
}
