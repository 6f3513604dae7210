package verifier

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
	"github.com/sled-project/sled/internal/testmodels"
)

func TestMain(m *testing.M) {
	slog.SetLogLoggerLevel(slog.LevelWarn)
	os.Exit(m.Run())
}

var (
	targetOnce sync.Once
	target     *engine.Model
)

func loadTarget(t testing.TB) *engine.Model {
	t.Helper()
	p := testmodels.Path(t, testmodels.Target)
	targetOnce.Do(func() {
		var err error
		if target, err = engine.LoadModel(p, engine.ModelOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	return target
}

// reference is the target's own greedy continuation of prompt.
func reference(t testing.TB, m *engine.Model, prompt []engine.Token, n int) []engine.Token {
	t.Helper()
	c, err := m.NewContext(engine.ContextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out []engine.Token
	seq := append([]engine.Token(nil), prompt...)
	fed := 0
	for len(out) < n {
		var es []engine.Entry
		for i := fed; i < len(seq); i++ {
			es = append(es, engine.Entry{Seq: 0, Pos: i, Token: seq[i], Logits: i == len(seq)-1})
		}
		rows, err := c.Decode(context.Background(), es)
		if err != nil {
			t.Fatal(err)
		}
		fed = len(seq)
		next := engine.Argmax(rows[0])
		out = append(out, next)
		seq = append(seq, next)
		if m.IsEOG(next) {
			break
		}
	}
	return out
}

// device is a scripted device session: it knows the reference continuation and
// drafts `good` correct tokens followed by one wrong token, so every verdict is
// predictable.
type device struct {
	id, session string
	m           *engine.Model
	ref         []engine.Token
	committed   []engine.Token // prompt + verified output
	promptLen   int
	sentUpTo    int // committed[:sentUpTo] has been sent to the verifier
	round       uint64
	withPrefix  bool
}

func newDevice(m *engine.Model, id string, prompt, ref []engine.Token) *device {
	return &device{id: id, session: "s-" + id, m: m, ref: ref, committed: append([]engine.Token(nil), prompt...), promptLen: len(prompt), withPrefix: true}
}

func (d *device) out() []engine.Token { return d.committed[d.promptLen:] }

func (d *device) draft(good int, wrong bool) events.DraftReady {
	d.round++
	pos := len(d.out())
	var draft []engine.Token
	for i := 0; i < good && pos+i < len(d.ref); i++ {
		draft = append(draft, d.ref[pos+i])
	}
	if wrong && pos+len(draft) < len(d.ref) {
		draft = append(draft, (d.ref[pos+len(draft)]+1)%engine.Token(d.m.VocabSize()))
	}
	probs := make([]float32, len(draft))
	for i := range probs {
		probs[i] = 0.9
	}
	ev := events.DraftReady{
		DeviceID: d.id, SessionID: d.session, Round: d.round, Pool: "p",
		PrefixLen: len(d.committed), PrefixHash: events.PrefixHash(d.committed),
		Committed: append([]int32(nil), d.committed[d.sentUpTo:]...), Draft: draft, DraftProbs: probs,
		VocabFingerprint: d.m.Fingerprint(),
	}
	if d.withPrefix {
		ev.Prefix = append([]int32(nil), d.committed...)
		d.withPrefix = false
	}
	return ev
}

// apply folds a result in; it returns the expected verdict check error, if any.
func (d *device) apply(ev events.DraftReady, r events.VerifyResult) error {
	if r.Status != events.StatusOK {
		return fmt.Errorf("%s round %d: status %s (%s: %s)", d.id, r.Round, r.Status, r.Reason, r.Error)
	}
	pos := len(d.out())
	want := 0
	for want < len(ev.Draft) && ev.Draft[want] == d.ref[pos+want] {
		want++
	}
	if r.Accepted != want || r.Token != d.ref[pos+want] {
		return fmt.Errorf("%s round %d: accepted %d token %d, want %d token %d", d.id, r.Round, r.Accepted, r.Token, want, d.ref[pos+want])
	}
	d.sentUpTo = len(d.committed)
	d.committed = append(d.committed, ev.Draft[:r.Accepted]...)
	d.committed = append(d.committed, r.Token)
	return nil
}

// scripted is a verifier on the test target with cfg, closed with the test,
// and a scripted device per text, each knowing refLen tokens of the target's
// greedy continuation.
func scripted(t *testing.T, cfg Config, refLen int, texts ...string) (*Verifier, []*device) {
	t.Helper()
	m := loadTarget(t)
	v, err := New(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	var devs []*device
	for i, text := range texts {
		p, _ := m.Tokenize(text, true)
		devs = append(devs, newDevice(m, fmt.Sprintf("d%d", i), p, reference(t, m, p, refLen)))
	}
	return v, devs
}

func TestVerifyBatchesAreLossless(t *testing.T) {
	v, devs := scripted(t, Config{Slots: 4, Threads: 1}, 60, "Once upon a time", "The little dog", "Tom and Sue went to")
	ctx := context.Background()
	prefill := 0
	for round := 0; ; round++ {
		var batch []events.DraftReady
		var who []*device
		for i, d := range devs {
			if len(d.out()) >= 50 {
				continue
			}
			// Ragged drafts: different lengths per device and round; some all-correct.
			good := (round + i) % 5
			batch = append(batch, d.draft(good, (round+i)%3 != 0))
			who = append(who, d)
		}
		if len(batch) == 0 {
			break
		}
		for _, d := range batch {
			if n := max(len(d.Prefix), len(d.Committed)); n > 0 {
				prefill += n - 1 // all but the last committed token
			}
		}
		res, err := v.Verify(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range who {
			if err := d.apply(batch[i], res[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range devs {
		if fmt.Sprint(d.out()[:50]) != fmt.Sprint(d.ref[:50]) {
			t.Fatalf("%s: output diverged from the target's greedy continuation", d.id)
		}
	}
	st := v.Stats()
	t.Logf("stats: %+v", st)
	// Three sessions started; none was rebuilt (a first round is not a resync).
	if st.Accepted == 0 || st.Accepted >= st.DraftTokens || st.Sessions != 3 || st.Resyncs != 0 {
		t.Fatalf("unexpected stats %+v", st)
	}
	// Prefill is what a round carries before its last committed token: a
	// first round's prompt, and the accepted tokens these devices send again.
	if st.PrefillTokens != uint64(prefill) || st.PassTokens <= st.PrefillTokens {
		t.Errorf("prefill %d of %d evaluated tokens, want %d", st.PrefillTokens, st.PassTokens, prefill)
	}
}

func TestVerifyResyncAndErrors(t *testing.T) {
	m := loadTarget(t)
	v, err := New(m, Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()
	one := func(ev events.DraftReady) events.VerifyResult {
		t.Helper()
		res, err := v.Verify(ctx, []events.DraftReady{ev})
		if err != nil {
			t.Fatal(err)
		}
		return res[0]
	}
	mk := func(id, text string) *device {
		p, _ := m.Tokenize(text, true)
		return newDevice(m, id, p, reference(t, m, p, 40))
	}
	a, b, c := mk("a", "Once upon a time"), mk("b", "The cat"), mk("c", "A big tree")

	// A new session without its prefix is unknown.
	a.withPrefix = false
	ev := a.draft(2, true)
	if r := one(ev); r.Status != events.StatusUnknownSession {
		t.Fatalf("no prefix: %+v", r)
	}
	// Resync: the same round again with the prefix.
	a.round--
	a.withPrefix = true
	ev = a.draft(2, true)
	if err := a.apply(ev, one(ev)); err != nil {
		t.Fatal(err)
	}
	// A lost result: the device never saw round 2's verdict and retries as round 3
	// with the same committed tokens and longer drafts. The verifier rolls back.
	ev2 := a.draft(3, true)
	if r := one(ev2); r.Status != events.StatusOK {
		t.Fatal(r)
	}
	ev3 := a.draft(4, false)
	ev3.Round = ev2.Round + 1
	if err := a.apply(ev3, one(ev3)); err != nil {
		t.Fatalf("retry after lost result: %v", err)
	}
	// Wrong prefix hash: prefix mismatch, the verifier's state intact.
	bad := a.draft(2, true)
	bad.PrefixHash = "0000000000000000"
	if r := one(bad); r.Status != events.StatusPrefixMismatch {
		t.Fatalf("bad hash: %+v", r)
	}
	ev = a.draft(2, true)
	if err := a.apply(ev, one(ev)); err != nil {
		t.Fatalf("after mismatch: %v", err)
	}
	// Two more sessions in a 2-slot verifier evict a (least recently used).
	for _, d := range []*device{b, c} {
		ev := d.draft(1, true)
		if err := d.apply(ev, one(ev)); err != nil {
			t.Fatal(err)
		}
	}
	ev = a.draft(1, true)
	if r := one(ev); r.Status != events.StatusUnknownSession {
		t.Fatalf("evicted session: %+v", r)
	}
	a.round--
	a.withPrefix = true
	ev = a.draft(1, true)
	if err := a.apply(ev, one(ev)); err != nil {
		t.Fatalf("rebuilt after eviction: %v", err)
	}
	if st := v.Stats(); st.Evictions < 2 || st.Sessions != 3 || st.Resyncs < 1 {
		t.Fatalf("stats %+v", st)
	}
	// Bad requests are answered, not crashed on.
	ev = b.draft(1, true)
	ev.VocabFingerprint = "deadbeef"
	if r := one(ev); r.Status != events.StatusInvalid || r.Reason != ReasonVocabMismatch {
		t.Fatalf("vocab mismatch: %+v", r)
	}
	ev = b.draft(1, true)
	ev.Draft[0] = 9999
	if r := one(ev); r.Status != events.StatusInvalid || r.Reason != "token_range" {
		t.Fatalf("token range: %+v", r)
	}
	ev = b.draft(1, true)
	ev.PrefixLen = 600
	if r := one(ev); r.Status != events.StatusInvalid || r.Reason != ReasonContextLength {
		t.Fatalf("context length: %+v", r)
	}
	// Two rounds of one session in one batch: the second is refused.
	e1, e2 := c.draft(1, true), c.draft(1, true)
	res, err := v.Verify(ctx, []events.DraftReady{e1, e2})
	if err != nil || res[0].Status != events.StatusOK || res[1].Status != events.StatusInvalid {
		t.Fatalf("duplicate session in batch: %v %+v", err, res)
	}
}

func TestVerifyLongPrefixSplitsPasses(t *testing.T) {
	m := loadTarget(t)
	v, err := New(m, Config{Slots: 2, BatchTokens: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var text string
	for range 30 {
		text += "Lily went to the park. "
	}
	p, _ := m.Tokenize(text, true)
	if len(p) < 200 {
		t.Fatalf("prompt only %d tokens", len(p))
	}
	d := newDevice(m, "long", p, reference(t, m, p, 20))
	short := newDevice(m, "short", p[:10], reference(t, m, p[:10], 20))
	e1, e2 := d.draft(3, true), short.draft(2, false)
	res, err := v.Verify(context.Background(), []events.DraftReady{e1, e2})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.apply(e1, res[0]); err != nil {
		t.Fatal(err)
	}
	if err := short.apply(e2, res[1]); err != nil {
		t.Fatal(err)
	}
	if v.Stats().ForwardPasses < 2 {
		t.Fatalf("a %d-token batch fit one 128-token pass?", len(p))
	}
}

// TestSessionsAreIsolatedByDevice: a device that names another device's session
// id reaches a session of its own, never the other's.
func TestSessionsAreIsolatedByDevice(t *testing.T) {
	m := loadTarget(t)
	v, err := New(m, Config{Slots: 4, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	p, _ := m.Tokenize("Once upon a time", true)
	victim := newDevice(m, "victim", p, reference(t, m, p, 20))
	ev := victim.draft(2, true)
	if err := victim.apply(ev, mustVerify(t, v, ev)); err != nil {
		t.Fatal(err)
	}
	// The intruder reuses the victim's session id and its exact next round.
	next := victim.draft(2, true)
	forged := next
	forged.DeviceID = "intruder"
	forged.Prefix = nil
	if r := mustVerify(t, v, forged); r.Status != events.StatusUnknownSession {
		t.Fatalf("forged round reached the victim's session: %+v", r)
	}
	// The victim's session is untouched.
	if err := victim.apply(next, mustVerify(t, v, next)); err != nil {
		t.Fatal(err)
	}
}

func mustVerify(t *testing.T, v *Verifier, ev events.DraftReady) events.VerifyResult {
	t.Helper()
	res, err := v.Verify(context.Background(), []events.DraftReady{ev})
	if err != nil {
		t.Fatal(err)
	}
	return res[0]
}

// A new session whose prefix starts like an earlier session's reuses that
// session's cells (released by Forget, or evicted), and its verdicts are still
// the target's own greedy continuation.
func TestVerifyPrefixReuse(t *testing.T) {
	m := loadTarget(t)
	v, err := New(m, Config{Slots: 2, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()
	run := func(d *device, n int) {
		t.Helper()
		for round := 0; len(d.out()) < n; round++ {
			ev := d.draft(round%4, round%2 == 0)
			res, err := v.Verify(ctx, []events.DraftReady{ev})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.apply(ev, res[0]); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk := func(id, text string) (*device, int) {
		p, _ := m.Tokenize(text, true)
		return newDevice(m, id, p, reference(t, m, p, 40)), len(p)
	}
	a, _ := mk("a", "Once upon a time, there was a little girl named Lily. She")
	run(a, 30)
	v.Forget("a", a.session)

	// b's prompt is a's prompt and a's first output tokens: all of it but its
	// last token is in the cells a left.
	b := newDevice(m, "b", append([]engine.Token(nil), a.committed[:a.promptLen+10]...), nil)
	b.ref = reference(t, m, b.committed, 40)
	before := v.Stats().ReusedPrefixTokens
	run(b, 30)
	if got, want := v.Stats().ReusedPrefixTokens-before, uint64(len(b.committed[:b.promptLen])-1); got != want {
		t.Errorf("b reused %d prefix tokens, want %d", got, want)
	}

	// c fills the other slot; d, sharing a prefix with b, evicts b (least
	// recently used) and reuses its cells up to where the prompts part.
	c, _ := mk("c", "The big red dog ran to the park")
	run(c, 10)
	d, dn := mk("d", "Once upon a time, there was a little girl named Sue")
	shared := 0
	for shared < dn && d.committed[shared] == b.committed[shared] {
		shared++
	}
	before = v.Stats().ReusedPrefixTokens
	run(d, 30)
	if got := v.Stats().ReusedPrefixTokens - before; got != uint64(shared) {
		t.Errorf("d reused %d prefix tokens, want the %d it shares with the evicted b", got, shared)
	}
	if st := v.Stats(); st.Evictions != 1 {
		t.Errorf("evictions %d, want 1", st.Evictions)
	}
	for _, x := range []*device{a, b, c, d} {
		n := min(len(x.out()), len(x.ref))
		if fmt.Sprint(x.out()[:n]) != fmt.Sprint(x.ref[:n]) {
			t.Errorf("%s: output diverged from the target's greedy continuation", x.id)
		}
	}
}

// A verdict that ends the text releases the session's slot at once, its cells
// kept: the next session with the same prompt reuses them, and a retry of the
// ended session's last round resyncs. The TinyStories target never ends a text
// greedily, so this runs on the real 1.5B with a chat prompt whose answer is short.
func TestVerifyReleasesAtEndOfText(t *testing.T) {
	m, err := engine.LoadModel(testmodels.Real(t, testmodels.QwenTarget), engine.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v, err := New(m, Config{Slots: 2, SlotContext: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	text, _ := m.FormatChat([]engine.ChatMessage{{Role: "user", Content: "Reply with the single word: yes"}}, true)
	p, err := m.TokenizeSpecial(text, true)
	if err != nil {
		t.Fatal(err)
	}
	ref := reference(t, m, p, 16)
	if !m.IsEOG(ref[len(ref)-1]) {
		t.Fatalf("the target's answer has no end of text in %d tokens: %v", len(ref), ref)
	}
	d := newDevice(m, "a", p, ref)
	var last events.DraftReady
	for len(d.out()) < len(ref) {
		last = d.draft(min(3, len(ref)-1-len(d.out())), false) // the end of text comes as the verifier's token
		res, err := v.Verify(context.Background(), []events.DraftReady{last})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.apply(last, res[0]); err != nil {
			t.Fatal(err)
		}
		if res[0].EOS != (len(d.out()) == len(ref)) {
			t.Fatalf("EOS %v at %d of %d tokens", res[0].EOS, len(d.out()), len(ref))
		}
	}
	if n := v.Sessions(); n != 0 {
		t.Fatalf("%d sessions held after the end of text", n)
	}
	retry := last
	retry.Prefix = nil // a retry without the prefix (only a session's first round carries it)
	res, err := v.Verify(context.Background(), []events.DraftReady{retry})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != events.StatusUnknownSession {
		t.Fatalf("retry of the last round: %s, want unknown_session", res[0].Status)
	}
	before := v.Stats().ReusedPrefixTokens
	b := newDevice(m, "b", p, ref)
	ev := b.draft(1, false)
	res, err = v.Verify(context.Background(), []events.DraftReady{ev})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.apply(ev, res[0]); err != nil {
		t.Fatal(err)
	}
	if got := v.Stats().ReusedPrefixTokens - before; got != uint64(len(p)-1) {
		t.Fatalf("the next session reused %d prompt tokens, want %d", got, len(p)-1)
	}
}

// TestNextRound: the round NextRound builds is exactly the one the device
// would send at budget 0 (same round number, prefix length and hash as the
// device's own, its committed token the verdict's), so a chain of them,
// verified with other sessions' drafts in the same passes, produces the
// target's greedy text; no round follows when the device allowed none, when
// the text ended, or when a later round rolled the session back.
func TestNextRound(t *testing.T) {
	v, devs := scripted(t, Config{Slots: 4, Threads: 1}, 100, "Once upon a time", "The little dog")
	ctx := context.Background()
	served, other := devs[0], devs[1]
	first := served.draft(2, true)
	first.ServerRounds = 20
	res, err := v.Verify(ctx, []events.DraftReady{first})
	if err != nil {
		t.Fatal(err)
	}
	if err := served.apply(first, res[0]); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	prev, prevRes := first, res[0]
	for i := range 20 {
		next, ok := v.NextRound(&prev, &prevRes, now, now.Add(time.Second))
		if !ok {
			t.Fatalf("no round %d after %d served", prev.Round+1, i)
		}
		// What the device itself would send (this scripted one resends every
		// token of the last verdict; the served round only the last, which
		// the verifier lacks).
		own := served.draft(0, false)
		if next.Round != own.Round || next.PrefixLen != own.PrefixLen || next.PrefixHash != own.PrefixHash || len(next.Committed) != 1 ||
			next.Committed[0] != own.Committed[len(own.Committed)-1] || len(next.Draft) != 0 || next.ServerRounds != prev.ServerRounds-1 {
			t.Fatalf("served round %+v, the device's own %+v", next, own)
		}
		batch := []events.DraftReady{next, other.draft(i%4, i%2 == 0)}
		res, err := v.Verify(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		if err := served.apply(next, res[0]); err != nil {
			t.Fatal(err)
		}
		if err := other.apply(batch[1], res[1]); err != nil {
			t.Fatal(err)
		}
		prev, prevRes = next, res[0]
	}
	if got, want := served.out(), served.ref[:len(served.out())]; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("served session %v, the target's %v", got, want)
	}
	if prev.ServerRounds != 0 {
		t.Fatalf("after 20 served rounds %d remain", prev.ServerRounds)
	}
	if _, ok := v.NextRound(&prev, &prevRes, now, now); ok {
		t.Error("a round beyond the device's server_rounds")
	}
	// The device's own round (resent, rolled back) makes the previous
	// verdict's chain stale.
	prev.ServerRounds = 5
	again := prev
	again.Round += 5
	if _, err := v.Verify(ctx, []events.DraftReady{again}); err != nil {
		t.Fatal(err)
	}
	stale := prevRes
	stale.Accepted = 1 // a verdict the session no longer reflects
	if _, ok := v.NextRound(&prev, &stale, now, now); ok {
		t.Error("a round built on a verdict the session does not hold")
	}
	eos := prevRes
	eos.EOS = true
	if _, ok := v.NextRound(&prev, &eos, now, now); ok {
		t.Error("a round after the end of the text")
	}
	if r, ok := v.NextRound(&prev, &prevRes, now, now); !ok || r.Round != prev.Round+1 {
		t.Errorf("the unchanged session: next round %v %v", r.Round, ok)
	}
}

// TestCompactsEndedSessions: with a stream per slot (the default), a session
// that ends amid the busy slots leaves a gap that the next verification
// closes by exchanging the farthest session's cells into it
// (engine.Context.Swap), and a new session lands next to the run; the moved
// session goes on exactly (its output is the target's greedy text).
func TestCompactsEndedSessions(t *testing.T) {
	v, devs := scripted(t, Config{Slots: 6, Threads: 1}, 60, "Once upon a time", "The little dog", "Tom and Sue went to", "One day, a girl")
	ctx := context.Background()
	step := func(ds []*device, round int) {
		t.Helper()
		batch := make([]events.DraftReady, len(ds))
		for i, d := range ds {
			batch[i] = d.draft((round+i)%3, (round+i)%2 == 0)
		}
		res, err := v.Verify(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range ds {
			if err := d.apply(batch[i], res[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for r := range 4 {
		step(devs[:3], r)
	}
	run := func(n int) {
		t.Helper()
		var slots []int
		for _, s := range v.slots.byID {
			slots = append(slots, s.slot)
		}
		slices.Sort(slots)
		if len(slots) != n || slots[n-1]-slots[0] != n-1 {
			t.Fatalf("sessions in slots %v: not one run of %d", slots, n)
		}
	}
	run(3)
	v.Forget(devs[1].id, devs[1].session) // the second ends: a gap amid the run
	for r := range 2 {
		step([]*device{devs[0], devs[2]}, 4+r)
	}
	if st := v.Stats(); st.Swaps != 1 {
		t.Fatalf("%d exchanges closed one gap: %+v", st.Swaps, st)
	}
	run(2)
	for r := range 3 {
		step([]*device{devs[0], devs[2], devs[3]}, 6+r)
	}
	run(3)
	for _, d := range []*device{devs[0], devs[2], devs[3]} {
		if got, want := d.out(), d.ref[:len(d.out())]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: %v, the target's %v", d.id, got, want)
		}
	}
}
