package verifier

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
)

// Config sizes a Verifier. Zero fields take the documented defaults.
type Config struct {
	// Slots is how many device sessions keep a KV cache at once; the least recently
	// used session is evicted beyond that and rebuilt from the device's full prefix
	// when it returns (a resync). Default DefaultSlots.
	Slots int
	// SlotContext is the most positions one session may hold (prompt plus output).
	// Default: the model's DefaultSlotContext.
	SlotContext int
	// BatchTokens is the most tokens evaluated in one forward pass. A batch with more
	// (long prefixes after a resync) is evaluated in several passes. Default
	// DefaultBatchTokens, at least MinBatchTokens.
	BatchTokens int
	// Threads for llama.cpp. Default: the target's DefaultThreads.
	Threads int
	// UnifiedKV gives every slot one shared KV cache instead of a KV stream
	// per slot (engine.ContextOptions.SeparateKV). Default off: once the
	// worker runs budget-0 sessions itself (WorkerConfig, server rounds),
	// most passes are one token per session, the centralized server's
	// shape, where a pass over unified cells attends to every session's
	// cells: measured on the tiny pair at 64 devices, rounds took 141 ms at
	// the median (60 sessions a pass) unified against 107 ms (all 64) with a
	// stream per slot, 413 against 561 tokens/s (docs/benchmarks.md, "Server
	// rounds").
	UnifiedKV bool
	// PassTokens is what one llama.cpp micro-batch costs beyond its tokens, in
	// tokens, with a stream per slot: a ragged or gapped pass is padded when that
	// saves more micro-batches than it adds tokens at this price
	// (engine.ContextOptions.PassTokens). Default engine.DefaultPassTokens.
	PassTokens float64
}

// Defaults of Config.
const (
	DefaultSlots       = 16
	DefaultBatchTokens = 512
	// MinBatchTokens is the least BatchTokens: a pass must fit a whole draft
	// (the schema's limit, 64 tokens) and the token before it.
	MinBatchTokens = 128
)

// Result reasons a Verifier sets on non-ok results, beside those of events.Reason.
const (
	ReasonVocabMismatch = "vocab_mismatch" // the draft model's tokenizer is not the target's
	ReasonContextLength = "context_length" // the session would outgrow SlotContext
	ReasonNoSlot        = "no_slot"        // every slot is held by a session of the same batch
	ReasonEngine        = "engine"         // the forward pass failed
	// ReasonUnknownSession: the verifier holds no state for the session (new to
	// it, evicted, or the verifier restarted): resend with the full prefix.
	ReasonUnknownSession = "unknown_session"
	// ReasonPrefixMismatch: the verifier's tokens of the session do not hash to
	// the round's prefix: resend with the full prefix.
	ReasonPrefixMismatch = "prefix_mismatch"
)

// Stats are cumulative counters of a Verifier.
type Stats struct {
	Batches, Drafts, DraftTokens, Accepted uint64
	// Sessions counts sessions started (a first round, which carries its
	// prefix); Resyncs sessions rebuilt from a full prefix after their first
	// round (a device answering unknown_session or prefix_mismatch, or resending
	// a first round that timed out).
	Sessions, Resyncs, Evictions, ForwardPasses uint64
	// PassTokens counts tokens evaluated by forward passes (what the pass-cost
	// estimator of the goodput policy is fed); PrefillTokens those of them
	// before a round's last committed token (a session's prefix, a resync),
	// evaluated without logits.
	PassTokens, PrefillTokens uint64
	// ReusedPrefixTokens counts prefix tokens of new or resynced sessions that
	// were already in their slot's cells (an earlier session's) and so were not
	// evaluated again.
	ReusedPrefixTokens uint64
	// Swaps counts exchanges of two slots' cells (engine.Context.Swap) that
	// keep the busy slots consecutive with a stream per slot.
	Swaps uint64
}

// Verifier checks drafts against the target model: for each draft of a batch it
// extends the session's KV cache with the newly committed tokens and the draft, runs
// all sessions in one forward pass, applies Accept, and rolls back the rejected
// positions. It does no messaging; the Worker feeds it batches from NATS.
//
// A Verifier is safe for concurrent use; batches are verified one at a time.
type Verifier struct {
	model *engine.Model
	cfg   Config

	mu    sync.Mutex
	ectx  *engine.Context
	slots *slotTable
	stats Stats
}

// New creates a verifier for target with its own llama.cpp context.
func New(target *engine.Model, cfg Config) (*Verifier, error) {
	if cfg.Slots <= 0 {
		cfg.Slots = DefaultSlots
	}
	if cfg.BatchTokens <= 0 {
		cfg.BatchTokens = DefaultBatchTokens
	}
	cfg.BatchTokens = max(cfg.BatchTokens, MinBatchTokens)
	ectx, err := target.NewContext(engine.ContextOptions{
		Slots: cfg.Slots, SlotContext: cfg.SlotContext, BatchSize: cfg.BatchTokens, Threads: cfg.Threads,
		SeparateKV: !cfg.UnifiedKV, PassTokens: cfg.PassTokens,
	})
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	o := ectx.Options()
	cfg.SlotContext, cfg.BatchTokens, cfg.Threads, cfg.PassTokens = o.SlotContext, o.BatchSize, o.Threads, o.PassTokens
	return &Verifier{model: target, cfg: cfg, ectx: ectx, slots: newSlotTable(cfg.Slots)}, nil
}

// Close frees the verifier's context. The model stays open.
func (v *Verifier) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ectx.Close()
}

// Model is the target model.
func (v *Verifier) Model() *engine.Model { return v.model }

// Config returns the configuration with defaults filled in.
func (v *Verifier) Config() Config { return v.cfg }

// Stats returns the counters so far.
func (v *Verifier) Stats() Stats {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.stats
	s.Evictions = v.slots.evictions
	return s
}

// Sessions is the number of sessions holding a slot.
func (v *Verifier) Sessions() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.slots.len()
}

// job is one draft's work within a batch.
type job struct {
	d      *events.DraftReady
	s      *session
	base   int            // KV position the feed starts at
	feed   []engine.Token // tokens to evaluate: new committed tokens (or a full prefix), then the draft
	done   int            // feed tokens already evaluated (long prefixes go in several passes)
	res    *events.VerifyResult
	resync bool
}

func (j *job) nDraft() int { return len(j.d.Draft) }

// Verify verifies drafts (normally one batch) and returns one result per draft, in
// order. Drafts of one session beyond the first are answered as invalid: a batch
// holds at most one round per session. Verify fails only when ctx ends; every
// problem with a draft becomes that draft's error result.
func (v *Verifier) Verify(ctx context.Context, drafts []events.DraftReady) ([]events.VerifyResult, error) {
	start := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.compact()
	results := make([]events.VerifyResult, len(drafts))
	pinned := make(map[string]bool, len(drafts))
	var jobs []*job
	for i := range drafts {
		d := &drafts[i]
		r := &results[i]
		*r = events.VerifyResult{DeviceID: d.DeviceID, SessionID: d.SessionID, Round: d.Round, BatchSize: len(drafts)}
		if pinned[sessionKey(d)] {
			fail(r, events.StatusInvalid, events.Reason(events.ErrInvalid), "a batch may hold one round per session")
			continue
		}
		if j := v.plan(d, r, pinned); j != nil {
			pinned[sessionKey(d)] = true
			jobs = append(jobs, j)
		}
	}
	if err := v.run(ctx, jobs); err != nil {
		return nil, err
	}
	ms := float64(time.Since(start).Microseconds()) / 1000
	v.stats.Batches++
	for i := range results {
		results[i].ServerTiming.VerifyMs = ms
	}
	return results, nil
}

// sessionKey names a session by its device too: a device, whose id its NATS
// subject vouches for, can only ever reach its own sessions.
func sessionKey(d *events.DraftReady) string { return d.DeviceID + "/" + d.SessionID }

func fail(r *events.VerifyResult, st events.Status, reason, msg string) {
	r.Status, r.Reason, r.Error = st, reason, msg
}

// plan decides what to evaluate for d, or answers it at once (returns nil).
func (v *Verifier) plan(d *events.DraftReady, r *events.VerifyResult, pinned map[string]bool) *job {
	if d.VocabFingerprint != v.model.Fingerprint() {
		fail(r, events.StatusInvalid, ReasonVocabMismatch, fmt.Sprintf(
			"draft vocabulary %.12s differs from the target's %.12s: use a draft model with the target's tokenizer, or draft across vocabularies (a device given the target's vocabulary, drafter.Config.TargetVocab / --target-vocab, sends the target's tokens)", d.VocabFingerprint, v.model.Fingerprint()))
		return nil
	}
	for _, set := range [][]int32{d.Committed, d.Draft, d.Prefix} {
		for _, t := range set {
			if !v.model.ValidToken(t) {
				fail(r, events.StatusInvalid, events.Reason(events.ErrTokenRange), fmt.Sprintf("token %d outside the target vocabulary of %d", t, v.model.VocabSize()))
				return nil
			}
		}
	}
	if d.PrefixLen+len(d.Draft)+1 > v.cfg.SlotContext {
		fail(r, events.StatusInvalid, ReasonContextLength, fmt.Sprintf(
			"prefix %d + draft %d tokens exceed the verifier's context of %d", d.PrefixLen, len(d.Draft), v.cfg.SlotContext))
		return nil
	}
	j := &job{d: d, res: r}
	if s := v.slots.get(sessionKey(d)); s != nil {
		base := d.PrefixLen - len(d.Committed)
		if base >= 0 && base <= len(s.kv) && (base > 0 || len(d.Committed) > 0) {
			h := events.NewPrefixHasher()
			h.Write(s.kv[:base]...)
			h.Write(d.Committed...)
			if h.Sum() == d.PrefixHash {
				j.s, j.base = s, base
				j.feed = append(append(j.feed, d.Committed...), d.Draft...)
				if len(d.Committed) == 0 {
					// The target's prediction for Draft[0] comes from the last prefix
					// token, already in the cache: evaluate it again.
					j.base--
					j.feed = append([]engine.Token{s.kv[j.base]}, j.feed...)
				}
				return j
			}
		}
		if d.Prefix == nil {
			fail(r, events.StatusPrefixMismatch, ReasonPrefixMismatch, fmt.Sprintf(
				"verifier holds %d tokens of this session that do not match prefix %d/%s: resend the full prefix", len(s.kv), d.PrefixLen, d.PrefixHash))
			return nil
		}
	} else if d.Prefix == nil {
		fail(r, events.StatusUnknownSession, ReasonUnknownSession, "no state for this session here: resend the full prefix")
		return nil
	}
	// Rebuild the session from the full prefix.
	if len(d.Prefix) == 0 {
		fail(r, events.StatusInvalid, events.Reason(events.ErrInvalid), "empty prefix")
		return nil
	}
	s, keep, pl := v.slots.assign(sessionKey(d), d.Prefix, pinned, !v.cfg.UnifiedKV)
	if s == nil {
		fail(r, events.StatusOverloaded, ReasonNoSlot, fmt.Sprintf("all %d slots hold sessions of this batch", v.cfg.Slots))
		return nil
	}
	// With a stream per slot the session goes where the busy slots stay
	// consecutive (a gap splits llama.cpp's pass into micro-batches), the
	// cached cells exchanged or copied there first.
	if pl.From != s.slot {
		if err := v.ectx.Swap(pl.From, s.slot); err != nil {
			keep = 0
			v.slots.free.Release(pl.From, nil)
		} else {
			v.stats.Swaps++
		}
	}
	if pl.Copy >= 0 && keep > 0 {
		if err := v.ectx.Copy(pl.Copy, s.slot, keep); err != nil {
			keep = 0
		}
	}
	// The slot's first keep cells already hold d.Prefix[:keep] (an earlier
	// session's, see slotTable.assign); run drops the rest before the pass.
	s.kv = append(s.kv[:0], d.Prefix[:keep]...)
	v.stats.ReusedPrefixTokens += uint64(keep)
	j.s, j.base, j.resync = s, keep, true
	j.feed = append(append(j.feed, d.Prefix[keep:]...), d.Draft...)
	return j
}

// run evaluates the jobs in as few forward passes as BatchTokens allows and fills
// in their results.
func (v *Verifier) run(ctx context.Context, jobs []*job) error {
	for _, j := range jobs {
		if err := v.ectx.Remove(j.s.slot, j.base); err != nil {
			return fmt.Errorf("verifier: rollback: %w", err)
		}
		switch {
		case j.resync && j.d.Round > 1:
			v.stats.Resyncs++
		case j.resync:
			v.stats.Sessions++
		}
	}
	limit := v.cfg.BatchTokens
	// Long feeds first evaluate their heads alone, so that each job's logits rows
	// (its last nDraft+1 positions) land in one pass.
	for _, j := range jobs {
		for len(j.feed)-j.done > limit {
			n := min(limit, len(j.feed)-j.done-(j.nDraft()+1))
			if err := v.pass(ctx, []*job{j}, map[*job]int{j: n}); err != nil {
				return err
			}
		}
	}
	var group []*job
	size := 0
	for _, j := range jobs {
		if j.res.Status != "" {
			continue
		}
		need := len(j.feed) - j.done
		if size+need > limit && len(group) > 0 {
			if err := v.pass(ctx, group, nil); err != nil {
				return err
			}
			group, size = group[:0], 0
		}
		group = append(group, j)
		size += need
	}
	if len(group) > 0 {
		return v.pass(ctx, group, nil)
	}
	return nil
}

// pass evaluates one forward pass. With partial set, it evaluates partial[j] feed
// tokens of each job without logits; otherwise the rest of each job's feed, then
// applies the acceptance rule.
func (v *Verifier) pass(ctx context.Context, group []*job, partial map[*job]int) error {
	var entries []engine.Entry
	for _, j := range group {
		n := len(j.feed) - j.done
		if partial != nil {
			n = partial[j]
		}
		firstLogit := len(j.feed) - j.nDraft() - 1
		for i := j.done; i < j.done+n; i++ {
			entries = append(entries, engine.Entry{
				Seq: j.s.slot, Pos: j.base + i, Token: j.feed[i], Logits: partial == nil && i >= firstLogit,
			})
		}
		v.stats.PrefillTokens += uint64(max(0, min(j.done+n, firstLogit)-j.done))
	}
	v.stats.ForwardPasses++
	v.stats.PassTokens += uint64(len(entries))
	rows, err := v.ectx.Decode(ctx, entries)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The pass changed nothing; these sessions must rebuild.
		for _, j := range group {
			fail(j.res, events.StatusOverloaded, ReasonEngine, err.Error())
			v.dropSession(j.s)
		}
		return nil
	}
	if partial != nil {
		for _, j := range group {
			j.done += partial[j]
		}
		return nil
	}
	k := 0
	for _, j := range group {
		n := j.nDraft() + 1
		v.accept(j, rows[k:k+n])
		k += n
	}
	return nil
}

func (v *Verifier) accept(j *job, rows [][]float32) {
	d := j.d
	in := AcceptInput{Draft: d.Draft, DraftProbs: d.DraftProbs, Target: rows, Temperature: d.Sampling.Temperature, TopP: d.Sampling.TopP}
	if in.Temperature > 0 && d.Sampling.Mode == events.SamplingCoupled {
		in.Coupled, in.Seed, in.Pos = true, d.Sampling.Seed, d.PrefixLen
	} else if in.Temperature > 0 {
		in.Rand = rand.New(rand.NewPCG(d.Sampling.Seed, d.Round))
		for _, tk := range d.TopK {
			dist := make([]engine.TokenProb, len(tk.IDs))
			for i := range tk.IDs {
				dist[i] = engine.TokenProb{Token: tk.IDs[i], Prob: tk.Probs[i]}
			}
			in.DraftDists = append(in.DraftDists, dist)
		}
	}
	verdict := Accept(in)
	if d.Logprobs {
		out := append(append(make([]engine.Token, 0, verdict.Accepted+1), d.Draft[:verdict.Accepted]...), verdict.Next)
		j.res.Logprobs = OutcomeLogprobs(rows, out, d.TopLogprobs)
	}
	j.done = len(j.feed)
	keep := len(j.feed) - j.nDraft() + verdict.Accepted
	j.s.kv = append(j.s.kv[:j.base], j.feed[:keep]...)
	if err := v.ectx.Remove(j.s.slot, j.base+keep); err != nil {
		fail(j.res, events.StatusOverloaded, ReasonEngine, err.Error())
		v.dropSession(j.s)
		return
	}
	j.res.Status = events.StatusOK
	j.res.Accepted = verdict.Accepted
	j.res.Token = verdict.Next
	j.res.EOS = v.model.IsEOG(verdict.Next)
	v.stats.Drafts++
	v.stats.DraftTokens += uint64(j.nDraft())
	v.stats.Accepted += uint64(verdict.Accepted)
	if j.res.EOS {
		// The text ended: the device sends no more rounds of this session. Its
		// slot is free at once, its cells kept for a session that starts the
		// same way (a retry of this round resyncs and finds them).
		v.slots.release(j.s.id)
	}
}

// compact closes the gaps that sessions which ended left between the busy
// slots, with a stream per slot: the farthest session moves into each gap
// (slotTable.compact, engine.Context.Swap). A session whose exchange fails is
// dropped; its device resyncs.
func (v *Verifier) compact() {
	if v.cfg.UnifiedKV {
		return
	}
	for _, mv := range v.slots.compact() {
		if err := v.ectx.Swap(mv.From, mv.To); err != nil {
			v.slots.free.Release(mv.From, nil)
			v.dropSession(mv.s)
			continue
		}
		v.stats.Swaps++
	}
}

func (v *Verifier) dropSession(s *session) {
	_ = v.ectx.Clear(s.slot)
	v.slots.drop(s.id)
}

// Forget drops a device session's state (the device ended it without an end of
// text, which releases the session by itself). Its slot's cells stay for a
// later session whose prefix starts the same way.
func (v *Verifier) Forget(deviceID, sessionID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if s := v.slots.get(deviceID + "/" + sessionID); s != nil {
		v.slots.release(s.id)
	}
}

// NextRound is the round a device would send after r, the ok result of its
// round d, with no draft (its draft budget being 0): the result's token as
// its committed token, the prefix hashed from the verifier's own cache of
// the session. The worker verifies it on the device's behalf when d allowed
// that (DraftReady.ServerRounds), so a device held at budget 0 costs the
// server a pass and no round trip. It reports false when no such round
// follows: d allowed none, r is not ok or ended the text, or the verifier no
// longer holds the session as r left it (evicted, rebuilt, or rolled back by
// a later round). The round inherits d's sampling, logprob request, latency
// objective and vocabulary; its deadline is deadline and its due time, with
// an objective, now plus one token's objective.
func (v *Verifier) NextRound(d *events.DraftReady, r *events.VerifyResult, now, deadline time.Time) (events.DraftReady, bool) {
	if d.ServerRounds <= 0 || r.Status != events.StatusOK || r.EOS || r.Round != d.Round || r.SessionID != d.SessionID {
		return events.DraftReady{}, false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.slots.get(sessionKey(d))
	if s == nil || len(s.kv) != d.PrefixLen+r.Accepted || d.PrefixLen+r.Accepted+2 > v.cfg.SlotContext {
		return events.DraftReady{}, false
	}
	h := events.NewPrefixHasher()
	h.Write(s.kv...)
	h.Write(r.Token)
	next := events.DraftReady{
		DeviceID: d.DeviceID, SessionID: d.SessionID, Round: d.Round + 1, Pool: d.Pool,
		PrefixLen: len(s.kv) + 1, PrefixHash: h.Sum(),
		Committed: []int32{r.Token}, Draft: []int32{}, DraftProbs: []float32{},
		Sampling: d.Sampling, Logprobs: d.Logprobs, TopLogprobs: d.TopLogprobs,
		VocabFingerprint: d.VocabFingerprint, Deadline: deadline, TPOTMs: d.TPOTMs,
		ServerRounds: d.ServerRounds - 1,
	}
	if d.TPOTMs > 0 {
		next.Due = now.Add(time.Duration(d.TPOTMs * float64(time.Millisecond)))
	}
	return next, true
}
