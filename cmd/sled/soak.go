package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/bench"
	"github.com/sled-project/sled/engine"
)

// soakCmd is `sled bench soak`: steady load on an in-process `sled up`, sampling
// memory, goroutines and latency every second.
func soakCmd() *cobra.Command {
	var (
		cfg                                  bench.SoakConfig
		csvPath, jsonPath, plotDir, fromPath string
	)
	cmd := &cobra.Command{
		Use:   "soak",
		Short: "Steady load on an in-process sled up: RSS, goroutines and latency every second (flat memory?)",
		Long: "soak starts `sled up` in this process (--pair, --mode, --devices), runs --clients closed-loop\n" +
			"clients through its HTTP API for --duration, then samples --idle longer with no load, every\n" +
			"--interval: the process's RSS, what Go's runtime has mapped, malloc's arenas, goroutines,\n" +
			"and each interval's request count and p50/p99 latency. --big-every adds one --big-bytes prompt\n" +
			"that often (longer than the tiny models' context: refused after tokenizing).\n" +
			"The clients run in the same process, so the figures include their share. --from redraws a\n" +
			"--json file's tables and plots without running.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.Default()
			var (
				r   *bench.SoakResult
				err error
			)
			if fromPath != "" {
				r, err = bench.ReadSoakJSON(fromPath)
			} else {
				r, err = bench.RunSoak(cmd.Context(), cfg)
			}
			if err != nil {
				return err
			}
			r.Table().Markdown(cmd.OutOrStdout())
			if csvPath != "" {
				f, err := os.Create(csvPath)
				if err != nil {
					return err
				}
				if err := r.WriteCSV(f); err != nil {
					f.Close()
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
			}
			if jsonPath != "" {
				if err := r.WriteJSON(jsonPath); err != nil {
					return err
				}
			}
			if plotDir != "" {
				ps, err := r.Plot(plotDir)
				for _, p := range ps {
					fmt.Fprintln(cmd.OutOrStdout(), "plot:", p)
				}
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Pair, "pair", "tiny", "model pair: tiny or qwen")
	f.StringVar(&cfg.ModelDir, "models", "", "directory of the tiny models (default $SLED_MODEL_DIR or ../shared/models)")
	f.StringVar(&cfg.Mode, "mode", "sled", "sled, centralized or edge")
	f.IntVar(&cfg.Devices, "devices", 3, "simulated devices")
	f.IntVar(&cfg.Clients, "clients", 16, "concurrent clients")
	f.IntVar(&cfg.MaxTokens, "max-tokens", 16, "tokens per request")
	f.DurationVar(&cfg.Duration, "duration", 0, "how long the load runs (default 2m)")
	f.DurationVar(&cfg.Idle, "idle", 0, fmt.Sprintf("sampling after the load stops (default %s)", engine.DefaultIdleRelease+10*time.Second))
	f.DurationVar(&cfg.Interval, "interval", 0, "sampling interval (default 1s)")
	f.DurationVar(&cfg.BigEvery, "big-every", 0, "send one big prompt this often (0: none)")
	f.IntVar(&cfg.BigBytes, "big-bytes", 0, "size of the big prompt in bytes (default 900 KiB)")
	f.StringVar(&csvPath, "csv", "", "write the samples as CSV to this file")
	f.StringVar(&jsonPath, "json", "", "write the summary and samples as JSON to this file")
	f.StringVar(&cfg.HeapProfile, "memprofile", "", "write Go heap profiles to this file (at the end) and FILE.base (after the warm-up)")
	f.StringVar(&fromPath, "from", "", "run nothing: report (and --csv, --plot) the soak a --json file holds")
	f.StringVar(&plotDir, "plot", "", "write soak-memory.png and soak-latency.png into this directory")
	return cmd
}
