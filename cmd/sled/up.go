package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/telemetry"
	"github.com/sled-project/sled/textgen"
	"github.com/sled-project/sled/verifier"
)

// Flags shared by the roles.
type policyFlags struct {
	threshold          float32
	minLen, maxLen     int
	timeout            time.Duration
	maxFailures        int
	fallback, noAsync  bool
	batchSize          int
	maxWait            time.Duration
	slots, batchTokens int
	verifierThreads    int
	pool               string
	staticLength       bool
	maxBudget          int
	sloBatching        bool
	tpot               time.Duration
	serverRounds       int
}

func (p *policyFlags) register(cmd *cobra.Command, device, server bool) {
	f := cmd.Flags()
	f.StringVar(&p.pool, "pool", events.DefaultPool, "verification pool (subject prefix)")
	if device {
		f.Float32Var(&p.threshold, "threshold", drafter.DefaultThreshold, "dynamic drafting: keep drafting while the draft token's probability is at least this (0: fixed length --max-draft)")
		f.IntVar(&p.minLen, "min-draft", drafter.DefaultMinLen, "fewest draft tokens per round")
		f.IntVar(&p.maxLen, "max-draft", drafter.DefaultMaxLen, "most draft tokens per round (at most 64)")
		f.DurationVar(&p.timeout, "timeout", drafter.DefaultTimeout, "wait for a verification result this long before resending")
		f.IntVar(&p.maxFailures, "max-failures", drafter.DefaultMaxFailures, "consecutive failed rounds before fallback releases drafts")
		f.BoolVar(&p.fallback, "fallback", false, "lossy fallback: release unverified drafts after --max-failures failed rounds (default strict lossless)")
		f.BoolVar(&p.noAsync, "no-async", false, "turn off asynchronous drafting (drafting ahead while verification is in flight)")
		f.DurationVar(&p.tpot, "tpot", 0, "latency objective per output token for requests that give none (sled.tpot_ms), e.g. 100ms (0: none)")
		f.IntVar(&p.serverRounds, "server-rounds", 0, "devices: most rounds in a row the verifier runs on a device's behalf while its draft budget is 0 (0: the default, 256; negative: none)")
	}
	if server {
		f.IntVar(&p.batchSize, "batch-size", batcher.DefaultSize, "static batch size")
		f.DurationVar(&p.maxWait, "max-wait", batcher.DefaultMaxWait, "close a batch when its oldest draft waited this long")
		f.IntVar(&p.slots, "slots", verifier.DefaultSlots, "verifier KV slots (sessions held at once)")
		f.IntVar(&p.batchTokens, "batch-tokens", verifier.DefaultBatchTokens, "most tokens per verifier forward pass")
		f.IntVar(&p.verifierThreads, "verifier-threads", 0, "verifier llama.cpp threads (default: the cores simulated devices leave)")
		f.BoolVar(&p.staticLength, "static-length", false, "no draft budgets: devices draft by their own policy alone (the paper's fixed speculation length)")
		f.IntVar(&p.maxBudget, "max-budget", goodput.DefaultMaxBudget, "largest draft budget the goodput policy gives")
		f.BoolVar(&p.sloBatching, "slo-batching", false, "SLO-aware batching: close a batch when waiting longer would make a device miss its objective, else let it fill")
	}
}

func (p *policyFlags) budget() goodput.Policy {
	return goodput.Policy{Static: p.staticLength, MaxBudget: p.maxBudget}
}

func (p *policyFlags) draft() drafter.DraftPolicy {
	// An explicit 0 on the command line is a fixed length.
	return drafter.DraftPolicy{Threshold: p.threshold, Fixed: p.threshold == 0, MinLen: p.minLen, MaxLen: p.maxLen}
}

func (p *policyFlags) retry() drafter.RetryPolicy {
	return drafter.RetryPolicy{Timeout: p.timeout, MaxFailures: p.maxFailures, Fallback: p.fallback}
}

func (p *policyFlags) verifier() verifier.Config {
	return verifier.Config{Slots: p.slots, BatchTokens: p.batchTokens, Threads: p.verifierThreads}
}

func (p *policyFlags) batch() batcher.Policy {
	return batcher.Policy{Size: p.batchSize, MaxWait: p.maxWait, SLO: p.sloBatching}
}

// modelDir is where model files are looked up: $SLED_MODEL_DIR, else
// ../shared/models next to the working directory.
func modelDir() string { return services.DefaultModelDir() }

// resolveModel resolves a model argument (see services.ResolveModel): NAME@TYPE,
// a path, a file in dir, a catalogue model (fetched into the cache on first use
// with progress on stderr), or an Ollama model name in the Ollama store
// ($OLLAMA_MODELS or ~/.ollama/models), read in place; with the id it is served
// under.
func resolveModel(ctx context.Context, dir, name string) (services.ModelRef, error) {
	return services.ResolveModel(ctx, name, services.FindOptions{Dir: dir, Progress: os.Stderr})
}

func init() {
	var (
		p        policyFlags
		tf       telemetryFlags
		summary  time.Duration
		mode     string
		models   string
		pairName string
		target   string
		drafts   []string
		devices  int
		httpAddr string
		natsURL  string
		natsPort int
		storeDir string
		demo     bool
		demoText string
		apiKeys  []string
		auth     bool
		credsDir string
		natsTLS  infra.TLSFiles
		cross    bool
		unified  bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole system in one process: embedded NATS, batcher, verifier, devices, HTTP API",
		Long: `up runs SLED in one process: an embedded NATS server with JetStream (or --nats),
the batcher, one verifier worker with the target model, and --devices simulated
devices, each with its own draft model (--draft, repeatable, used round-robin). One
OpenAI-compatible HTTP API spreads requests over the devices; the header
X-SLED-Device picks one. --mode centralized serves every token from the target
(the paper's baseline); --mode edge serves each device's draft model alone.

--pair picks the models: qwen (default: Qwen2.5-Coder-Instruct, 0.5B drafts and
1.5B target, fetched into the model cache on first use) or tiny (the 260K-parameter
TinyStories set in the model directory). --target and --draft override it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if models == "" {
				models = modelDir()
			}
			cfg := services.UpConfig{
				Mode: mode, Devices: devices, HTTPAddr: httpAddr, NATSURL: natsURL,
				NATS: infra.EmbeddedConfig{Port: natsPort, StoreDir: storeDir, TLS: natsTLS},
				Pool: p.pool, Batch: p.batch(), Verifier: p.verifier(),
				Draft: p.draft(), Retry: p.retry(), NoAsync: p.noAsync, APIKeys: apiKeysOr(apiKeys),
				Budget: p.budget(), TPOT: p.tpot, ServerRounds: p.serverRounds, CrossVocab: cross, UnifiedKV: unified,
			}
			if unified && mode != services.ModeCentralized {
				return fmt.Errorf("--unified-kv is a layout of the centralized server's cache: it needs --mode %s (the verifier's is verifier.Config.UnifiedKV)", services.ModeCentralized)
			}
			if auth {
				if credsDir == "" {
					return errors.New("--auth needs --creds-dir: the directory the NATS authority and every credential are kept in")
				}
				cfg.AuthDir = credsDir
			} else if credsDir != "" {
				return errors.New("--creds-dir without --auth: pass --auth to turn NATS authentication on")
			}
			pair, ok := modelcache.LookupPair(pairName)
			if !ok {
				return fmt.Errorf("--pair %q: want one of qwen, tiny (see `sled model list`)", pairName)
			}
			if target == "" {
				target = pair.Target
			}
			if len(drafts) == 0 {
				drafts = pair.Drafts
			}
			if demoText == "" {
				demoText = pair.DemoPrompt
			}
			var err error
			if mode != services.ModeEdge {
				ref, err := resolveModel(ctx, models, target)
				if err != nil {
					return err
				}
				cfg.Target, cfg.ModelName, cfg.ModelDigest = ref.Path, ref.ID, ref.Digest
			}
			if mode != services.ModeCentralized {
				for _, d := range drafts {
					ref, err := resolveModel(ctx, models, d)
					if err != nil {
						return err
					}
					cfg.Drafts, cfg.DraftNames = append(cfg.Drafts, ref.Path), append(cfg.DraftNames, ref.ID)
				}
			}
			start := time.Now()
			tel, err := telemetry.Setup(ctx, telemetry.Config{
				ServiceName: "sled", Traces: tf.traces, SampleRatio: tf.sample, MetricsAddr: tf.metricsAddr,
			})
			if err != nil {
				return err
			}
			defer shutdownTelemetry(tel) // after sys.Close: flushes the last spans
			cfg.Telemetry = tel
			sys, err := services.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer sys.Close()
			fmt.Printf("sled up (%s mode) in %s: %d devices, API http://%s/v1", cfg.Mode, time.Since(start).Round(time.Millisecond), len(sys.Generators()), sys.HTTPAddr())
			if sys.URL() != "" {
				fmt.Printf(", NATS %s", sys.URL())
				if auth {
					fmt.Printf(" (auth on: credentials in %s)", credsDir)
				}
			}
			if a := tel.MetricsAddr(); a != "" {
				fmt.Printf(", metrics http://%s/metrics", a)
			}
			fmt.Println()
			go summarize(ctx, sys, summary, os.Stdout)
			if demo {
				if err := runDemo(ctx, sys, demoText, pair.Chat); err != nil {
					return err
				}
			}
			fmt.Printf("serving; try: sled generate --url http://%s %q (Ctrl-C stops)\n", sys.HTTPAddr(), demoText)
			if pair.Chat {
				fmt.Printf("or chat: curl -s %s/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Write a Go function that reverses a string.\"}],\"max_tokens\":128}'\n", sys.HTTPAddr())
			}
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&mode, "mode", services.ModeSLED, "sled, centralized (server generates every token) or edge (drafts only)")
	f.StringVar(&models, "models", "", "directory to find model files in (default $SLED_MODEL_DIR or ../shared/models)")
	f.StringVar(&pairName, "pair", modelcache.DefaultPair, "model pair: qwen (real models, fetched on first use) or tiny (the 260K-parameter test set)")
	f.StringVar(&target, "target", "", "target model: a file, a file in --models, a catalogue name, or an Ollama model name such as qwen2.5-coder:1.5b (default: the pair's)")
	f.StringArrayVar(&drafts, "draft", nil,
		"draft model, repeatable; devices use them round-robin; NAME@Q4_0 (or @Q8_0, @F16, @Q4_K_M, ...) is NAME requantized (default: the pair's)")
	f.IntVar(&devices, "devices", 3, "number of simulated devices")
	f.StringVar(&httpAddr, "http", "127.0.0.1:8080", "HTTP API listen address")
	f.StringArrayVar(&apiKeys, "api-key", nil, "bearer key the HTTP API requires (repeatable; default $SLED_API_KEYS, comma-separated; none: no authentication)")
	f.StringVar(&natsURL, "nats", "", "external NATS URL instead of the embedded server")
	f.IntVar(&natsPort, "nats-port", -1, "embedded NATS client port (-1: a free port)")
	f.StringVar(&storeDir, "store-dir", "", "embedded JetStream store directory (default: a temporary directory)")
	f.BoolVar(&cross, "cross-vocab", false, "let drafts whose tokenizer is not the target's draft across vocabularies (each device maps its draft text onto the target's tokens)")
	f.BoolVar(&unified, "unified-kv", false, "with --mode centralized: one KV cache for all requests instead of a stream per slot")
	f.BoolVar(&auth, "auth", false, "turn NATS authentication on: every role and device connects under its own credential (see docs/deployment.md)")
	f.StringVar(&credsDir, "creds-dir", "", "with --auth: the NATS authority's directory (made on first use), where every device's and role's credential is written as <id>.creds")
	serverTLSFlags(cmd, &natsTLS)
	f.BoolVar(&demo, "demo", true, "print one demo completion per device with its acceptance figures")
	f.StringVar(&demoText, "demo-prompt", "", "prompt of the demo completions (default: the pair's)")
	p.register(cmd, true, true)
	tf.register(cmd, "127.0.0.1:9464")
	f.DurationVar(&summary, "summary", 5*time.Second, "print each active device's tokens/s and acceptance this often (0: never)")
	rootCmd.AddCommand(cmd)
}

// runDemo generates one completion per device and prints it with its figures.
// With chat, the prompt is the user's turn in the target's chat template.
func runDemo(ctx context.Context, sys *services.System, prompt string, chat bool) error {
	for i, d := range sys.Generators() {
		m := d.Generator.Model()
		var toks []engine.Token
		var err error
		if chat {
			text, _ := m.FormatChat([]engine.ChatMessage{{Role: "user", Content: prompt}}, true)
			toks, err = m.TokenizeSpecial(text, true)
		} else {
			toks, err = m.Tokenize(prompt, true)
		}
		if err != nil {
			return err
		}
		start := time.Now()
		res, err := d.Generator.Generate(ctx, textgen.Request{Prompt: toks, MaxTokens: 48}, func(textgen.Chunk) error { return nil })
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return fmt.Errorf("demo on %s: %w", d.Name, err)
		}
		el := time.Since(start)
		text := strings.ReplaceAll(m.Detokenize(res.Tokens), "\n", "\n    ")
		if chat {
			fmt.Printf("[%d] %s: %s\n    %s\n", i+1, d.Name, prompt, text)
		} else {
			fmt.Printf("[%d] %s: %s%s\n", i+1, d.Name, prompt, text)
		}
		st := res.Stats
		if st.Drafted > 0 {
			fmt.Printf("    %d tokens in %s (%.1f tok/s), %d rounds, accepted %d/%d drafted (%.0f%%), %.2f tokens per round\n",
				len(res.Tokens), el.Round(time.Millisecond), float64(len(res.Tokens))/el.Seconds(), st.Rounds, st.Accepted, st.Drafted,
				100*st.AcceptanceRate, float64(len(res.Tokens))/float64(max(st.Rounds, 1)))
		} else {
			fmt.Printf("    %d tokens in %s (%.1f tok/s)\n", len(res.Tokens), el.Round(time.Millisecond), float64(len(res.Tokens))/el.Seconds())
		}
	}
	return nil
}

// apiKeysOr is keys, else the comma-separated keys of $SLED_API_KEYS.
func apiKeysOr(keys []string) []string {
	if len(keys) > 0 {
		return keys
	}
	var out []string
	for _, k := range strings.Split(os.Getenv("SLED_API_KEYS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, k)
		}
	}
	return out
}
