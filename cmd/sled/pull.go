package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/modelpull"
)

// init adds `model pull` to the model command group, which the first of the
// files adding to it creates (modelGroupCmd).
func init() {
	modelGroupCmd().AddCommand(modelPullCmd())
}

// modelGroupCmd returns rootCmd's "model" subcommand, creating it if absent.
func modelGroupCmd() *cobra.Command {
	for _, c := range rootCmd.Commands() {
		if c.Name() == "model" {
			return c
		}
	}
	c := &cobra.Command{Use: "model", Short: "Fetch, list, inspect, derive and synthesise GGUF model files"}
	rootCmd.AddCommand(c)
	return c
}

func modelPullCmd() *cobra.Command {
	var (
		out, sum          string
		force, showProg   bool
		noProgress, quiet bool
		retries           int
	)
	cmd := &cobra.Command{
		Use:   "pull URL",
		Short: "Download a GGUF model file, resumably, and verify it",
		Long: "Pull downloads the GGUF file at URL (http or https). An interrupted download\n" +
			"is kept as DEST.partial and resumed by the next pull of the same URL. The file\n" +
			"is checked against --sha256, else against a checksum header the server sends,\n" +
			"else its SHA-256 is just printed; it must be a valid GGUF file, and appears at\n" +
			"its destination only when complete.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := modelpull.Options{Out: out, SHA256: sum, Overwrite: force, Retries: retries}
			if retries == 0 {
				opts.Retries = -1 // Options reads 0 as "the default"
			}
			stderr := cmd.ErrOrStderr()
			if showProg || (!noProgress && !quiet && pullIsTerminal(stderr)) {
				opts.Progress = stderr
			}
			res, err := modelpull.Pull(cmd.Context(), args[0], opts)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w; use --force to replace it", err)
			}
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(cmd.OutOrStdout(), res.Path)
				return nil
			}
			check := "not verified (no checksum given or announced)"
			switch res.Verified {
			case "option":
				check = "verified against --sha256"
			case "header":
				check = "verified against the server's checksum header"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n  size    %d bytes\n  sha256  %s (%s)\n", res.Path, res.Size, res.SHA256, check)
			if res.ResumedFrom > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "  resumed from byte %d\n", res.ResumedFrom)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&out, "out", "o", "", "destination file, or directory to save under the URL's file name (default: the current directory)")
	f.StringVar(&sum, "sha256", "", "expected SHA-256 of the file, in hex")
	f.BoolVar(&force, "force", false, "replace an existing destination file")
	f.BoolVar(&showProg, "progress", false, "show the progress bar even when standard error is not a terminal")
	f.BoolVar(&noProgress, "no-progress", false, "never show the progress bar")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the destination path")
	f.IntVar(&retries, "retries", modelpull.DefaultRetries, "times to resume a transfer cut short before giving up (0: none)")
	return cmd
}

// pullIsTerminal reports whether w is a character device, such as a terminal.
func pullIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
