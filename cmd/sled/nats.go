package main

import (
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
--name, and --routes to the others (e.g. nats-route://host-b:6222); provision
from one node with --replicas 3.`,
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
		nc, js, err := infra.Connect(ctx, srv.ClientURL(), "sled-nats-provision")
		if err != nil {
			return err
		}
		topo := infra.Topology{Replicas: natsFlags.replicas}
		if natsFlags.memory {
			topo.Storage = jetstream.MemoryStorage
		}
		// In a cluster the meta leader may take a moment to be elected.
		for attempt := 0; ; attempt++ {
			if err = infra.ProvisionTopology(ctx, js, topo); err == nil || attempt == 30 || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Second)
		}
		nc.Close()
		if err != nil {
			return fmt.Errorf("provision: %w", err)
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "sled nats: listening on %s\n", srv.ClientURL())
	<-ctx.Done()
	return nil
}
