package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/drafter"
)

func init() {
	b := benchCmd()
	b.AddCommand(losslessCmd(), samplingCmd(), loadCmd(), soakCmd())
	rootCmd.AddCommand(b)
}

// benchCmd is `sled bench <experiment>`: the paper's measurements on this machine.
func benchCmd() *cobra.Command {
	var (
		o          bench.Options
		jsonPath   string
		profiles   string
		threshold  float32
		maxLen     int
		batchSize  int
		batchWait  time.Duration
		noProgress bool
	)
	cmd := &cobra.Command{
		Use:   "bench EXPERIMENT",
		Short: "Measure SLED like the paper: " + strings.Join(bench.Experiments, ", "),
		Long: "bench runs one experiment against the real batcher and verifier over an embedded NATS server,\n" +
			"with simulated devices (Poisson draft sources at a device profile's rate, drafts built to follow\n" +
			"the acceptance measured on a real draft/target pair) and the centralized baseline in the same run.\n\n" +
			"Experiments:\n" +
			"  capacity   largest fleet in which every device gets --rate tokens/s, SLED vs centralized (Table I)\n" +
			"  wstgr      whole-system tokens/s vs batch size, SLED vs centralized vs edge-only (Fig. 4)\n" +
			"  speclen    per-device tokens/s vs speculative length and confidence threshold (Fig. 5)\n" +
			"  cost       $ per 1K tokens vs throughput for F16/Q8_0/Q4_0 targets, Pareto front (Fig. 6)\n" +
			"  transport  share of a round spent in model compute vs NATS/events/batching\n" +
			"  device     this machine's draft rate (a measured device profile)\n" +
			"  workers    verified tokens/s with 1, 2 and 3 verifier workers, and the simulator's projection for N GPU workers\n\n" +
			"Device profiles (--profile):\n" + profileHelp(),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if profiles != "" {
				o.Profiles = strings.Split(profiles, ",")
			}
			if cmd.Flags().Changed("threshold") || cmd.Flags().Changed("max-draft") {
				o.Policy = drafter.DraftPolicy{Threshold: threshold, Fixed: threshold == 0, MaxLen: maxLen}
			}
			o.Batch = batcher.Policy{Size: batchSize, MaxWait: batchWait, SLO: o.Batch.SLO}
			o.Progress = !noProgress
			o.Logger = slog.Default()
			r, err := bench.Run(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			r.Command = "sled " + strings.Join(os.Args[1:], " ")
			r.Print(cmd.OutOrStdout())
			if c, ok := r.Result.(*bench.CapacityResult); ok {
				fmt.Fprintf(cmd.OutOrStdout(), "\nSLED capacity %d, centralized capacity %d, ratio %.2f\n", c.SLED, c.Centralized, c.Ratio)
			}
			if jsonPath != "" {
				return r.WriteJSON(jsonPath)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Quick, "quick", false, "CI-sized sweeps and short trials")
	f.StringVar(&jsonPath, "json", "", "write the report as JSON to this file")
	f.StringVar(&o.PlotDir, "plot", "", "write PNG plots into this directory")
	f.StringVar(&o.ModelDir, "models", "", "directory of the shared models (default $SLED_MODEL_DIR or ../shared/models)")
	f.StringVar(&o.Pair, "pair", "", "qwen (the real 1.5B target, acceptance of the 0.5B on it) or tiny (a synthetic --shape target, acceptance of the stories pair); default qwen when `make models` has fetched it")
	f.StringVar(&o.Shape, "shape", "smollm-135m", "tiny pair: synthetic target shape (see `sled model shapes`)")
	f.StringVar(&o.Type, "type", "", "target weight type: tiny pair F16 (default), Q8_0 or Q4_0; qwen pair Q4_K_M (default, as fetched), Q8_0, Q4_0, ...")
	f.StringVar(&o.Draft, "draft", "stories260k-draft-4L.gguf", "tiny pair: draft model (in --models) whose agreement with stories260k.gguf drives the drafts")
	f.StringVar(&profiles, "profile", "", "device profiles, comma-separated (default rpi4b; capacity: all)")
	f.Float64Var(&o.ProfileRate, "profile-rate", 0, "override the profiles' draft tokens/s")
	f.Float64Var(&o.Required, "rate", 5, "tokens/s every device must get (capacity)")
	f.Float32Var(&threshold, "threshold", drafter.DefaultThreshold, "drafting confidence threshold θ (0: fixed length --max-draft)")
	f.IntVar(&maxLen, "max-draft", drafter.DefaultMaxLen, "most draft tokens per round")
	f.IntVar(&batchSize, "batch-size", bench.DefaultBatch.Size, "batcher: static batch size")
	f.DurationVar(&batchWait, "max-wait", bench.DefaultBatch.MaxWait, "batcher: close a batch when its oldest draft waited this long")
	f.DurationVar(&o.Warmup, "warmup", 0, "trial warm-up, not measured (default 1s, quick 0.5s)")
	f.DurationVar(&o.Duration, "duration", 0, "trial measuring window (default 4s, quick 1.5s)")
	f.IntVar(&o.MaxDevices, "max-devices", 0, "capacity search bound (default 256)")
	f.BoolVar(&o.Budget.Static, "static-length", false, "no draft budgets: every device drafts by its own policy (the paper's fixed speculation length)")
	f.IntSliceVar(&o.Fleets, "devices", nil, "wstgr: fleet sizes to measure (batch size = devices; default 1,2,4,8,16,32)")
	f.IntVar(&o.Repeats, "repeats", 1, "wstgr: measure each fleet size this many times, the systems' order alternating, and report the ratio of the means with the repeats' range")
	f.Float64Var(&o.PassTokens, "pass-tokens", 0, "verifier with a KV stream per slot (the default): what one micro-batch costs beyond its tokens, in tokens, when deciding to pad a ragged pass (0: the engine's default, 4)")
	f.DurationVar(&o.GatherMax, "gather-max", 0, "verifier: longest wait of a free worker for the rounds it expects back to join its pass (0: the worker's default, 50ms; negative: never wait)")
	f.BoolVar(&o.UnifiedKV, "unified-kv", false, "verifier: one KV cache for all slots instead of a stream per slot")
	var separate bool
	f.BoolVar(&separate, "separate-kv", true, "verifier: a KV stream per slot (now the default; kept so that older commands run)")
	_ = f.MarkDeprecated("separate-kv", "a KV stream per slot is the default; --unified-kv selects the other layout")
	f.BoolVar(&o.NoStatic, "no-static", false, "capacity, wstgr: skip the static-length SLED measured beside the budgeted one")
	f.IntVar(&o.Budget.MaxBudget, "max-budget", 0, "goodput policy: largest draft budget (default 8)")
	f.Float64Var(&o.TPOTMs, "tpot", 0, "every device's latency objective, ms per output token (0: none)")
	f.IntVar(&o.ServerRounds, "server-rounds", 0, "devices: most rounds in a row the verifier runs on a device's behalf while its draft budget is 0 (0: the default, 256; negative: none)")
	f.BoolVar(&o.Batch.SLO, "slo-batching", false, "batcher: SLO-aware batching (close a batch when waiting longer would make a device miss its objective)")
	f.Float64SliceVar(&o.Rates, "rates", nil, "capacity: required per-device rates (tokens/s) for a capacity curve, comma-separated")
	f.IntVar(&o.Threads, "threads", 0, "server llama.cpp threads (default all cores)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the simulated devices")
	f.BoolVar(&noProgress, "no-progress", false, "no progress bar (it is drawn only on a terminal anyway)")
	return cmd
}

func profileHelp() string {
	var b strings.Builder
	for _, p := range bench.Profiles() {
		fmt.Fprintf(&b, "  %-17s %5.0f tok/s  %4.1f W  $%3.0f  %s\n", p.Name, p.TokensPerSec, p.PowerW, p.PriceUSD, p.Device)
	}
	b.WriteString("  (estimates, not measurements: see bench/profile.go and docs/benchmarks.md)")
	return b.String()
}
