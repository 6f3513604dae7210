// Command sled is the one SLED binary: every role (device, batcher, verifier, the
// whole system in one process) and the model and benchmark tooling are subcommands.
// This package holds flags and wiring only; the work lives in the packages it calls.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// rootCmd is the top of the command tree. Each file of this package registers its
// subcommands on it from init, so commands stay next to their own flags.
var rootCmd = &cobra.Command{
	Use:           "sled",
	Short:         "SLED: speculative LLM decoding for fleets of edge devices",
	SilenceUsage:  true,
	SilenceErrors: true,
	PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
		return setupLogging(cmd)
	},
}

var logLevel string

func init() {
	rootCmd.PersistentFlags().StringVar(&logLevel, "log-level", "warn", "log level: debug, info, warn or error (llama.cpp's own logs follow it too)")
}

func setupLogging(*cobra.Command) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sled:", err)
		os.Exit(1)
	}
}
