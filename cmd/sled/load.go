package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/bench"
)

// loadCmd is `sled bench load`: closed-loop clients against any OpenAI-compatible
// server, so that SLED and llama-server are measured by the same client.
func loadCmd() *cobra.Command {
	var (
		cfg                         bench.LoadConfig
		clients, promptsPath, label string
		jsonPath                    string
	)
	cmd := &cobra.Command{
		Use:   "load --url URL",
		Short: "Closed-loop clients against an OpenAI-compatible server (sled up, llama-server, ...): tokens/s at each concurrency",
		Long: "load runs --clients concurrent clients, each sending greedy requests one after another for\n" +
			"--duration, against URL's /v1/completions (or /v1/chat/completions with --chat), and reports\n" +
			"the server's output tokens/s (from the responses' usage), per-client tokens/s and latency.\n" +
			"Steady tokens/s counts only the --duration window, while every client is busy: each request's\n" +
			"tokens spread over its time, the part inside the window counted (tokens/s also includes the\n" +
			"drain after it). Each level starts with one uncounted request per client.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range strings.Split(clients, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n <= 0 {
					return fmt.Errorf("--clients %q: want positive integers separated by commas", clients)
				}
				cfg.Clients = append(cfg.Clients, n)
			}
			if promptsPath != "" {
				ps, err := bench.ReadPrompts(promptsPath)
				if err != nil {
					return err
				}
				cfg.Prompts = ps
			}
			ps, err := bench.RunLoad(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			title := fmt.Sprintf("%s: %s, %d tokens per request, %s per level", label, cfg.URL, cfg.MaxTokens, cfg.Duration)
			bench.LoadTable(title, ps).Markdown(cmd.OutOrStdout())
			if jsonPath != "" {
				b, _ := json.MarshalIndent(struct {
					Label  string            `json:"label"`
					URL    string            `json:"url"`
					Time   time.Time         `json:"time"`
					Points []bench.LoadPoint `json:"points"`
				}{label, cfg.URL, time.Now(), ps}, "", "  ")
				return os.WriteFile(jsonPath, append(b, '\n'), 0o644)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "server base URL")
	f.StringVar(&clients, "clients", "1,4,16", "concurrency levels, comma-separated")
	f.StringVar(&promptsPath, "prompts", "", "prompt file as for `sled bench lossless` (default: its 8 prompts)")
	f.BoolVar(&cfg.Chat, "chat", false, "send prompts as chat user turns to /v1/chat/completions")
	f.IntVar(&cfg.MaxTokens, "max-tokens", 64, "tokens per request")
	f.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long each level issues requests")
	f.StringVar(&cfg.Model, "model", "", "model field of the requests")
	f.StringVar(&label, "label", "load", "name of the server in the report")
	f.StringVar(&jsonPath, "json", "", "write the points as JSON to this file")
	return cmd
}
