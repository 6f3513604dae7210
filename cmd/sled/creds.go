package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/natsauth"
)

// credsCmd manages the NATS authority: the operator and account keys, and the
// credentials issued to devices and services.
var credsCmd = &cobra.Command{
	Use:   "creds",
	Short: "Create the NATS authority and issue, list or revoke device and role credentials",
	Long: `creds manages SLED's NATS security (decentralized JWT auth): an operator, a
system account and the SLED account, with one scoped signing key per role
(device, batcher, verifier, leaf; admin is signed by the account itself).

  sled creds init   --dir DIR                       make the authority (idempotent)
  sled creds issue  --dir DIR --role device --id dev-7 [--pool default] [--out FILE]
  sled creds list   --dir DIR
  sled creds revoke --dir DIR --id dev-7

A .creds file works with any NATS client (nats.go's UserCredentials, nats-py's
user_credentials, the nats CLI's --creds). Servers trust DIR's *.jwt files
(sled nats --auth-dir); the keys/ directory is secret and stays with whoever
issues credentials. Revocation rewrites account.jwt; servers reading it
(sled nats --auth-dir) disconnect the revoked identity within 2 s.`,
}

func init() {
	var dir string
	dirFlag := func(c *cobra.Command) {
		c.Flags().StringVar(&dir, "dir", "", "the authority's directory (required)")
		_ = c.MarkFlagRequired("dir")
	}
	initCmd := &cobra.Command{
		Use: "init", Short: "Create the operator, accounts and signing keys (keeps an existing authority)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := natsauth.Init(dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "NATS authority in %s (servers: sled nats --auth-dir %s)\n", a.Dir(), a.Dir())
			return nil
		},
	}
	dirFlag(initCmd)

	var id, role, pool, out string
	var ttl time.Duration
	issueCmd := &cobra.Command{
		Use: "issue", Short: "Issue a credential (.creds) for a device or role", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := natsauth.Open(dir)
			if err != nil {
				return fmt.Errorf("%w (run `sled creds init --dir %s` first)", err, dir)
			}
			r, err := natsauth.ParseRole(role)
			if err != nil {
				return err
			}
			creds, err := a.Issue(natsauth.Identity{ID: id, Role: r, Pool: pool, TTL: ttl})
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(creds)
				return err
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(out, creds, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%s credential for %q (pool %s) written to %s\n", r, id, pool, out)
			return nil
		},
	}
	dirFlag(issueCmd)
	issueCmd.Flags().StringVar(&id, "id", "", "device id or role name (letters, digits, - and _)")
	issueCmd.Flags().StringVar(&role, "role", string(natsauth.RoleDevice), "device, batcher, verifier, leaf or admin")
	issueCmd.Flags().StringVar(&pool, "pool", events.DefaultPool, "verification pool (lower case)")
	issueCmd.Flags().StringVar(&out, "out", "", "write the credential here (0600) instead of standard output")
	issueCmd.Flags().DurationVar(&ttl, "ttl", 0, "credential lifetime (0: until revoked)")
	_ = issueCmd.MarkFlagRequired("id")

	listCmd := &cobra.Command{
		Use: "list", Short: "List every identity issued, with its role, pool and credentials in force", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := natsauth.Open(dir)
			if err != nil {
				return err
			}
			issued := a.Issued()
			ids := make([]string, 0, len(issued))
			for k := range issued {
				ids = append(ids, k)
			}
			sort.Strings(ids)
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tROLE\tPOOL\tIN FORCE\tREVOKED")
			for _, k := range ids {
				rec := issued[k]
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\n", k, rec.Role, rec.Pool, len(rec.Users), len(rec.Revoked))
			}
			return w.Flush()
		},
	}
	dirFlag(listCmd)

	var revokeID string
	revokeCmd := &cobra.Command{
		Use: "revoke", Short: "Revoke every credential issued to an id so far", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := natsauth.Open(dir)
			if err != nil {
				return err
			}
			if err := a.Revoke(revokeID); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %q; servers reading %s disconnect it within 2 s (copy it to servers that keep their own)\n",
				revokeID, strings.TrimSuffix(filepath.Join(dir, natsauth.AccountFile), "/"))
			return nil
		},
	}
	dirFlag(revokeCmd)
	revokeCmd.Flags().StringVar(&revokeID, "id", "", "the id to revoke")
	_ = revokeCmd.MarkFlagRequired("id")

	credsCmd.AddCommand(initCmd, issueCmd, listCmd, revokeCmd)
	rootCmd.AddCommand(credsCmd)
}
