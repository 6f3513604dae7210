package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/engine/gguf"
)

// The model commands inspect, cut down and synthesise GGUF model files,
// without loading them into llama.cpp.
func init() {
	modelGroupCmd().AddCommand(modelInspectCmd(), modelDeriveCmd(), modelVocabCmd(), modelSynthCmd(), modelShapesCmd())
}

func modelInspectCmd() *cobra.Command {
	var asJSON, tensors bool
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Validate a GGUF file and print its model facts",
		Long: "Inspect parses and validates FILE (header, metadata, tensor bounds) and prints\n" +
			"its architecture, size, quantization and vocabulary fingerprint. Models whose\n" +
			"fingerprints match share a tokenizer and can pair as draft and target.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := gguf.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			in := f.Info()
			out := cmd.OutOrStdout()
			if asJSON {
				v := any(in)
				if tensors {
					v = struct {
						gguf.Info
						TensorList []gguf.TensorInfo `json:"tensor_list"`
					}{in, f.Tensors}
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			printInfo(out, args[0], in)
			if tensors {
				tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "\nTENSOR\tTYPE\tDIMS\tBYTES")
				for _, t := range f.Tensors {
					fmt.Fprintf(tw, "%s\t%s\t%v\t%d\n", t.Name, t.Type, t.Dims, t.Size())
				}
				return tw.Flush()
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the facts as JSON")
	cmd.Flags().BoolVar(&tensors, "tensors", false, "list the tensors too")
	return cmd
}

func printInfo(w io.Writer, path string, in gguf.Info) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
	row("file", path)
	row("gguf version", in.Version)
	row("size", fmt.Sprintf("%d bytes", in.FileSize))
	row("architecture", in.Architecture)
	if in.Name != "" {
		row("name", in.Name)
	}
	row("parameters", in.Parameters)
	row("layers", in.Layers)
	row("embedding", in.EmbeddingSize)
	if in.Heads > 0 {
		row("heads", fmt.Sprintf("%d (%d KV)", in.Heads, in.KVHeads))
	}
	if in.FeedForward > 0 {
		row("feed forward", in.FeedForward)
	}
	row("context", in.ContextLength)
	q := in.Quantization
	if in.FileType != "" {
		q += " (file type " + in.FileType + ")"
	}
	row("quantization", q)
	var types []string
	for _, t := range slices.Sorted(maps.Keys(in.TensorTypes)) {
		types = append(types, fmt.Sprintf("%d %s", in.TensorTypes[t], t))
	}
	row("tensors", fmt.Sprintf("%d: %s", in.Tensors, strings.Join(types, ", ")))
	row("tokenizer", fmt.Sprintf("%s, %d tokens, bos %d, eos %d", in.Tokenizer, in.VocabSize, in.BOS, in.EOS))
	row("vocab fingerprint", in.VocabFingerprint)
	tw.Flush()
}

func modelDeriveCmd() *cobra.Command {
	var layers int
	var typ string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "derive SRC DST",
		Short: "Write a draft model: the first K blocks of SRC, optionally requantized",
		Long: "Derive writes DST from the GGUF model SRC, keeping its first --layers transformer\n" +
			"blocks (a self-speculative draft shares the target's embeddings and tokenizer)\n" +
			"and converting weight matrices to --type. Norms, and matrices whose row length\n" +
			"does not fit the type's blocks, keep their type; the report says which and why.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := gguf.DeriveOptions{Layers: layers}
			if typ != "" {
				t, err := gguf.ParseType(typ)
				if err != nil {
					return fmt.Errorf("--type: %w", err)
				}
				opt.Type = &t
			}
			rep, err := gguf.Derive(args[0], args[1], opt)
			if rep != nil && (verbose || err == nil && opt.Type != nil) {
				printReport(cmd.ErrOrStderr(), rep, verbose)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d of %d layers, %d tensors converted\n",
				args[1], rep.Layers, rep.SourceLayers, rep.Converted)
			return nil
		},
	}
	cmd.Flags().IntVar(&layers, "layers", 0, "transformer blocks to keep (0: all)")
	cmd.Flags().StringVar(&typ, "type", "", "convert weight matrices to F32, F16, Q8_0 or Q4_0 (default: keep)")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list every tensor")
	return cmd
}

// modelVocabCmd is `sled model vocab`: a tokenizer-only file.
func modelVocabCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "vocab SRC DST",
		Short: "Write SRC's tokenizer alone (no weights): what a cross-vocabulary device needs of its target",
		Long: "vocab writes DST with the metadata of the GGUF model SRC, its tokenizer included, and no\n" +
			"tensor (a few megabytes). A device whose draft model has another tokenizer drafts across\n" +
			"vocabularies with it: sled drafter --draft SMALL --target-vocab DST.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := gguf.ExtractVocab(args[0], args[1]); err != nil {
				return err
			}
			st, err := os.Stat(args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: the tokenizer of %s, %d bytes\n", args[1], args[0], st.Size())
			return nil
		},
	}
}

// printReport says which tensors kept their type and why, grouped by
// reason, or with all, what happened to every tensor.
func printReport(w io.Writer, rep *gguf.DeriveReport, all bool) {
	if all {
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		for _, p := range rep.Tensors {
			switch {
			case p.Dropped:
				fmt.Fprintf(tw, "%s\tdropped\n", p.Name)
			case p.Reason != "":
				fmt.Fprintf(tw, "%s\tkept %s\t%s\n", p.Name, p.From, p.Reason)
			case p.From == p.To:
				fmt.Fprintf(tw, "%s\tkept %s\n", p.Name, p.From)
			default:
				fmt.Fprintf(tw, "%s\t%s -> %s\n", p.Name, p.From, p.To)
			}
		}
		tw.Flush()
		return
	}
	var reasons []string
	names := map[string][]string{}
	for _, p := range rep.Tensors {
		if p.Reason == "" || p.Dropped {
			continue
		}
		key := fmt.Sprintf("kept %s: %s", p.From, p.Reason)
		if names[key] == nil {
			reasons = append(reasons, key)
		}
		names[key] = append(names[key], p.Name)
	}
	for _, r := range reasons {
		n := names[r]
		ex := strings.Join(n[:min(3, len(n))], ", ")
		if len(n) > 3 {
			ex += ", ..."
		}
		fmt.Fprintf(w, "%d tensors %s (%s)\n", len(n), r, ex)
	}
}

func modelSynthCmd() *cobra.Command {
	var shape, typ, tokFrom string
	var seed uint64
	var ctx int
	cmd := &cobra.Command{
		Use:   "synth DST --shape NAME",
		Short: "Write a random-weight model with a real model's tensor shapes",
		Long: "Synth writes a llama GGUF model to DST with random weights in the tensor shapes of\n" +
			"a real model (see `sled model shapes`), for measuring compute at realistic sizes.\n" +
			"Its tokenizer is copied from --tokenizer-from, so token_embd and output have that\n" +
			"vocabulary's rows, not the real model's. Output is noise.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := gguf.LookupShape(shape)
			if err != nil {
				return fmt.Errorf("--shape: %w", err)
			}
			t, err := gguf.ParseType(typ)
			if err != nil {
				return fmt.Errorf("--type: %w", err)
			}
			if tokFrom == "" {
				dir := os.Getenv("SLED_MODEL_DIR")
				if dir == "" {
					return errors.New("--tokenizer-from not given and SLED_MODEL_DIR not set")
				}
				tokFrom = filepath.Join(dir, "stories260k.gguf")
			}
			tf, err := gguf.Open(tokFrom)
			if err != nil {
				return fmt.Errorf("--tokenizer-from: %w", err)
			}
			defer tf.Close()
			opt := gguf.SynthOptions{Type: t, ContextLength: ctx, Seed: seed, Tokenizer: tf}
			if err := gguf.Synth(args[0], s, opt); err != nil {
				return err
			}
			vocab := tf.Info().VocabSize
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %s shape (%s), %s weights, vocabulary of %d tokens from %s (the real model has %d)\n",
				args[0], s.Name, s.Model, t, vocab, tokFrom, s.Vocab)
			return nil
		},
	}
	cmd.Flags().StringVar(&shape, "shape", "", "model shape (see `sled model shapes`)")
	cmd.Flags().StringVar(&typ, "type", "F16", "weight type: F32, F16, Q8_0 or Q4_0")
	cmd.Flags().StringVar(&tokFrom, "tokenizer-from", "", "GGUF file to copy the tokenizer from (default $SLED_MODEL_DIR/stories260k.gguf)")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "random seed")
	cmd.Flags().IntVar(&ctx, "ctx", 0, "context length to record (default: the shape's)")
	cmd.MarkFlagRequired("shape")
	return cmd
}

func modelShapesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "shapes",
		Short: "List the shapes `sled model synth` knows",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "SHAPE\tMODEL\tEMBD\tLAYERS\tHEADS\tKV\tFFN\tCTX\tTIED\tREAL VOCAB")
			for _, s := range gguf.Shapes() {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%v\t%d\n", s.Name, s.Model, s.Embedding,
					s.Layers, s.Heads, s.KVHeads, s.FeedForward, s.ContextLength, s.TiedEmbeddings, s.Vocab)
			}
			return tw.Flush()
		},
	}
}
