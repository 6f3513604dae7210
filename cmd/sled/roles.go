package main

import (
	"github.com/spf13/cobra"

	"github.com/sled-project/sled/batcher"
	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/services"
)

// The standalone roles: each runs one part of SLED and connects to a NATS server,
// for deployments where devices, batchers and verifiers run on different hosts.

func init() {
	var conn services.Conn
	connFlags := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&conn.URL, "nats", "nats://127.0.0.1:4222", "NATS server URL")
		cmd.Flags().IntVar(&conn.Replicas, "replicas", 1, "replicas of the streams this role provisions (3 on a three-node cluster)")
	}

	{
		var p policyFlags
		var models, target, name string
		cmd := &cobra.Command{
			Use:   "verifier",
			Short: "Run a verifier worker: the target model verifying batches of drafts",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if models == "" {
					models = modelDir()
				}
				path, err := findModel(models, target)
				if err != nil {
					return err
				}
				return services.RunVerifier(cmd.Context(), services.VerifierRole{
					Conn: conn, Target: path, Pool: p.pool, Name: name, Verifier: p.verifier(),
				})
			},
		}
		connFlags(cmd)
		cmd.Flags().StringVar(&models, "models", "", "directory to find model files in (default $SLED_MODEL_DIR or ../shared/models)")
		cmd.Flags().StringVar(&target, "target", "stories260k.gguf", "target model file")
		cmd.Flags().StringVar(&name, "name", "worker-1", "worker name; a restarted worker with the same name resumes its batches")
		p.register(cmd, false, true)
		rootCmd.AddCommand(cmd)
	}
	{
		var p policyFlags
		var vocab int
		cmd := &cobra.Command{
			Use:   "batcher",
			Short: "Run a batcher: a pool's drafts into verification batches",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return services.RunBatcher(cmd.Context(), services.BatcherRole{
					Conn: conn, Batcher: batcher.Config{Pool: p.pool, Policy: p.batch(), VocabSize: vocab},
				})
			},
		}
		connFlags(cmd)
		cmd.Flags().IntVar(&vocab, "vocab-size", 0, "reject drafts with token ids at or above this (0: leave it to the verifier)")
		p.register(cmd, false, true)
		rootCmd.AddCommand(cmd)
	}
	{
		var p policyFlags
		var models, draft, id, httpAddr string
		var threads int
		cmd := &cobra.Command{
			Use:   "drafter",
			Short: "Run one device: a draft model with its OpenAI-compatible HTTP API",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if models == "" {
					models = modelDir()
				}
				path, err := findModel(models, draft)
				if err != nil {
					return err
				}
				return services.RunDrafter(cmd.Context(), services.DrafterRole{
					Conn: conn, Draft: path, HTTPAddr: httpAddr,
					Device: drafter.Config{DeviceID: id, Pool: p.pool, Draft: p.draft(), Retry: p.retry(), NoAsync: p.noAsync, Threads: threads},
				})
			},
		}
		connFlags(cmd)
		cmd.Flags().StringVar(&models, "models", "", "directory to find model files in (default $SLED_MODEL_DIR or ../shared/models)")
		cmd.Flags().StringVar(&draft, "draft", "stories260k-draft-4L.gguf", "draft model file")
		cmd.Flags().StringVar(&id, "id", "device-1", "device id (letters, digits, - and _)")
		cmd.Flags().StringVar(&httpAddr, "http", "127.0.0.1:8080", "HTTP API listen address")
		cmd.Flags().IntVar(&threads, "threads", 0, "llama.cpp threads (default: all cores, at most 8)")
		p.register(cmd, true, false)
		rootCmd.AddCommand(cmd)
	}
}
