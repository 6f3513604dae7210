package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/modelcache"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/telemetry"
)

// The standalone roles: each runs one part of SLED and connects to a NATS server,
// for deployments where devices, batchers and verifiers run on different hosts.

func init() {
	var conn services.Conn
	connFlags := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&conn.URL, "nats", "nats://127.0.0.1:4222", "NATS server URL")
		cmd.Flags().IntVar(&conn.Replicas, "replicas", 1, "replicas of the streams this role provisions (3 on a three-node cluster)")
		clientAuthFlags(cmd, &conn.Auth)
	}

	{
		var p policyFlags
		var tf telemetryFlags
		var models, target, name string
		cmd := &cobra.Command{
			Use:   "verifier",
			Short: "Run a verifier worker: the target model verifying batches of drafts",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if models == "" {
					models = modelDir()
				}
				ref, err := resolveModel(cmd.Context(), models, target)
				if err != nil {
					return err
				}
				tel, err := tf.setup(cmd.Context(), "sled-verifier")
				if err != nil {
					return err
				}
				defer shutdownTelemetry(tel)
				return services.RunVerifier(cmd.Context(), services.VerifierRole{
					Conn: conn, Target: ref.Path, ModelName: ref.ID, Pool: p.pool, Name: name, Verifier: p.verifier(), Budget: p.budget(), Telemetry: tel,
				})
			},
		}
		connFlags(cmd)
		cmd.Flags().StringVar(&models, "models", "", "directory to find model files in (default $SLED_MODEL_DIR or ../shared/models)")
		cmd.Flags().StringVar(&target, "target", defaultPair().Target, "target model: a file, a file in --models, a catalogue name (fetched on first use), or an Ollama model name")
		cmd.Flags().StringVar(&name, "name", "worker-1", "worker name; a restarted worker with the same name resumes its batches")
		p.register(cmd, false, true)
		tf.register(cmd, "127.0.0.1:9465")
		rootCmd.AddCommand(cmd)
	}
	{
		var p policyFlags
		var tf telemetryFlags
		var vocab int
		cmd := &cobra.Command{
			Use:   "batcher",
			Short: "Run a batcher: a pool's drafts into verification batches",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				tel, err := tf.setup(cmd.Context(), "sled-batcher")
				if err != nil {
					return err
				}
				defer shutdownTelemetry(tel)
				return services.RunBatcher(cmd.Context(), services.BatcherRole{
					Conn: conn, Batcher: batcher.Config{Pool: p.pool, Policy: p.batch(), VocabSize: vocab, Telemetry: tel},
				})
			},
		}
		connFlags(cmd)
		cmd.Flags().IntVar(&vocab, "vocab-size", 0, "reject drafts with token ids at or above this (0: leave it to the verifier)")
		p.register(cmd, false, true)
		tf.register(cmd, "127.0.0.1:9466")
		rootCmd.AddCommand(cmd)
	}
	{
		var p policyFlags
		var tf telemetryFlags
		var models, draft, id, httpAddr, targetVocab string
		var threads int
		var noStream time.Duration
		var apiKeys []string
		cmd := &cobra.Command{
			Use:   "drafter",
			Short: "Run one device: a draft model with its OpenAI-compatible HTTP API",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if models == "" {
					models = modelDir()
				}
				ref, err := resolveModel(cmd.Context(), models, draft)
				if err != nil {
					return err
				}
				tel, err := tf.setup(cmd.Context(), "sled-drafter")
				if err != nil {
					return err
				}
				defer shutdownTelemetry(tel)
				tvPath := ""
				if targetVocab != "" {
					tv, err := resolveModel(cmd.Context(), models, targetVocab)
					if err != nil {
						return err
					}
					tvPath = tv.Path
				}
				return services.RunDrafter(cmd.Context(), services.DrafterRole{
					Conn: conn, Draft: ref.Path, TargetVocab: tvPath, HTTPAddr: httpAddr, APIKeys: apiKeysOr(apiKeys),
					Device: drafter.Config{DeviceID: id, ModelName: ref.ID, Pool: p.pool, Draft: p.draft(), Retry: p.retry(), NoAsync: p.noAsync, Threads: threads, Telemetry: tel, NoStreamTimeout: noStream, TPOT: p.tpot, ServerRounds: p.serverRounds},
				})
			},
		}
		connFlags(cmd)
		cmd.Flags().StringVar(&models, "models", "", "directory to find model files in (default $SLED_MODEL_DIR or ../shared/models)")
		cmd.Flags().StringVar(&draft, "draft", defaultPair().Drafts[0], "draft model: a file, a file in --models, a catalogue name (fetched on first use), an Ollama model name, NAME@TYPE requantized")
		cmd.Flags().StringVar(&targetVocab, "target-vocab", "", "a model with the target's tokenizer (the target, or a draft that shares it), read vocabulary-only: a --draft with another tokenizer then drafts across vocabularies")
		cmd.Flags().StringVar(&id, "id", "device-1", "device id (letters, digits, - and _)")
		cmd.Flags().StringVar(&httpAddr, "http", "127.0.0.1:8080", "HTTP API listen address")
		cmd.Flags().StringArrayVar(&apiKeys, "api-key", nil, "bearer key the HTTP API requires (repeatable; default $SLED_API_KEYS)")
		cmd.Flags().IntVar(&threads, "threads", 0, "llama.cpp threads (default: all cores, at most 8)")
		cmd.Flags().DurationVar(&noStream, "no-stream-timeout", 0, "strict mode: answer 503 once no stream has taken the drafts this long (0: the verifier timeout, 3s; on a JetStream cluster 20s, above a stream leader election)")
		p.register(cmd, true, false)
		tf.register(cmd, "127.0.0.1:9467")
		rootCmd.AddCommand(cmd)
	}
}

// telemetryFlags are the tracing and metrics flags of `sled up` and the roles.
type telemetryFlags struct {
	traces      string
	sample      float64
	metricsAddr string
}

func (t *telemetryFlags) register(cmd *cobra.Command, metricsAddr string) {
	f := cmd.Flags()
	f.StringVar(&t.traces, "traces", "", "span exporter: none, stdout, otlp (protocol from OTEL_EXPORTER_OTLP_PROTOCOL), otlp-grpc or otlp-http; OTLP reads OTEL_EXPORTER_OTLP_ENDPOINT and friends (default $OTEL_TRACES_EXPORTER, else none)")
	f.Float64Var(&t.sample, "trace-sample", 0, "fraction of rounds traced, (0,1] (default $OTEL_TRACES_SAMPLER, else all)")
	f.StringVar(&t.metricsAddr, "metrics-addr", metricsAddr, `Prometheus /metrics listen address ("" turns metrics off)`)
}

// setup starts telemetry for service; the caller shuts it down.
func (t *telemetryFlags) setup(ctx context.Context, service string) (*telemetry.Telemetry, error) {
	if t.sample < 0 || t.sample > 1 {
		return nil, fmt.Errorf("--trace-sample %v not in (0,1]", t.sample)
	}
	tel, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: service, Traces: t.traces, SampleRatio: t.sample, MetricsAddr: t.metricsAddr,
	})
	if err != nil {
		return nil, err
	}
	if a := tel.MetricsAddr(); a != "" {
		fmt.Fprintf(os.Stderr, "%s: metrics on http://%s/metrics\n", service, a)
	}
	return tel, nil
}

func shutdownTelemetry(tel *telemetry.Telemetry) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "telemetry shutdown:", err)
	}
}

// defaultPair is the pair the roles' model flags default to.
func defaultPair() modelcache.Pair {
	p, _ := modelcache.LookupPair(modelcache.DefaultPair)
	return p
}
