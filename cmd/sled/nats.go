package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/natsauth"
)

// natsCmd runs the embedded NATS server with JetStream on its own, e.g. as
// the single-machine backbone or as one node of a cluster.
var natsCmd = &cobra.Command{
	Use:   "nats",
	Short: "Run the embedded NATS server with JetStream and provision the SLED streams",
	Long: `Run the embedded nats-server (JetStream enabled) until interrupted.

With --provision (the default) the SLED streams (SLED_DRAFTS, SLED_BATCHES,
SLED_RESULTS, SLED_DLQ) are created or updated at start. To be one node of a
cluster, give every node the same --cluster-name, its own --cluster-port and
--name, and --routes to the others (e.g. nats-route://host-b:6222), and
--replicas 3: each node provisions in the background once the cluster has a
quorum.

--auth-dir DIR turns authentication on: the server trusts the operator and
accounts in DIR (made by ` + "`sled creds init`" + `; servers need only its *.jwt files)
and rereads account.jwt every 2 s, so ` + "`sled creds revoke`" + ` takes effect without a
restart. A server listening beyond loopback refuses to start without it unless
--insecure-no-auth is given. --tls-cert/--tls-key make clients use TLS.

An edge site is a leaf node: --leaf-remotes nats-leaf://hub:7422 --leaf-creds
leaf.creds (a leaf credential from ` + "`sled creds issue --role leaf`" + `), with the same
--auth-dir so its devices authenticate locally; it runs no JetStream, its devices
reach the hub's streams through it. A hub listens for leaf nodes with --leaf-port.`,
	Args: cobra.NoArgs,
	RunE: runNATS,
}

var natsFlags struct {
	name, host, storeDir     string
	port                     int
	clusterName, clusterHost string
	clusterPort              int
	routes                   []string
	provision                bool
	replicas                 int
	memory                   bool
	authDir, creds           string
	insecure                 bool
	tls                      infra.TLSFiles
	leafPort                 int
	leafRemotes              []string
	leafCreds                string
}

func init() {
	f := natsCmd.Flags()
	f.StringVar(&natsFlags.name, "name", "", "server name, unique per cluster node (default sled-<port>)")
	f.StringVar(&natsFlags.host, "host", "127.0.0.1", "client listen address (0.0.0.0 for devices on the network)")
	f.IntVar(&natsFlags.port, "port", infra.DefaultPort, "client port (-1: any free port)")
	f.StringVar(&natsFlags.storeDir, "store-dir", "", "JetStream store directory (default $TMPDIR/sled-nats)")
	f.StringVar(&natsFlags.clusterName, "cluster-name", "", "join a cluster of this name (empty: standalone)")
	f.StringVar(&natsFlags.clusterHost, "cluster-host", "", "route listen address (default --host)")
	f.IntVar(&natsFlags.clusterPort, "cluster-port", 6222, "route listen port when --cluster-name is set")
	f.StringSliceVar(&natsFlags.routes, "routes", nil, "routes to other cluster nodes, e.g. nats-route://10.0.0.2:6222 (comma-separated)")
	f.BoolVar(&natsFlags.provision, "provision", true, "create or update the SLED streams at start")
	f.IntVar(&natsFlags.replicas, "replicas", 1, "stream replicas when provisioning (3 on a 3-node cluster)")
	f.BoolVar(&natsFlags.memory, "memory", false, "provision streams in memory instead of files")
	f.StringVar(&natsFlags.authDir, "auth-dir", "", "turn authentication on, trusting the operator and accounts in this directory (`sled creds init`)")
	f.StringVar(&natsFlags.creds, "creds", "", "credentials to provision the streams with when auth is on (default: an admin credential issued from --auth-dir when it holds the authority's keys)")
	f.BoolVar(&natsFlags.insecure, "insecure-no-auth", false, "allow listening beyond loopback without authentication")
	serverTLSFlags(natsCmd, &natsFlags.tls)
	f.IntVar(&natsFlags.leafPort, "leaf-port", 0, "listen for leaf nodes (edge sites) on this port (0: none; 7422 is NATS's usual)")
	f.StringSliceVar(&natsFlags.leafRemotes, "leaf-remotes", nil, "be a leaf node of these hub URLs, e.g. nats-leaf://hub-1:7422,nats-leaf://hub-2:7422")
	f.StringVar(&natsFlags.leafCreds, "leaf-creds", "", "the leaf's credential on the hub (sled creds issue --role leaf)")
	rootCmd.AddCommand(natsCmd)
}

func runNATS(cmd *cobra.Command, _ []string) error {
	ctx := cmd.Context()
	if err := checkExposure(natsFlags.host, natsFlags.authDir != "", natsFlags.insecure, "--auth-dir DIR (sled creds init --dir DIR)"); err != nil {
		return err
	}
	var trust *natsauth.Trust
	if natsFlags.authDir != "" {
		var err error
		if trust, err = natsauth.LoadTrust(natsFlags.authDir); err != nil {
			return err
		}
	}
	srv, err := infra.StartEmbedded(ctx, infra.EmbeddedConfig{
		Trust:       trust,
		TLS:         natsFlags.tls,
		LeafPort:    natsFlags.leafPort,
		LeafRemotes: natsFlags.leafRemotes,
		LeafCreds:   natsFlags.leafCreds,
		ServerName:  natsFlags.name,
		Host:        natsFlags.host,
		Port:        natsFlags.port,
		StoreDir:    natsFlags.storeDir,
		ClusterName: natsFlags.clusterName,
		ClusterHost: natsFlags.clusterHost,
		ClusterPort: natsFlags.clusterPort,
		Routes:      natsFlags.routes,
		Logger:      slog.Default(),
	})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	if trust != nil {
		go trust.Watch(ctx, srv.Server, 0, slog.Default())
	}
	if natsFlags.provision && len(natsFlags.leafRemotes) == 0 {
		topo := infra.Topology{Replicas: natsFlags.replicas}
		if natsFlags.memory {
			topo.Storage = jetstream.MemoryStorage
		}
		if natsFlags.clusterName == "" {
			if err := provision(ctx, srv.ClientURL(), topo); err != nil {
				return err
			}
		} else {
			// A cluster node cannot provision before a quorum of nodes is up;
			// keep trying in the background.
			go func() {
				if err := provision(ctx, srv.ClientURL(), topo); err != nil && ctx.Err() == nil {
					slog.Error("provisioning streams", "err", err)
				}
			}()
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "sled nats: listening on %s\n", srv.ClientURL())
	<-ctx.Done()
	return nil
}

// provision creates or updates the SLED streams, retrying while the server
// (or the cluster's meta leader) does not answer yet: each attempt has a
// short timeout, since requests go unanswered until then.
func provision(ctx context.Context, url string, topo infra.Topology) error {
	auth := infra.ClientAuth{Creds: natsFlags.creds, TLS: infra.TLSFiles{CAFile: natsFlags.tls.CAFile}}
	if natsFlags.tls.Enabled() && auth.TLS.CAFile == "" {
		return errors.New("--tls-cert without --tls-ca: this process's own provisioning client needs the CA to check the server")
	}
	if natsFlags.authDir != "" && auth.Creds == "" {
		a, err := natsauth.Open(natsFlags.authDir)
		if err != nil {
			return fmt.Errorf("provision with auth on: pass --creds (an admin credential), or --auth-dir with the authority's keys: %w", err)
		}
		path := filepath.Join(natsFlags.authDir, "sled-nats-admin.creds")
		if _, err := a.EnsureFile(natsauth.Identity{ID: "sled-nats-admin", Role: natsauth.RoleAdmin}, path); err != nil {
			return err
		}
		auth.Creds = path
	}
	opts, err := auth.Options()
	if err != nil {
		return err
	}
	nc, js, err := infra.Connect(ctx, url, "sled-nats-provision", opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = infra.ProvisionTopology(actx, js, topo)
		cancel()
		if err == nil {
			slog.Info("streams provisioned", "replicas", topo.Replicas)
			return nil
		}
		if natsFlags.clusterName == "" {
			return fmt.Errorf("provision: %w", err)
		}
		slog.Info("provisioning streams: waiting for the cluster", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
