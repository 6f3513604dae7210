package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sled-project/sled/drafter"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/httpapi"
	"github.com/sled-project/sled/infra"
	"github.com/sled-project/sled/internal/testmodels"
	"github.com/sled-project/sled/internal/testwait"
	"github.com/sled-project/sled/services"
)

// The fleet deployment under test (TestClusterChaos), every part a process of
// the real binary, with NATS auth on:
//
//	n1 ─ n2 ─ n3           three `sled nats` hub nodes, one JetStream cluster, R3 streams
//	 │    │                leaf remotes: n1 and n2 (n3 listens for leaves too)
//	leaf                   `sled nats --leaf-remotes`: the edge site, no JetStream
//	 │  │  └── proxy       a TCP proxy the test can cut
//	dev-1 dev-2 dev-3      `sled drafter`, on the leaf (dev-3 through the proxy)
//
// and on the hub, each given all three node URLs: batcher-1, batcher-2 (sharing
// the drafts' durable consumer) and worker-1, worker-2 (`sled verifier`).

const (
	clusterTokens = 48 // max_tokens of every request
	clusterPool   = events.DefaultPool
	// deviceTimeout is the drafters' --timeout (RetryPolicy.Timeout).
	deviceTimeout = time.Second
	// verifierTimeout is the drafters' verifier timeout (no flag: the default).
	verifierTimeout = drafter.DefaultVerifierTimeout
	// noStreamTimeout is the drafters' --no-stream-timeout: above an R3
	// stream's leader election (raft's election timeout is 4 to 9 s, a split
	// vote takes another), so that a device rides over the loss of the node
	// leading SLED_DRAFTS (the default, the verifier timeout, would not).
	noStreamTimeout = 20 * time.Second
	// workerAckWait is the verifiers' AckWait (the default): a batch a killed
	// worker held is redelivered (and dropped as stale) after it.
	workerAckWait = 30 * time.Second
)

// proc is one process of the real binary, restartable with the same arguments.
type proc struct {
	name, bin, log string
	args           []string
	env            []string

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	runs  int
	ended bool // the test stopped it (kill); an exit otherwise is a crash
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.runs++
	fmt.Fprintf(f, "==== run %d at %s: sled %s\n", p.runs, time.Now().Format(time.StampMilli), strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), p.env...)
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.ended, p.err = cmd, done, false, nil
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
}

// kill sends SIGKILL (kill -9) and waits for the process to go.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.ended = true
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not die within 10s of SIGKILL", p.name)
	}
}

// crashed reports a process that exited without the test killing it.
func (p *proc) crashed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil || p.ended {
		return nil
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s exited on its own: %v", p.name, p.err)
	default:
		return nil
	}
}

func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// tail is the end of the process's log.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cutProxy forwards TCP connections to target until cut: then it drops every
// connection and closes each new one at once, until restored.
type cutProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	open  bool
	conns map[net.Conn]struct{}
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, open: true, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.open {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *cutProxy) serve(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil || !p.track(up) {
		c.Close()
		if up != nil {
			up.Close()
		}
		return
	}
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	go pipe(up, c)
	pipe(c, up)
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// cut drops every connection and refuses new ones.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = false
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	p.open = true
	p.mu.Unlock()
}

// fleet is the running deployment.
type fleet struct {
	t      *testing.T
	bin    string
	auth   string
	models string
	logs   string

	natsPorts, leafPorts [3]int
	hubURLs              string
	nodes                [3]*proc
	leaf                 *proc
	leafURL              string
	batchers, verifiers  [2]*proc
	batcherMetrics       [2]string
	verifierMetrics      [2]string
	devices              []*proc
	deviceAPI            []string
	deviceMetrics        []string
	proxy                *cutProxy // dev-3's link to the leaf

	admin *nats.Conn
	js    jetstream.JetStream

	// The target's own greedy outputs, by prompt index.
	ref    []outcome
	target *engine.Model
	all    []*proc
}

func (f *fleet) sled(args ...string) {
	f.t.Helper()
	cmd := exec.Command(f.bin, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		f.t.Fatalf("sled %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (f *fleet) spawn(name string, args ...string) *proc {
	f.t.Helper()
	p := &proc{name: name, bin: f.bin, log: filepath.Join(f.logs, name+".log"), args: args, env: []string{"SLED_MODEL_DIR=" + f.models}}
	f.all = append(f.all, p)
	p.start(f.t)
	return p
}

func (f *fleet) creds(id string) string { return filepath.Join(f.auth, id+".creds") }

func (f *fleet) issue(role, id string) {
	f.t.Helper()
	f.sled("creds", "issue", "--dir", f.auth, "--role", role, "--id", id, "--out", f.creds(id))
}

// startFleet builds the binary and starts the deployment; everything stops at
// the end of t.
func startFleet(t *testing.T) *fleet {
	dir := t.TempDir()
	f := &fleet{t: t, bin: filepath.Join(dir, "sled"), auth: filepath.Join(dir, "auth"), models: testmodels.Dir(), logs: filepath.Join(dir, "logs")}
	if err := os.MkdirAll(f.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if out, err := exec.Command("go", "build", "-o", f.bin, "../cmd/sled").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built sled in %s", time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() {
		for _, p := range f.all {
			p.kill(t)
		}
		if t.Failed() {
			for _, p := range f.all {
				t.Logf("---- %s (pid %d, %d runs), last lines:\n%s", p.name, p.pid(), p.runs, p.tail(25))
			}
		}
	})

	// The authority and one credential per identity.
	f.sled("creds", "init", "--dir", f.auth)
	f.issue("admin", "admin")
	f.issue("leaf", "edge-site")
	for i := 1; i <= 2; i++ {
		f.issue("batcher", fmt.Sprintf("batcher-%d", i))
		f.issue("verifier", fmt.Sprintf("worker-%d", i))
	}
	for i := 1; i <= 3; i++ {
		f.issue("device", fmt.Sprintf("dev-%d", i))
	}

	// Three hub nodes.
	var clusterPorts [3]int
	var urls []string
	for i := range 3 {
		f.natsPorts[i], clusterPorts[i], f.leafPorts[i] = freePort(t), freePort(t), freePort(t)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", f.natsPorts[i]))
	}
	f.hubURLs = strings.Join(urls, ",")
	for i := range 3 {
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", clusterPorts[j]))
			}
		}
		f.nodes[i] = f.spawn(fmt.Sprintf("n%d", i+1), "nats", "--name", fmt.Sprintf("n%d", i+1),
			"--port", fmt.Sprint(f.natsPorts[i]), "--cluster-name", "sled", "--cluster-port", fmt.Sprint(clusterPorts[i]),
			"--routes", strings.Join(routes, ","), "--replicas", "3", "--auth-dir", f.auth, "--creds", f.creds("admin"),
			"--store-dir", filepath.Join(dir, fmt.Sprintf("n%d", i+1)), "--leaf-port", fmt.Sprint(f.leafPorts[i]))
	}
	opts, err := infra.ClientAuth{Creds: f.creds("admin")}.Options()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return dialable(f.natsPorts[0]) && dialable(f.natsPorts[1]) && dialable(f.natsPorts[2]) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if f.admin, f.js, err = infra.Connect(ctx, f.hubURLs, "cluster-test-admin", opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.admin.Close)
	f.waitStreams(t, 60*time.Second)
	t.Logf("3-node cluster up, R3 streams provisioned, %s after the build", time.Since(began).Round(time.Millisecond))

	// The edge site: a leaf node of n1 and n2.
	leafPort := freePort(t)
	f.leafURL = fmt.Sprintf("nats://127.0.0.1:%d", leafPort)
	f.leaf = f.spawn("leaf", "nats", "--name", "leaf", "--port", fmt.Sprint(leafPort),
		"--leaf-remotes", fmt.Sprintf("nats-leaf://127.0.0.1:%d,nats-leaf://127.0.0.1:%d", f.leafPorts[0], f.leafPorts[1]),
		"--leaf-creds", f.creds("edge-site"), "--auth-dir", f.auth, "--provision=false", "--store-dir", filepath.Join(dir, "leaf"))

	// Services on the hub, each with every node's URL.
	for i := range 2 {
		f.batcherMetrics[i] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		f.batchers[i] = f.spawn(fmt.Sprintf("batcher-%d", i+1), "batcher", "--nats", f.hubURLs, "--replicas", "3",
			"--creds", f.creds(fmt.Sprintf("batcher-%d", i+1)), "--metrics-addr", f.batcherMetrics[i])
		f.verifierMetrics[i] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		name := fmt.Sprintf("worker-%d", i+1)
		f.verifiers[i] = f.spawn(name, "verifier", "--nats", f.hubURLs, "--replicas", "3", "--creds", f.creds(name),
			"--name", name, "--models", f.models, "--target", testmodels.Target, "--verifier-threads", "1",
			"--metrics-addr", f.verifierMetrics[i])
	}
	f.waitHeartbeats(t, 30*time.Second, "worker-1", "worker-2")

	// The devices on the leaf; dev-3 through the proxy.
	f.proxy = newCutProxy(t, fmt.Sprintf("127.0.0.1:%d", leafPort))
	drafts := []string{testmodels.Draft4L, testmodels.Draft3L, testmodels.Draft4L}
	for i := range 3 {
		id := fmt.Sprintf("dev-%d", i+1)
		url := f.leafURL
		if i == 2 {
			url = "nats://" + f.proxy.addr()
		}
		api := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		met := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		f.devices = append(f.devices, f.spawn(id, "drafter", "--nats", url, "--creds", f.creds(id), "--id", id,
			"--models", f.models, "--draft", drafts[i], "--http", api, "--threads", "1",
			"--timeout", deviceTimeout.String(), "--no-stream-timeout", noStreamTimeout.String(), "--metrics-addr", met))
		f.deviceAPI = append(f.deviceAPI, "http://"+api)
		f.deviceMetrics = append(f.deviceMetrics, met)
	}
	for i := range f.devices {
		f.waitReady(t, i, 30*time.Second)
	}
	t.Logf("fleet up: 3 hub nodes, a leaf, 2 batchers, 2 verifiers, 3 devices on the leaf, %s after the build", time.Since(began).Round(time.Millisecond))
	return f
}

func dialable(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// waitStreams waits until every SLED stream has 3 replicas, a leader and every
// follower current.
func (f *fleet) waitStreams(t *testing.T, timeout time.Duration) {
	t.Helper()
	var last string
	ok := testwait.Eventually(timeout, 200*time.Millisecond, func() bool {
		for _, name := range []string{infra.StreamDrafts, infra.StreamBatches, infra.StreamResults, infra.StreamDLQ} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := f.js.Stream(ctx, name)
			if err != nil {
				cancel()
				last = fmt.Sprintf("%s: %v", name, err)
				return false
			}
			info, err := st.Info(ctx)
			cancel()
			if err != nil {
				last = fmt.Sprintf("%s: %v", name, err)
				return false
			}
			if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
				last = fmt.Sprintf("%s: replicas %d, cluster %+v", name, info.Config.Replicas, info.Cluster)
				return false
			}
			for _, r := range info.Cluster.Replicas {
				if !r.Current || r.Offline {
					last = fmt.Sprintf("%s: replica %s current %v offline %v", name, r.Name, r.Current, r.Offline)
					return false
				}
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("SLED streams not R3 with every replica current after %s: %s", timeout, last)
	}
}

// streamLeader is the node leading stream name.
func (f *fleet) streamLeader(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := f.js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.Cluster.Leader
}

// waitHeartbeats waits until each named worker's heartbeat reaches the hub.
func (f *fleet) waitHeartbeats(t *testing.T, timeout time.Duration, workers ...string) {
	t.Helper()
	seen := make(chan string, 64)
	sub, err := f.admin.Subscribe(events.HeartbeatFilter(clusterPool), func(m *nats.Msg) {
		var h events.Heartbeat
		if json.Unmarshal(m.Data, &h) == nil {
			select {
			case seen <- h.Worker:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	want := map[string]bool{}
	for _, w := range workers {
		want[w] = true
	}
	deadline := time.After(timeout)
	for len(want) > 0 {
		select {
		case w := <-seen:
			delete(want, w)
		case <-deadline:
			t.Fatalf("no heartbeat from %v within %s", want, timeout)
		}
	}
}

// status is the HTTP status of GET path on device i.
func (f *fleet) status(i int, path string) int {
	r, err := http.Get(f.deviceAPI[i] + path)
	if err != nil {
		return 0
	}
	r.Body.Close()
	return r.StatusCode
}

func (f *fleet) waitReady(t *testing.T, i int, timeout time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	if !testwait.Eventually(timeout, 50*time.Millisecond, func() bool { return f.status(i, "/readyz") == http.StatusOK }) {
		t.Fatalf("dev-%d not ready within %s", i+1, timeout)
	}
	return time.Since(began)
}

// checkAlive fails t for any process that exited on its own.
func (f *fleet) checkAlive(t *testing.T) {
	t.Helper()
	for _, p := range f.all {
		if err := p.crashed(); err != nil {
			t.Errorf("%v:\n%s", err, p.tail(25))
		}
	}
}

// call is one completion request through a device's API.
type call struct {
	dev, prompt int
	began, end  time.Time
	status      int // HTTP status
	text        string
	finish      string
	usage       httpapi.Usage
	stats       httpapi.Stats
	apiErr      *httpapi.APIError // an error response, or an error event in the stream
	err         error             // transport or protocol failure
	chunks      int
	maxGap      time.Duration // longest wait for the next event (the first one included)
}

func (c *call) dur() time.Duration { return c.end.Sub(c.began) }
func (c *call) ok() bool {
	return c.err == nil && c.apiErr == nil && c.status == http.StatusOK
}

func (c *call) String() string {
	s := fmt.Sprintf("dev-%d prompt %d: %d in %s", c.dev+1, c.prompt, c.status, c.dur().Round(time.Millisecond))
	if c.apiErr != nil {
		s += fmt.Sprintf(" error %s/%s: %s", c.apiErr.Type, c.apiErr.Code, c.apiErr.Message)
	}
	if c.err != nil {
		s += fmt.Sprintf(" failed: %v", c.err)
	}
	return s
}

// complete asks device dev for prompt p (greedy, clusterTokens tokens), streamed
// or not; progress is called with the number of events so far.
func (f *fleet) complete(dev, p int, stream bool, progress func(int)) *call {
	c := &call{dev: dev, prompt: p, began: time.Now()}
	defer func() { c.end = time.Now() }()
	body, _ := json.Marshal(map[string]any{"prompt": prompts[p], "max_tokens": clusterTokens, "temperature": 0, "stream": stream})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", f.deviceAPI[dev]+"/v1/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.err = err
		return c
	}
	defer resp.Body.Close()
	c.status = resp.StatusCode
	type chunk struct {
		Choices []struct {
			Text         string  `json:"text"`
			FinishReason *string `json:"finish_reason"`
		} `json:"choices"`
		Usage *httpapi.Usage    `json:"usage"`
		SLED  *httpapi.Stats    `json:"sled"`
		Error *httpapi.APIError `json:"error"`
	}
	take := func(ch *chunk) {
		if ch.Error != nil {
			c.apiErr = ch.Error
		}
		for _, x := range ch.Choices {
			c.text += x.Text
			if x.FinishReason != nil {
				c.finish = *x.FinishReason
			}
		}
		if ch.Usage != nil {
			c.usage = *ch.Usage
		}
		if ch.SLED != nil {
			c.stats = *ch.SLED
		}
	}
	if !stream || resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			c.err = err
			return c
		}
		var ch chunk
		if err := json.Unmarshal(b, &ch); err != nil {
			c.err = fmt.Errorf("response %q: %w", b, err)
			return c
		}
		take(&ch)
		c.maxGap = time.Since(c.began)
		return c
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	last, done := c.began, false
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		now := time.Now()
		c.maxGap = max(c.maxGap, now.Sub(last))
		last = now
		if data == "[DONE]" {
			done = true
			break
		}
		var ch chunk
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			c.err = fmt.Errorf("event %q: %w", data, err)
			return c
		}
		take(&ch)
		c.chunks++
		if progress != nil {
			progress(c.chunks)
		}
	}
	if err := sc.Err(); err != nil {
		c.err = err
	} else if !done && c.apiErr == nil {
		c.err = errors.New("the stream ended without [DONE]")
	}
	return c
}

// unavailable reports whether c failed with the API's 503: the status, or an
// error event of type service_unavailable_error.
func (c *call) unavailable() bool {
	return c.err == nil && c.apiErr != nil && c.apiErr.Type == httpapi.TypeUnavailable &&
		(c.status == http.StatusServiceUnavailable || c.status == http.StatusOK)
}

// checkOutput fails t unless c's text is the target's own for its prompt (a
// difference is tolerated only at a logit near-tie, reported with its margin)
// and c has every token it asked for, all verified.
func (f *fleet) checkOutput(t *testing.T, c *call) {
	t.Helper()
	want := f.ref[c.prompt]
	wantText := f.target.Detokenize(want.tokens)
	if c.stats.UnverifiedTokens != 0 {
		t.Errorf("%s: %d unverified tokens in strict mode", c, c.stats.UnverifiedTokens)
	}
	if n := c.usage.CompletionTokens; n != clusterTokens && !(c.finish == "stop" && n == len(want.tokens)) {
		t.Errorf("%s: %d completion tokens (finish %q), want %d: a round lost or duplicated", c, n, c.finish, clusterTokens)
	}
	if c.text == wantText {
		return
	}
	// The first differing token: the longest prefix of the target's tokens
	// whose text begins the device's.
	j := 0
	for j < len(want.tokens) && strings.HasPrefix(c.text, f.target.Detokenize(want.tokens[:j+1])) {
		j++
	}
	if j == len(want.tokens) {
		t.Errorf("%s: output longer than the target's:\n got %q\nwant %q", c, c.text, wantText)
		return
	}
	prompt, _ := f.target.Tokenize(prompts[c.prompt], true)
	mg := margin(t, f.target, append(prompt, want.tokens[:j]...))
	t.Logf("%s: diverges from the target at token %d (target %q, device %q); target logit margin there %.2e",
		c, j, f.target.Detokenize(want.tokens[j:min(j+3, len(want.tokens))]), strings.TrimPrefix(c.text, f.target.Detokenize(want.tokens[:j])), mg)
	if mg > nearTie {
		t.Errorf("%s: output differs from the target's at token %d with a clear margin %.3f:\n got %q\nwant %q", c, j, mg, c.text, wantText)
	}
}

// load runs requests on devs, each device one after another through prompts,
// until stop is closed; every call is returned.
type load struct {
	f        *fleet
	mu       sync.Mutex
	calls    []*call
	stop     chan struct{}
	wg       sync.WaitGroup
	inflight []atomic.Int32 // events received by each device's request in progress; -1 between requests
	okAfter  func(c *call) bool
}

func (f *fleet) startLoad(devs []int, stream bool) *load {
	l := &load{f: f, stop: make(chan struct{}), inflight: make([]atomic.Int32, len(f.devices))}
	for _, d := range devs {
		l.inflight[d].Store(-1)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; ; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				p := (d + len(f.devices)*n) % len(prompts)
				l.inflight[d].Store(0)
				c := f.complete(d, p, stream, func(k int) { l.inflight[d].Store(int32(k)) })
				l.inflight[d].Store(-1)
				l.mu.Lock()
				l.calls = append(l.calls, c)
				l.mu.Unlock()
				if !c.ok() {
					select { // do not spin on a device that refuses at once
					case <-l.stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
		}()
	}
	return l
}

// midRun waits until every device of devs has finished a request and has one
// in progress that has streamed something.
func (l *load) midRun(t *testing.T, devs []int) {
	t.Helper()
	ok := testwait.Eventually(time.Minute, time.Millisecond, func() bool {
		l.mu.Lock()
		finished := map[int]bool{}
		for _, c := range l.calls {
			finished[c.dev] = true
		}
		l.mu.Unlock()
		for _, d := range devs {
			if !finished[d] || l.inflight[d].Load() < 1 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatal("the load made no progress in a minute")
	}
}

// succeeded counts each device's successful calls that began after since.
func (l *load) succeeded(since time.Time) map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := map[int]int{}
	for _, c := range l.calls {
		if c.ok() && !c.began.Before(since) {
			n[c.dev]++
		}
	}
	return n
}

// until waits until each device of devs has n successful calls begun after
// since (bounded by timeout), then stops the load and returns every call.
func (l *load) until(t *testing.T, devs []int, since time.Time, n int, timeout time.Duration) []*call {
	t.Helper()
	ok := testwait.Eventually(timeout, 20*time.Millisecond, func() bool {
		got := l.succeeded(since)
		for _, d := range devs {
			if got[d] < n {
				return false
			}
		}
		return true
	})
	close(l.stop)
	l.wg.Wait()
	if !ok {
		t.Errorf("devices %v did not each complete %d requests within %s of the fault: %v", devs, n, timeout, l.succeeded(since))
	}
	return l.calls
}

// phaseReport logs a phase's figures: requests, those caught by the fault (in
// progress at faultAt), their longest stall between streamed events and their
// duration against the baseline's median, and the devices' retries and resyncs.
func phaseReport(t *testing.T, what string, calls []*call, faultAt time.Time, baseline time.Duration) (caught []*call, stall time.Duration) {
	t.Helper()
	var maxGap, maxDur time.Duration
	retries, resyncs, failed := 0, 0, 0
	for _, c := range calls {
		retries += c.stats.Retries
		resyncs += c.stats.Resyncs
		if !c.ok() {
			failed++
		}
		if c.began.Before(faultAt) && c.end.After(faultAt) {
			caught = append(caught, c)
			maxGap, maxDur = max(maxGap, c.maxGap), max(maxDur, c.dur())
		}
	}
	t.Logf("%s: %d requests (%d failed), %d in progress at the fault; stall (longest wait between streamed events) %s, slowest caught request %s vs baseline median %s; %d retries, %d resyncs",
		what, len(calls), failed, len(caught), maxGap.Round(time.Millisecond), maxDur.Round(time.Millisecond), baseline.Round(time.Millisecond), retries, resyncs)
	for _, c := range caught {
		t.Logf("  caught: %s, %d events, longest gap %s, %d retries, %d resyncs, %d rounds", c, c.chunks, c.maxGap.Round(time.Millisecond), c.stats.Retries, c.stats.Resyncs, c.stats.Rounds)
	}
	return caught, maxGap
}

// stallWithin fails t when a fault stalled the streams longer than bound.
func stallWithin(t *testing.T, stall, bound time.Duration, why string) {
	t.Helper()
	if stall > bound {
		t.Errorf("the fault stalled the streams %s, more than %s (%s)", stall.Round(time.Millisecond), bound, why)
	}
}

// metricSum is counter name's total on the /metrics endpoint at addr.
func metricSum(t *testing.T, addr, name string) float64 {
	return getMetrics(t, addr).sum(name)
}

// busiest returns which of addrs moved counter name the most over d.
func busiest(t *testing.T, addrs []string, name string, d time.Duration) int {
	before := make([]float64, len(addrs))
	for i, a := range addrs {
		before[i] = metricSum(t, a, name)
	}
	time.Sleep(d)
	best, most := 0, -1.0
	for i, a := range addrs {
		if moved := metricSum(t, a, name) - before[i]; moved > most {
			best, most = i, moved
		}
	}
	return best
}

// roundsByOutcome reads a device's sled_rounds_total by outcome.
func roundsByOutcome(t *testing.T, addr string) string {
	m := getMetrics(t, addr)
	var parts []string
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, "sled_rounds_total{"); ok && v > 0 {
			i := strings.Index(rest, `outcome="`)
			if i < 0 {
				continue
			}
			o := rest[i+len(`outcome="`):]
			o = o[:strings.IndexByte(o, '"')]
			parts = append(parts, fmt.Sprintf("%s=%v", o, v))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// batchesDiag logs SLED_BATCHES's consumers and the batches left on the
// subjects of left.
func (f *fleet) batchesDiag(t *testing.T, left map[string]uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bs, err := f.js.Stream(ctx, infra.StreamBatches)
	if err != nil {
		t.Logf("SLED_BATCHES: %v", err)
		return
	}
	lister := bs.ListConsumers(ctx)
	for ci := range lister.Info() {
		t.Logf("consumer %s (filter %v): pending %d, ack pending %d, redelivered %d, waiting %d, delivered %d, ack floor %d, leader %s",
			ci.Name, ci.Config.FilterSubjects, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Delivered.Stream, ci.AckFloor.Stream, ci.Cluster.Leader)
	}
	for subj := range left {
		m, err := bs.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			t.Logf("%s: %v", subj, err)
			continue
		}
		t.Logf("left on %s: seq %d stored %s (%s ago), ce-id %s", subj, m.Sequence, m.Time.Format(time.StampMilli), time.Since(m.Time).Round(time.Millisecond), m.Header.Get("ce-id"))
	}
}

func medianDur(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestClusterChaos runs the fleet deployment (three `sled nats` nodes with R3
// streams, a leaf node for the edge site, two batchers, two verifiers, three
// devices on the leaf; auth on) as processes of the real binary and injects,
// one after another, while every device streams completions: kill -9 of one of
// two verifiers, of the busier batcher, of the NATS node leading SLED_DRAFTS; a
// device cut off from the leaf (a TCP proxy) for longer than its verifier
// timeout; and every verifier gone. Every completion is the target's own text
// (a difference only at a logit near-tie, with its margin), of max_tokens
// tokens, all verified: no round lost or duplicated. Each fault's stall is
// reported.
func TestClusterChaos(t *testing.T) {
	began := time.Now()
	// The target's own outputs (the centralized baseline, as reference() does).
	central := start(t, services.UpConfig{Mode: services.ModeCentralized, Devices: 1})
	ref := runAll(t, central, prompts, clusterTokens)
	central.Close()
	target, err := engine.LoadModel(testmodels.Path(t, testmodels.Target), engine.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()

	f := startFleet(t)
	f.ref, f.target = ref, target
	all := []int{0, 1, 2}
	checkAll := func(t *testing.T, calls []*call, mayFail func(*call) bool) {
		t.Helper()
		for _, c := range calls {
			switch {
			case c.ok():
				f.checkOutput(t, c)
			case mayFail != nil && mayFail(c):
			default:
				t.Errorf("%s", c)
			}
		}
		f.checkAlive(t)
	}

	// (a) Baseline through the leaf: every prompt once, the devices at once.
	var baseline time.Duration
	t.Run("baseline", func(t *testing.T) {
		var mu sync.Mutex
		var calls []*call
		var wg sync.WaitGroup
		for d := range all {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := d; p < len(prompts); p += len(all) {
					c := f.complete(d, p, true, nil)
					mu.Lock()
					calls = append(calls, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		checkAll(t, calls, nil)
		var durs []time.Duration
		var gap time.Duration
		rounds, resyncs := 0, 0
		for _, c := range calls {
			durs = append(durs, c.dur())
			gap = max(gap, c.maxGap)
			rounds += c.stats.Rounds
			resyncs += c.stats.Resyncs
		}
		baseline = medianDur(durs)
		t.Logf("baseline: %d prompts x %d tokens through the leaf in %d rounds (%d resyncs); median request %s, longest gap between events %s",
			len(calls), clusterTokens, rounds, resyncs, baseline, gap.Round(time.Millisecond))
	})
	if t.Failed() {
		t.FailNow()
	}

	var lastKill time.Time // of a verifier: the batches it held wait out workerAckWait
	// (b) kill -9 the busier of the two verifiers mid-run.
	t.Run("verifier-killed", func(t *testing.T) {
		l := f.startLoad(all, true)
		l.midRun(t, all)
		v := busiest(t, f.verifierMetrics[:], "sled_verifier_drafts_total", 300*time.Millisecond)
		l.midRun(t, all)
		faultAt := time.Now()
		f.verifiers[v].kill(t)
		lastKill = time.Now()
		calls := l.until(t, all, time.Now(), 2, time.Minute)
		caught, stall := phaseReport(t, fmt.Sprintf("kill -9 %s", f.verifiers[v].name), calls, faultAt, baseline)
		checkAll(t, calls, nil)
		stallWithin(t, stall, 3*time.Second+2*deviceTimeout+3*time.Second, "the batchers' heartbeat timeout, then a round timeout and a resync")
		if len(caught) == 0 {
			t.Error("no request was in progress at the fault")
		}
		f.verifiers[v].start(t)
		f.waitHeartbeats(t, 30*time.Second, f.verifiers[v].name)
	})

	// (c) kill -9 the busier of the two batchers mid-run.
	t.Run("batcher-killed", func(t *testing.T) {
		l := f.startLoad(all, true)
		l.midRun(t, all)
		b := busiest(t, f.batcherMetrics[:], "sled_batcher_drafts_total", 300*time.Millisecond)
		l.midRun(t, all)
		faultAt := time.Now()
		f.batchers[b].kill(t)
		calls := l.until(t, all, time.Now(), 2, time.Minute)
		caught, stall := phaseReport(t, fmt.Sprintf("kill -9 %s", f.batchers[b].name), calls, faultAt, baseline)
		checkAll(t, calls, nil)
		stallWithin(t, stall, 2*deviceTimeout+3*time.Second, "a round timeout: the other batcher takes the resent rounds")
		if len(caught) == 0 {
			t.Error("no request was in progress at the fault")
		}
		f.batchers[b].start(t)
	})

	// (d) kill -9 the NATS node leading SLED_DRAFTS: the R3 streams elect new
	// leaders on the two left, clients on it move to them.
	t.Run("nats-node-killed", func(t *testing.T) {
		leader := f.streamLeader(t, infra.StreamDrafts)
		var node *proc
		for _, n := range f.nodes {
			if n.name == leader {
				node = n
			}
		}
		if node == nil {
			t.Fatalf("SLED_DRAFTS leader %q is none of the nodes", leader)
		}
		l := f.startLoad(all, true)
		l.midRun(t, all)
		faultAt := time.Now()
		node.kill(t)
		calls := l.until(t, all, time.Now(), 2, time.Minute)
		caught, stall := phaseReport(t, fmt.Sprintf("kill -9 %s (leader of SLED_DRAFTS; leaf remotes n1, n2)", node.name), calls, faultAt, baseline)
		checkAll(t, calls, nil)
		stallWithin(t, stall, noStreamTimeout, "the R3 streams' and consumers' leader elections")
		if len(caught) == 0 {
			t.Error("no request was in progress at the fault")
		}
		t.Logf("SLED_DRAFTS now led by %s", f.streamLeader(t, infra.StreamDrafts))
		back := time.Now()
		node.start(t)
		f.waitStreams(t, time.Minute)
		t.Logf("%s back and every R3 replica current %s after its restart", node.name, time.Since(back).Round(time.Millisecond))
	})

	// (e) cut dev-3 off the leaf for longer than its verifier timeout, then
	// restore the link.
	t.Run("device-cut-off", func(t *testing.T) {
		const cutFor = verifierTimeout + 2*time.Second
		const dev = 2
		l := f.startLoad(all, true)
		l.midRun(t, all)
		faultAt := time.Now()
		f.proxy.cut()
		time.Sleep(cutFor)
		f.proxy.restore()
		restored := time.Now()
		ready := f.waitReady(t, dev, 30*time.Second)
		calls := l.until(t, all, time.Now(), 2, time.Minute)
		_, _ = phaseReport(t, fmt.Sprintf("dev-3 cut off for %s", cutFor), calls, faultAt, baseline)
		t.Logf("dev-3 ready %s after the link was restored", ready.Round(time.Millisecond))
		// A request of dev-3 caught by the cut completes with the target's
		// text, or ends with a 503 within the verifier timeout plus two round
		// timeouts of the cut (or at once, for one begun during it).
		bound := verifierTimeout + 2*deviceTimeout + time.Second
		failed := 0
		checkAll(t, calls, func(c *call) bool {
			if c.dev != dev || !c.unavailable() {
				return false
			}
			failed++
			from := c.began
			if from.Before(faultAt) {
				from = faultAt
			}
			if c.end.After(restored.Add(time.Second)) || c.end.Sub(from) > bound {
				t.Errorf("%s: the 503 came %s into the cut (bound %s), or after the link was back", c, c.end.Sub(from).Round(time.Millisecond), bound)
			}
			return true
		})
		var first *call
		for _, c := range calls {
			if c.dev == dev && !c.ok() && (first == nil || c.end.Before(first.end)) {
				first = c
			}
		}
		if first != nil {
			t.Logf("dev-3: %d requests ended with 503 during the cut, the first %s after the cut began: %s", failed, first.end.Sub(faultAt).Round(time.Millisecond), first.apiErr.Message)
		} else {
			t.Logf("dev-3: no request failed: its requests in the cut completed after the link was back")
		}
		t.Logf("dev-3 rounds: %s", roundsByOutcome(t, f.deviceMetrics[dev]))
	})

	// (f) every verifier killed: a 503 within the bound, /readyz 503; then one
	// verifier back and the target's text again. dev-2 and dev-3 stream under
	// load; dev-1 gets single requests (a device serves one at a time).
	t.Run("all-verifiers-killed", func(t *testing.T) {
		loaded := []int{1, 2}
		bound := verifierTimeout + 2*deviceTimeout + time.Second
		l := f.startLoad(loaded, true)
		l.midRun(t, loaded)
		faultAt := time.Now()
		for _, v := range f.verifiers {
			v.kill(t)
		}
		lastKill = time.Now()
		// A new request, not streamed: the pool still looks served (the last
		// heartbeat is recent), so it starts and must end with a 503.
		c := f.complete(0, 0, false, nil)
		t.Logf("request just after the verifiers died: %s", c)
		if !c.unavailable() || c.status != http.StatusServiceUnavailable || c.dur() > bound {
			t.Errorf("with no verifier: %s; want a 503 service_unavailable_error within %s", c, bound)
		}
		for d := range all {
			if !testwait.Eventually(bound, 50*time.Millisecond, func() bool { return f.status(d, "/readyz") == http.StatusServiceUnavailable }) {
				t.Errorf("dev-%d /readyz still %d %s after every verifier died", d+1, f.status(d, "/readyz"), bound)
			}
		}
		c = f.complete(0, 1, false, nil)
		t.Logf("request once /readyz is 503: %s", c)
		if c.status != http.StatusServiceUnavailable || c.apiErr == nil || c.apiErr.Type != httpapi.TypeUnavailable || c.dur() > time.Second {
			t.Errorf("with no verifier and /readyz 503: %s; want a 503 service_unavailable_error at once", c)
		}
		down := time.Since(faultAt)
		f.verifiers[0].start(t)
		back := time.Now()
		for d := range all {
			f.waitReady(t, d, 30*time.Second)
		}
		t.Logf("every device ready %s after worker-1 restarted (the pool had no verifier for %s)", time.Since(back).Round(time.Millisecond), down.Round(time.Millisecond))
		calls := l.until(t, loaded, back, 2, time.Minute)
		_, _ = phaseReport(t, "kill -9 of both verifiers", calls, faultAt, baseline)
		var slowest time.Duration
		checkAll(t, calls, func(c *call) bool {
			if !c.unavailable() || c.end.After(back.Add(time.Second)) {
				return false
			}
			from := c.began
			if from.Before(faultAt) {
				from = faultAt
			}
			slowest = max(slowest, c.end.Sub(from))
			if c.end.Sub(from) > bound {
				t.Errorf("%s: the 503 came %s after the verifiers died (bound %s)", c, c.end.Sub(from).Round(time.Millisecond), bound)
			}
			return true
		})
		t.Logf("longest wait for a 503 under load while the pool had no verifier: %s (bound %s)", slowest.Round(time.Millisecond), bound)
		c = f.complete(0, 3, true, nil)
		t.Logf("dev-1 after the recovery: %s", c)
		checkAll(t, []*call{c}, nil)
		f.verifiers[1].start(t)
		f.waitHeartbeats(t, 30*time.Second, "worker-1", "worker-2")
	})

	// Nothing is left behind: every draft acknowledged, every batch consumed
	// (those a killed worker held once redelivered, after its AckWait).
	var di *jetstream.ConsumerInfo
	var bi *jetstream.StreamInfo
	settle := max(10*time.Second, time.Until(lastKill.Add(workerAckWait+10*time.Second)))
	idleFrom := time.Now()
	idle := testwait.Eventually(settle, 100*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dc, err := f.js.Consumer(ctx, infra.StreamDrafts, "batcher-"+clusterPool)
		if err != nil {
			return false
		}
		if di, err = dc.Info(ctx); err != nil {
			return false
		}
		bs, err := f.js.Stream(ctx, infra.StreamBatches)
		if err != nil {
			return false
		}
		if bi, err = bs.Info(ctx); err != nil {
			return false
		}
		return di.NumAckPending == 0 && di.NumPending == 0 && bi.State.Msgs == 0
	})
	if !idle {
		if di != nil && bi != nil {
			var left map[string]uint64
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if bs, err := f.js.Stream(ctx, infra.StreamBatches); err == nil {
				if info, err := bs.Info(ctx, jetstream.WithSubjectFilter(">")); err == nil {
					left = info.State.Subjects
				}
			}
			cancel()
			t.Errorf("server not idle: drafts pending %d, unacked %d, batches stored %d %v", di.NumPending, di.NumAckPending, bi.State.Msgs, left)
			f.batchesDiag(t, left)
		} else {
			t.Error("server not idle: no consumer or stream info")
		}
	}
	if idle {
		t.Logf("server idle %s after the last phase: every draft acknowledged, every batch consumed", time.Since(idleFrom).Round(time.Millisecond))
	}
	for i := range f.devices {
		t.Logf("dev-%d rounds over the run: %s", i+1, roundsByOutcome(t, f.deviceMetrics[i]))
	}
	t.Logf("cluster chaos: %s in all", time.Since(began).Round(time.Millisecond))
}
