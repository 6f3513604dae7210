package infra

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/events"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestClusterR3 runs three embedded nodes as one JetStream cluster (the
// cluster settings `sled nats` exposes), provisions R3 streams and moves a
// draft through them.
func TestClusterR3(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var nodes []*Embedded
	for i := range ports {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
			}
		}
		n, err := StartEmbedded(ctx, EmbeddedConfig{ServerName: fmt.Sprintf("n%d", i), Port: -1, StoreDir: t.TempDir(),
			ClusterName: "sled-test", ClusterPort: ports[i], Routes: routes, Logger: testLogger(t, i)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Shutdown)
		nodes = append(nodes, n)
	}
	nc, js, err := Connect(ctx, nodes[0].ClientURL(), "cluster-test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Until the meta leader is elected requests go unanswered: retry with a
	// short timeout per attempt.
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err = ProvisionTopology(pctx, js, Topology{Replicas: 3, DLQMaxBytes: 16 << 20})
		pcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("provision R3: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, err := js.Stream(ctx, StreamDrafts)
	if err != nil {
		t.Fatal(err)
	}
	if info := st.CachedInfo(); info.Config.Replicas != 3 {
		t.Fatalf("replicas %d", info.Config.Replicas)
	}
	// A device on another node publishes; a consumer on the first gets it.
	_, djs, err := Connect(ctx, nodes[2].ClientURL(), "device")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewPublisher(djs, PublisherConfig{}).Publish(ctx, events.New("/sled/device/d1", draft("d1", "s1", 1))); err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(ctx, js, ConsumerConfig{Stream: StreamDrafts, Durable: "b", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(rctx, func(_ context.Context, ev *events.Event, _ jetstream.Msg) error {
			got <- ev.Data.(*events.DraftReady).SessionID
			return nil
		})
	}()
	if s := recv(t, got, 10*time.Second); s != "s1" {
		t.Fatal(s)
	}
	rcancel()
	<-done
}

func testLogger(t *testing.T, i int) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.Default().With("node", i)
}
