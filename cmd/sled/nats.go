package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/sled-project/sled/infra"
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
quorum.`,
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
	rootCmd.AddCommand(natsCmd)
}

func runNATS(cmd *cobra.Command, _ []string) error {
	ctx := cmd.Context()
	srv, err := infra.StartEmbedded(ctx, infra.EmbeddedConfig{
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
	if natsFlags.provision {
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
	nc, js, err := infra.Connect(ctx, url, "sled-nats-provision")
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
