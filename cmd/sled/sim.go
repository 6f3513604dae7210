package main

import (
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/bench"
)

func init() { rootCmd.AddCommand(simCmd()) }

// simCmd is `sled sim`: the discrete-event model of SLED, calibrated and validated
// on this machine, then run at fleet and server sizes this machine cannot reach.
func simCmd() *cobra.Command {
	var (
		o          bench.Options
		jsonPath   string
		profiles   string
		batchSize  int
		batchWait  time.Duration
		noProgress bool
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate SLED and the centralized baseline at fleet sizes and on servers beyond this machine",
		Long: "sim fits a forward-pass cost model (tokens, sequences and KV cells in use) to passes of the target\n" +
			"timed here, calibrates messaging from the server timing of a measured one-device round and the\n" +
			"centralized step from a measured one-client run, checks the simulator against measured runs at the\n" +
			"sizes both can do (the error is reported), and then searches the capacity of SLED and the centralized\n" +
			"baseline for this CPU and for assumed A100/H100 servers (the GPU cost models are assumptions: see the\n" +
			"report). The batch, drafting and draft-budget decisions are the real batcher.Policy, drafter.DraftPolicy\n" +
			"and goodput.Policy code (with the devices' server rounds); the simulated worker verifies queued batches\n" +
			"together, as verifier.Worker does.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if profiles != "" {
				o.Profiles = strings.Split(profiles, ",")
			}
			o.Batch = batcher.Policy{Size: batchSize, MaxWait: batchWait}
			o.Progress = !noProgress
			o.Logger = slog.Default()
			r, err := bench.RunSim(cmd.Context(), o)
			if err != nil {
				return err
			}
			r.Command = "sled " + strings.Join(os.Args[1:], " ")
			r.Print(cmd.OutOrStdout())
			if jsonPath != "" {
				return r.WriteJSON(jsonPath)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Quick, "quick", false, "small calibration and validation")
	f.StringVar(&jsonPath, "json", "", "write the report as JSON to this file")
	f.StringVar(&o.PlotDir, "plot", "", "write PNG plots into this directory")
	f.StringVar(&o.ModelDir, "models", "", "directory of the shared models (default $SLED_MODEL_DIR)")
	f.StringVar(&o.Pair, "pair", "", "qwen (the real 1.5B target, acceptance of the 0.5B on it) or tiny (a synthetic --shape target, acceptance of the stories pair); default qwen when `make models` has fetched it")
	f.StringVar(&o.Shape, "shape", "smollm-135m", "tiny pair: synthetic target shape measured here")
	f.StringVar(&o.Type, "type", "", "target weight type: tiny pair F16 (default), Q8_0 or Q4_0; qwen pair Q4_K_M (default, as fetched), Q8_0, Q4_0, ...")
	f.StringVar(&profiles, "profile", "", "device profiles, comma-separated (default: all)")
	f.Float64Var(&o.ProfileRate, "profile-rate", 0, "override the profiles' draft tokens/s")
	f.Float64Var(&o.Required, "rate", 5, "tokens/s every device must get (capacity)")
	f.Float64Var(&o.GPUResultMs, "gpu-result-ms", 0, "the simulated GPU servers' worker time per draft, ms (0: 0.041, the event codec's cost; negative: this machine's fitted per-draft cost)")
	f.IntVar(&o.GPUPublishers, "gpu-publishers", 0, "goroutines that publish a pass's results beside the next pass on the simulated GPU servers (0: 8, the verifier's default on 8 cores or more; negative: none, the result work paid inside the pass loop)")
	f.IntVar(&o.SimMaxDevices, "max-devices", 0, "capacity search bound (default 4096; quick: 512)")
	f.IntVar(&batchSize, "batch-size", bench.DefaultBatch.Size, "batcher: static batch size")
	f.DurationVar(&batchWait, "max-wait", bench.DefaultBatch.MaxWait, "batcher: close a batch when its oldest draft waited this long")
	f.DurationVar(&o.Warmup, "warmup", 0, "measured trial warm-up")
	f.DurationVar(&o.Duration, "duration", 0, "measured trial window")
	f.IntVar(&o.Threads, "threads", 0, "server llama.cpp threads (default all cores)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed")
	f.BoolVar(&o.Budget.Static, "static-length", false, "no draft budgets: every device drafts by its own policy (the paper's fixed speculation length), measured and simulated")
	f.IntVar(&o.ServerRounds, "server-rounds", 0, "devices: most rounds in a row the verifier runs on a device's behalf while its draft budget is 0 (0: the default, 256; negative: none)")
	f.DurationVar(&o.GatherMax, "gather-max", 0, "verifier: longest wait of a free worker for the rounds it expects back (0: the worker's default, 50ms; negative: never wait)")
	f.BoolVar(&noProgress, "no-progress", false, "no progress bar")
	return cmd
}
