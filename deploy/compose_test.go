// Package deploy holds the container deployment's support files
// (docker-compose.yml at the top of the repository, the Dockerfile, the
// OpenTelemetry collector's and Prometheus's configurations, the image's
// health probe) and the test that keeps them consistent with the code.
package deploy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v4"
)

const (
	composeFile = "../docker-compose.yml"
	sledImage   = "sled:local"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// sledBinary builds cmd/sled once per test run (Go's build cache makes it
// quick after the first time; run under `eval $(make -s env)` to share the
// Makefile's cache keys).
func sledBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sled-deploy-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "sled")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/sled").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// flagSpec maps a subcommand's long flag names to whether each takes a value.
type flagSpec map[string]bool

var flagLine = regexp.MustCompile(`^\s+(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)(?: (\S.*?))?\s{2,}\S`)

// helpFlags runs `sled <path...> --help` and reads its flags (the global ones
// too) from cobra's usage text.
func helpFlags(t *testing.T, bin string, path ...string) flagSpec {
	t.Helper()
	out, err := exec.Command(bin, append(slices.Clone(path), "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("sled %s --help: %v\n%s", strings.Join(path, " "), err, out)
	}
	spec := flagSpec{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			spec[m[1]] = m[2] != ""
		}
	}
	if len(spec) < 2 || !spec["log-level"] {
		t.Fatalf("sled %s --help: no flags read from\n%s", strings.Join(path, " "), out)
	}
	return spec
}

// invocation is one sled command line: its subcommand, flags and arguments.
type invocation struct {
	sub   string // "nats", "creds issue", ...
	flags map[string][]string
	args  []string
}

func (inv invocation) has(name string) bool { return len(inv.flags[name]) > 0 }

// one returns the single value of a flag ("" when absent).
func (inv invocation) one(t *testing.T, where, name string) string {
	t.Helper()
	v := inv.flags[name]
	if len(v) > 1 {
		t.Errorf("%s: --%s given %d times", where, name, len(v))
	}
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// list returns a comma-separated (or repeated) flag's values.
func (inv invocation) list(name string) []string {
	var out []string
	for _, v := range inv.flags[name] {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// specs caches the flags of each subcommand.
type specs struct {
	t    *testing.T
	bin  string
	subs map[string]flagSpec
}

func (s *specs) of(sub string) flagSpec {
	if f, ok := s.subs[sub]; ok {
		return f
	}
	f := helpFlags(s.t, s.bin, strings.Fields(sub)...)
	s.subs[sub] = f
	return f
}

// parse reads a sled command line (without the program name), checking every
// flag against the subcommand's --help.
func (s *specs) parse(where string, argv []string) invocation {
	t := s.t
	t.Helper()
	if len(argv) == 0 {
		t.Fatalf("%s: empty sled command", where)
	}
	n := 1
	if argv[0] == "creds" || argv[0] == "model" {
		n = 2
	}
	if len(argv) < n {
		t.Fatalf("%s: sled %v: no subcommand", where, argv)
	}
	inv := invocation{sub: strings.Join(argv[:n], " "), flags: map[string][]string{}}
	spec := s.of(inv.sub)
	for i := n; i < len(argv); i++ {
		a := argv[i]
		if !strings.HasPrefix(a, "--") {
			inv.args = append(inv.args, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		takes, ok := spec[name]
		if !ok {
			t.Errorf("%s: sled %s has no flag --%s (see sled %s --help)", where, inv.sub, name, inv.sub)
			continue
		}
		switch {
		case hasVal:
		case takes && i+1 < len(argv):
			i++
			val = argv[i]
		case takes:
			t.Errorf("%s: --%s needs a value", where, name)
		default:
			val = "true"
		}
		inv.flags[name] = append(inv.flags[name], val)
	}
	return inv
}

// loadCompose loads docker-compose.yml with the Compose specification's own
// loader, schema validation and consistency checks on, interpolating with an
// empty environment so that every ${VAR:-default} takes its default.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{composeFile},
		cli.WithWorkingDirectory(".."),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
		cli.WithLoadOptions(func(o *loader.Options) {
			o.SkipValidation = false
			o.SkipConsistencyCheck = false
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("loading %s: %v", composeFile, err)
	}
	return p
}

// mountOf finds the volume mount of svc that holds path (the longest target
// that is a prefix of it) and returns the volume's name and path's place
// inside the volume.
func mountOf(svc types.ServiceConfig, path string) (volume, rel string, ro, ok bool) {
	best := -1
	for _, m := range svc.Volumes {
		if m.Type != types.VolumeTypeVolume {
			continue
		}
		r, err := filepath.Rel(m.Target, path)
		if err != nil || r == ".." || strings.HasPrefix(r, "../") {
			continue
		}
		if len(m.Target) <= best {
			continue
		}
		best = len(m.Target)
		if m.Volume != nil && m.Volume.Subpath != "" {
			r = filepath.Join(m.Volume.Subpath, r)
		}
		volume, rel, ro, ok = m.Source, filepath.Clean(r), m.ReadOnly, true
	}
	return
}

// identity is one credential the creds service issues.
type identity struct {
	role, id string
	volume   string // where its .creds file is written
	rel      string // its path inside that volume
}

// credsScript reads the creds service's script: the identities it issues and
// where it copies the trust files.
type credsScript struct {
	authority string // --dir of sled creds
	issued    []identity
	trustDir  string // where operator.jwt, system.jwt, account.jwt are copied
}

var (
	issueLine  = regexp.MustCompile(`(?m)^\s*issue\s+(\S+)\s+(\S+)\s*$`)
	outAssign  = regexp.MustCompile(`(?m)^\s*f=(\S+)\s*$`)
	jwtLoop    = regexp.MustCompile(`(?m)^\s*for j in operator system account; do\s*$`)
	trustMove  = regexp.MustCompile(`(?m)^\s*mv (\S+)/\.\$j\.jwt\.tmp (\S+)/\$j\.jwt\s*$`)
	sledInLine = regexp.MustCompile(`(?m)^\s*sled (.*)$`)
)

func parseCredsService(t *testing.T, s *specs, svc types.ServiceConfig) credsScript {
	t.Helper()
	if !slices.Equal([]string(svc.Entrypoint), []string{"/bin/sh", "-euc"}) || len(svc.Command) != 1 {
		t.Fatalf("creds: want entrypoint [/bin/sh -euc] and a one-string script, got %q %q", svc.Entrypoint, svc.Command)
	}
	script := svc.Command[0]
	var cs credsScript
	var issueInv *invocation
	for _, m := range sledInLine.FindAllStringSubmatch(script, -1) {
		var argv []string
		for _, w := range strings.Fields(m[1]) {
			argv = append(argv, strings.Trim(w, `"'`))
		}
		inv := s.parse("creds script", argv)
		switch inv.sub {
		case "creds init", "creds list":
		case "creds issue":
			issueInv = &inv
		default:
			t.Errorf("creds script runs sled %s", inv.sub)
		}
		if d := inv.one(t, "creds script", "dir"); cs.authority == "" {
			cs.authority = d
		} else if d != cs.authority {
			t.Errorf("creds script: --dir %s and %s", cs.authority, d)
		}
	}
	if issueInv == nil {
		t.Fatal("creds script never runs sled creds issue")
	}
	if r, id, out := issueInv.one(t, "creds", "role"), issueInv.one(t, "creds", "id"), issueInv.one(t, "creds", "out"); r != "$1" || id != "$2" || out != "$f" {
		t.Fatalf(`creds script: want sled creds issue --role "$1" --id "$2" --out "$f", got --role %s --id %s --out %s`, r, id, out)
	}
	tmpl := outAssign.FindStringSubmatch(script)
	if tmpl == nil || !strings.Contains(script, `if [ -s "$f" ]`) {
		t.Fatalf("creds script: want f=PATH and an `if [ -s \"$f\" ]` guard (issue only when missing):\n%s", script)
	}
	for _, m := range issueLine.FindAllStringSubmatch(script, -1) {
		role, id := m[1], m[2]
		path := strings.ReplaceAll(tmpl[1], "$2", id)
		vol, rel, _, ok := mountOf(svc, path)
		if !ok {
			t.Fatalf("creds: %s is not on a volume", path)
		}
		cs.issued = append(cs.issued, identity{role: role, id: id, volume: vol, rel: rel})
	}
	if len(cs.issued) == 0 {
		t.Fatal("creds script issues nothing")
	}
	if !jwtLoop.MatchString(script) {
		t.Fatal("creds script: want `for j in operator system account; do` copying the trust files")
	}
	if mv := trustMove.FindStringSubmatch(script); mv == nil || mv[1] != mv[2] {
		t.Fatalf("creds script: want the trust files renamed into place (mv DIR/.$j.jwt.tmp DIR/$j.jwt):\n%s", script)
	} else {
		cs.trustDir = mv[1]
	}
	if !strings.Contains(script, "cp "+cs.authority+"/$j.jwt "+cs.trustDir+"/.$j.jwt.tmp") {
		t.Errorf("creds script: want the trust files copied from %s", cs.authority)
	}
	return cs
}

// hostPort splits a URL's host and port.
func hostPort(t *testing.T, where, raw, scheme string) (string, int) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != scheme {
		t.Fatalf("%s: %q is not a %s:// URL", where, raw, scheme)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("%s: %q has no port", where, raw)
	}
	return u.Hostname(), port
}

func listenPort(t *testing.T, where, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, addr, err)
	}
	return h, port
}

func sortedSet(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return slices.Compact(s)
}

// TestComposeTopology loads docker-compose.yml with compose-go and checks the
// deployment it describes: the three-node cluster routing to each other with
// R3 streams, the leaf on all three hubs, two batchers and two verifiers on
// the hub, three devices with different drafts on the leaf, every role under
// its own credential as the creds service issues it, no NATS server without
// auth, telemetry wired to the collector and every metrics endpoint scraped by
// Prometheus, and every flag a real flag of the sled binary.
func TestComposeTopology(t *testing.T) {
	bin := sledBinary(t)
	p := loadCompose(t)
	s := &specs{t: t, bin: bin, subs: map[string]flagSpec{}}

	want := []string{"creds", "models", "nats-1", "nats-2", "nats-3", "leaf", "batcher-1", "batcher-2",
		"verifier-1", "verifier-2", "device-1", "device-2", "device-3", "otel-collector", "prometheus"}
	for _, name := range want {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("service %s missing", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The credentials.
	cs := parseCredsService(t, s, p.Services["creds"])
	byPlace := map[string]identity{}
	ids := map[string]bool{}
	for _, c := range cs.issued {
		if ids[c.id] {
			t.Errorf("creds issues %s twice", c.id)
		}
		ids[c.id] = true
		byPlace[c.volume+":"+c.rel] = c
	}
	if v, _, _, ok := mountOf(p.Services["creds"], cs.authority); !ok || v == "" {
		t.Errorf("creds: the authority %s is not on a volume", cs.authority)
	} else {
		for name, svc := range p.Services {
			if name == "creds" {
				continue
			}
			for _, m := range svc.Volumes {
				if m.Source == v {
					t.Errorf("%s mounts the authority volume %s (its keys are secret: only creds may)", name, v)
				}
			}
		}
	}
	trustVol, trustRel, _, ok := mountOf(p.Services["creds"], cs.trustDir)
	if !ok {
		t.Fatalf("creds: the trust directory %s is not on a volume", cs.trustDir)
	}
	used := map[string]bool{}
	// credOf resolves a service's credential flag to the identity issued there.
	credOf := func(name, path, role string) identity {
		t.Helper()
		vol, rel, ro, ok := mountOf(p.Services[name], path)
		if !ok {
			t.Errorf("%s: credential %s is not on a volume", name, path)
			return identity{}
		}
		if !ro {
			t.Errorf("%s: credential %s is mounted read-write", name, path)
		}
		c, ok := byPlace[vol+":"+rel]
		if !ok {
			t.Errorf("%s: %s (volume %s, %s) is not a credential the creds service issues", name, path, vol, rel)
			return identity{}
		}
		if c.role != role {
			t.Errorf("%s: %s is a %s credential (%s), want a %s one", name, path, c.role, c.id, role)
		}
		used[c.id] = true
		deps := p.Services[name].DependsOn["creds"]
		if deps.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s: want depends_on creds: service_completed_successfully, got %q", name, deps.Condition)
		}
		// Each service sees its own credential only.
		for _, m := range p.Services[name].Volumes {
			if m.Source == vol && (m.Volume == nil || m.Volume.Subpath == "") {
				t.Errorf("%s mounts all of the %s volume: every identity's credential, not only its own", name, vol)
			}
		}
		return c
	}
	trusted := func(name string, inv invocation) {
		t.Helper()
		dir := inv.one(t, name, "auth-dir")
		if dir == "" {
			t.Errorf("%s: sled nats without --auth-dir", name)
			return
		}
		if v, rel, ro, ok := mountOf(p.Services[name], dir); !ok || v != trustVol || rel != trustRel || !ro {
			t.Errorf("%s: --auth-dir %s is not the trust files the creds service copies (volume %s %s, read-only), got %s %s read-only %v",
				name, dir, trustVol, trustRel, v, rel, ro)
		}
	}

	// Every sled service's command line, checked against the binary's flags.
	invs := map[string]invocation{}
	for name, svc := range p.Services {
		if svc.Image != sledImage {
			continue
		}
		if svc.Build == nil || filepath.Base(svc.Build.Dockerfile) != "Dockerfile" {
			t.Errorf("%s: the sled image without its build (./Dockerfile)", name)
		}
		if name == "creds" {
			continue
		}
		if len(svc.Entrypoint) != 0 {
			t.Errorf("%s: entrypoint %q overrides the image's (sled)", name, svc.Entrypoint)
		}
		invs[name] = s.parse(name, svc.Command)
	}
	bySub := map[string][]string{}
	for name, inv := range invs {
		bySub[inv.sub] = append(bySub[inv.sub], name)
	}
	for _, names := range bySub {
		sort.Strings(names)
	}

	// NATS: three hubs and a leaf, all with auth.
	var hubs, leaves []string
	for _, name := range bySub["nats"] {
		inv := invs[name]
		trusted(name, inv)
		if inv.has("insecure-no-auth") {
			t.Errorf("%s: --insecure-no-auth", name)
		}
		if h := inv.one(t, name, "host"); h != "0.0.0.0" {
			t.Errorf("%s: --host %q, want 0.0.0.0 (the other containers reach it on the network)", name, h)
		}
		if svc := p.Services[name]; svc.HealthCheck == nil || !slices.Equal([]string(svc.HealthCheck.Test), []string{"CMD", "sled-healthcheck", "nats", inv.one(t, name, "port")}) {
			t.Errorf("%s: want healthcheck [CMD sled-healthcheck nats %s]", name, inv.one(t, name, "port"))
		}
		if inv.has("leaf-remotes") {
			leaves = append(leaves, name)
		} else {
			hubs = append(hubs, name)
		}
	}
	if len(hubs) != 3 || len(leaves) != 1 {
		t.Fatalf("NATS servers: hubs %v, leaves %v; want 3 and 1", hubs, leaves)
	}
	routeURL := map[string]string{}
	clientURLs, leafURLs := []string{}, []string{}
	for _, h := range hubs {
		inv := invs[h]
		routeURL[h] = "nats-route://" + h + ":" + inv.one(t, h, "cluster-port")
		clientURLs = append(clientURLs, "nats://"+h+":"+inv.one(t, h, "port"))
		leafURLs = append(leafURLs, "nats-leaf://"+h+":"+inv.one(t, h, "leaf-port"))
	}
	clientURLs, leafURLs = sortedSet(clientURLs), sortedSet(leafURLs)
	names, clusters, stores := map[string]bool{}, map[string]bool{}, map[string]string{}
	for _, h := range hubs {
		inv := invs[h]
		if n := inv.one(t, h, "name"); n == "" || names[n] {
			t.Errorf("%s: --name %q empty or not unique", h, n)
		} else {
			names[n] = true
		}
		clusters[inv.one(t, h, "cluster-name")] = true
		var others []string
		for _, o := range hubs {
			if o != h {
				others = append(others, routeURL[o])
			}
		}
		if got := sortedSet(inv.list("routes")); !slices.Equal(got, sortedSet(others)) {
			t.Errorf("%s: --routes %v, want the other two nodes %v", h, got, others)
		}
		if r := inv.one(t, h, "replicas"); r != "3" {
			t.Errorf("%s: --replicas %q, want 3", h, r)
		}
		if lp := inv.one(t, h, "leaf-port"); lp != "7422" {
			t.Errorf("%s: --leaf-port %q, want 7422", h, lp)
		}
		if st := inv.one(t, h, "store-dir"); st == "" {
			t.Errorf("%s: no --store-dir", h)
		} else if v, _, ro, ok := mountOf(p.Services[h], st); !ok || ro {
			t.Errorf("%s: --store-dir %s is not on a writable volume", h, st)
		} else if prev, dup := stores[v]; dup {
			t.Errorf("%s and %s share the store volume %s", prev, h, v)
		} else {
			stores[v] = h
		}
		// A hub provisions the streams: with auth on and only the public
		// trust files, it needs an admin credential.
		credOf(h, inv.one(t, h, "creds"), "admin")
		if inv.has("provision") && inv.one(t, h, "provision") != "true" {
			t.Errorf("%s: --provision=%s", h, inv.one(t, h, "provision"))
		}
		if d := p.Services[h].DependsOn["creds"]; d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s: want depends_on creds: service_completed_successfully", h)
		}
	}
	if len(clusters) != 1 || clusters[""] {
		t.Errorf("hubs' --cluster-name: %v, want one name", clusters)
	}

	leaf := leaves[0]
	linv := invs[leaf]
	if got := sortedSet(linv.list("leaf-remotes")); !slices.Equal(got, leafURLs) {
		t.Errorf("%s: --leaf-remotes %v, want all three hubs %v", leaf, got, leafURLs)
	}
	credOf(leaf, linv.one(t, leaf, "leaf-creds"), "leaf")
	if v := linv.one(t, leaf, "provision"); v != "false" {
		t.Errorf("%s: --provision=%q, want false (a leaf runs no JetStream)", leaf, v)
	}
	leafURL := "nats://" + leaf + ":" + linv.one(t, leaf, "port")

	// dependsHealthy checks that name waits for each server it dials to be healthy.
	dependsHealthy := func(name string, urls []string) {
		t.Helper()
		for _, u := range urls {
			host, _ := hostPort(t, name, u, strings.SplitN(u, ":", 2)[0])
			if d := p.Services[name].DependsOn[host]; d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: want depends_on %s: service_healthy, got %q", name, host, d.Condition)
			}
		}
	}
	dependsHealthy(leaf, leafURLs)

	networksOf := func(name string) []string {
		var out []string
		for n := range p.Services[name].Networks {
			out = append(out, n)
		}
		return out
	}
	hubNets := map[string]bool{}
	for _, h := range hubs {
		for _, n := range networksOf(h) {
			hubNets[n] = true
		}
	}

	// Batchers and verifiers on the hub.
	for _, sub := range []string{"batcher", "verifier"} {
		if got := len(bySub[sub]); got != 2 {
			t.Errorf("%d %ss (%v), want 2", got, sub, bySub[sub])
		}
		for _, name := range bySub[sub] {
			inv := invs[name]
			if got := sortedSet(inv.list("nats")); !slices.Equal(got, clientURLs) {
				t.Errorf("%s: --nats %v, want the three hubs %v", name, got, clientURLs)
			}
			dependsHealthy(name, clientURLs)
			if r := inv.one(t, name, "replicas"); r != "3" {
				t.Errorf("%s: --replicas %q, want 3 (it provisions the streams too)", name, r)
			}
			c := credOf(name, inv.one(t, name, "creds"), sub)
			if sub == "verifier" && c.id != "" && inv.one(t, name, "name") != c.id {
				t.Errorf("%s: --name %q is not its credential's id %q (heartbeats go only to sled.hb.<pool>.<id>)", name, inv.one(t, name, "name"), c.id)
			}
		}
	}

	// Devices on the leaf, each with its own draft.
	drafts := map[string]string{}
	devNets := map[string]bool{}
	if got := len(bySub["drafter"]); got != 3 {
		t.Errorf("%d devices (%v), want 3", got, bySub["drafter"])
	}
	for _, name := range bySub["drafter"] {
		inv := invs[name]
		if got := inv.list("nats"); !slices.Equal(got, []string{leafURL}) {
			t.Errorf("%s: --nats %v, want the leaf %s", name, got, leafURL)
		}
		dependsHealthy(name, []string{leafURL})
		c := credOf(name, inv.one(t, name, "creds"), "device")
		if id := inv.one(t, name, "id"); c.id != "" && id != c.id {
			t.Errorf("%s: --id %q is not its credential's id %q (drafts go only to sled.draft.<pool>.<id>)", name, id, c.id)
		}
		d := inv.one(t, name, "draft")
		if d == "" {
			t.Errorf("%s: no --draft", name)
		} else if prev, dup := drafts[d]; dup {
			t.Errorf("%s and %s both draft with %s", prev, name, d)
		}
		drafts[d] = name
		host, port := listenPort(t, name, inv.one(t, name, "http"))
		if host != "0.0.0.0" {
			t.Errorf("%s: --http on %s: unreachable from outside the container", name, host)
		}
		published := false
		for _, pc := range p.Services[name].Ports {
			published = published || int(pc.Target) == port && pc.Published != ""
		}
		if !published {
			t.Errorf("%s: HTTP port %d is not published", name, port)
		}
		if hc := p.Services[name].HealthCheck; hc == nil || !slices.Equal([]string(hc.Test), []string{"CMD", "sled-healthcheck", "http", strconv.Itoa(port), "/readyz"}) {
			t.Errorf("%s: want healthcheck [CMD sled-healthcheck http %d /readyz]", name, port)
		}
		for _, n := range networksOf(name) {
			if hubNets[n] {
				t.Errorf("%s is on network %s with the hubs: devices should reach NATS only through the leaf", name, n)
			}
			devNets[n] = true
		}
	}
	leafNets := networksOf(leaf)
	if !slices.ContainsFunc(leafNets, func(n string) bool { return hubNets[n] }) || !slices.ContainsFunc(leafNets, func(n string) bool { return devNets[n] }) {
		t.Errorf("leaf's networks %v: want one shared with the hubs and one with the devices", leafNets)
	}

	// Every identity issued is someone's.
	for _, c := range cs.issued {
		if !used[c.id] {
			t.Errorf("creds issues %s (%s) but no service uses it", c.id, c.role)
		}
	}

	// Models: the services that load one wait for the models service.
	if inv, ok := invs["models"]; !ok || inv.sub != "model fetch" {
		t.Errorf("models: want sled model fetch, got %+v", inv)
	}
	modelVol, _, _, _ := mountOf(p.Services["models"], "/var/cache/sled/models")
	for _, name := range append(slices.Clone(bySub["verifier"]), bySub["drafter"]...) {
		if v, _, ro, ok := mountOf(p.Services[name], "/var/cache/sled/models"); !ok || v != modelVol || ro {
			t.Errorf("%s: the model cache (SLED_MODEL_CACHE) is not the models service's volume %s, writable", name, modelVol)
		}
		if d := p.Services[name].DependsOn["models"]; d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s: want depends_on models: service_completed_successfully", name)
		}
	}

	// Telemetry: OTLP to the collector, metrics scraped by Prometheus.
	col := p.Services["otel-collector"]
	prom := p.Services["prometheus"]
	for name, svc := range map[string]types.ServiceConfig{"otel-collector": col, "prometheus": prom} {
		if _, tag, ok := strings.Cut(svc.Image, ":"); !ok || tag == "" || tag == "latest" {
			t.Errorf("%s: image %q is not pinned to a version", name, svc.Image)
		}
	}
	colCfg := readConfig(t, p, col, "otel-collector")
	var collector struct {
		Receivers struct {
			OTLP struct {
				Protocols map[string]struct {
					Endpoint string `yaml:"endpoint"`
				} `yaml:"protocols"`
			} `yaml:"otlp"`
		} `yaml:"receivers"`
		Exporters struct {
			Prometheus struct {
				Endpoint string `yaml:"endpoint"`
			} `yaml:"prometheus"`
		} `yaml:"exporters"`
		Service struct {
			Telemetry struct {
				Metrics struct {
					Readers []collectorReader `yaml:"readers"`
				} `yaml:"metrics"`
			} `yaml:"telemetry"`
			Pipelines map[string]struct {
				Receivers []string `yaml:"receivers"`
				Exporters []string `yaml:"exporters"`
			} `yaml:"pipelines"`
		} `yaml:"service"`
	}
	if err := yaml.Unmarshal(colCfg, &collector); err != nil {
		t.Fatalf("otel-collector config: %v", err)
	}
	if tr := collector.Service.Pipelines["traces"]; !slices.Contains(tr.Receivers, "otlp") {
		t.Errorf("otel-collector: no traces pipeline from the otlp receiver")
	}
	otlpPorts := map[int]bool{}
	for _, pr := range collector.Receivers.OTLP.Protocols {
		_, port := listenPort(t, "otel-collector otlp receiver", pr.Endpoint)
		otlpPorts[port] = true
	}
	for name, inv := range invs {
		if tr := inv.flags["traces"]; len(tr) > 0 && strings.HasPrefix(tr[0], "otlp") {
			ep := p.Services[name].Environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
			if ep == nil {
				t.Errorf("%s: --traces %s without OTEL_EXPORTER_OTLP_ENDPOINT", name, tr[0])
				continue
			}
			host, port := hostPort(t, name, *ep, "http")
			if host != "otel-collector" || !otlpPorts[port] {
				t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT %s is not the collector's OTLP receiver (ports %v)", name, *ep, otlpPorts)
			}
		}
	}
	var promCfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readConfig(t, p, prom, "prometheus"), &promCfg); err != nil {
		t.Fatalf("prometheus config: %v", err)
	}
	scraped := map[string]bool{}
	for _, sc := range promCfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				scraped[tg] = true
			}
		}
	}
	roles := 0
	for name, inv := range invs {
		addr := inv.one(t, name, "metrics-addr")
		if addr == "" {
			if _, ok := s.of(inv.sub)["metrics-addr"]; ok && inv.sub != "model fetch" {
				t.Errorf("%s: metrics are on by default on loopback, unreachable by Prometheus: pass --metrics-addr 0.0.0.0:PORT", name)
			}
			continue
		}
		roles++
		host, port := listenPort(t, name, addr)
		if host != "0.0.0.0" && host != "" {
			t.Errorf("%s: --metrics-addr %s: Prometheus cannot reach %s", name, addr, host)
		}
		if tg := fmt.Sprintf("%s:%d", name, port); !scraped[tg] {
			t.Errorf("prometheus does not scrape %s (%s --metrics-addr %s)", tg, name, addr)
		}
		if !slices.Contains(networksOf("prometheus"), networksOf(name)[0]) {
			t.Errorf("prometheus shares no network with %s", name)
		}
	}
	if roles != 7 {
		t.Errorf("%d services expose metrics, want 7 (2 batchers, 2 verifiers, 3 devices)", roles)
	}
	_, spanPort := listenPort(t, "otel-collector prometheus exporter", collector.Exporters.Prometheus.Endpoint)
	for _, port := range []int{spanPort, firstReaderPort(collector.Service.Telemetry.Metrics.Readers)} {
		if tg := fmt.Sprintf("otel-collector:%d", port); !scraped[tg] {
			t.Errorf("prometheus does not scrape the collector's %s", tg)
		}
	}

	checkDockerfile(t)
}

// collectorReader is a metric reader of the collector's own telemetry.
type collectorReader struct {
	Pull struct {
		Exporter struct {
			Prometheus struct {
				Port int `yaml:"port"`
			} `yaml:"prometheus"`
		} `yaml:"exporter"`
	} `yaml:"pull"`
}

// firstReaderPort is the port the collector serves its own metrics on.
func firstReaderPort(readers []collectorReader) int {
	for _, r := range readers {
		if r.Pull.Exporter.Prometheus.Port != 0 {
			return r.Pull.Exporter.Prometheus.Port
		}
	}
	return 0
}

// readConfig returns the file of a service's one compose config.
func readConfig(t *testing.T, p *types.Project, svc types.ServiceConfig, name string) []byte {
	t.Helper()
	if len(svc.Configs) != 1 {
		t.Fatalf("%s: want one config file, got %d", name, len(svc.Configs))
	}
	c, ok := p.Configs[svc.Configs[0].Source]
	if !ok || c.File == "" {
		t.Fatalf("%s: config %s is not a file", name, svc.Configs[0].Source)
	}
	target := svc.Configs[0].Target
	if !slices.ContainsFunc(svc.Command, func(a string) bool { return strings.HasSuffix(a, "="+target) }) {
		t.Errorf("%s: the command %q does not read its config %s", name, svc.Command, target)
	}
	data, err := os.ReadFile(c.File)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// checkDockerfile checks what docker-compose.yml relies on in the image.
func checkDockerfile(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{
		`ENTRYPOINT ["sled"]`,
		"COPY --from=build /src/bin/sled /usr/local/bin/sled",
		"COPY --chmod=0755 deploy/healthcheck.sh /usr/local/bin/sled-healthcheck",
		"SLED_MODEL_DIR=/models",
		"SLED_MODEL_CACHE=/var/cache/sled/models",
		"make build PORTABLE=1",
		"USER sled",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(df, -1) {
		if _, tag, _ := strings.Cut(m[1], ":"); tag == "" || strings.Contains(tag, "latest") {
			t.Errorf("Dockerfile: FROM %s is not pinned", m[1])
		}
	}
	if strings.Contains(strings.ToLower(df), ".gguf") {
		t.Error("Dockerfile mentions .gguf: model weights never go into the image")
	}
	di, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(di), "**/*.gguf") {
		t.Error(".dockerignore does not keep model files out of the build context")
	}
}

// TestHealthcheckScript runs the image's health probe (deploy/healthcheck.sh,
// /usr/local/bin/sled-healthcheck in the image) against a real `sled nats`
// and an HTTP server answering like a device's /readyz.
func TestHealthcheckScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash is needed to run the image's health probe: ", err)
	}
	bin := sledBinary(t)
	probe := func(args ...string) error {
		cmd := exec.Command("bash", append([]string{"healthcheck.sh"}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if err != nil {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	free := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}

	port := free()
	if err := probe("nats", strconv.Itoa(port)); err == nil {
		t.Error("nats probe of a closed port passed")
	}
	srv := exec.Command(bin, "nats", "--port", strconv.Itoa(port), "--store-dir", t.TempDir())
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := probe("nats", strconv.Itoa(port))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats probe never passed: %v\n%s", err, srvOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	ready := true
	var mu sync.Mutex
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ok := ready
		mu.Unlock()
		if r.URL.Path != "/readyz" || !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"status":"ok"}`))
	}))
	defer hs.Close()
	_, hport := listenPort(t, "httptest", hs.Listener.Addr().String())
	hp := strconv.Itoa(hport)
	if err := probe("http", hp); err != nil {
		t.Errorf("http probe of a ready /readyz: %v", err)
	}
	if err := probe("http", hp, "/readyz"); err != nil {
		t.Errorf("http probe of a ready /readyz: %v", err)
	}
	if err := probe("http", hp, "/other"); err == nil {
		t.Error("http probe of a 503 passed")
	}
	mu.Lock()
	ready = false
	mu.Unlock()
	if err := probe("http", hp); err == nil {
		t.Error("http probe of a not-ready /readyz passed")
	}
	if err := probe("http", strconv.Itoa(port)); err == nil {
		t.Error("http probe of a NATS port passed")
	}
	if err := probe("bogus"); err == nil {
		t.Error("a bogus probe passed")
	}
}
