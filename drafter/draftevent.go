package drafter

import (
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/events"
)

// DraftRound is one round of a device session, as the device (and the
// benchmark's simulated devices) know it; Event turns it into the draft.ready
// event the verifier reads. It is the one place that event is built.
type DraftRound struct {
	DeviceID, SessionID, Pool string
	Round                     uint64
	// Committed is the session's whole committed sequence (prompt and output);
	// Committed[:Sent] is in the verifier's cache after the last verdict.
	Committed []engine.Token
	Sent      int
	// Draft and Probs are the draft tokens and the draft model's probability of
	// each.
	Draft []engine.Token
	Probs []float32
	// Dists, when the device sampled Draft from its top-k distributions
	// (textgen.SamplingTopK), holds that distribution for each draft token;
	// with rejection sampling and no Dists, the event declares a point mass on
	// each draft token (greedy drafting).
	Dists [][]engine.TokenProb
	// WithPrefix sends the whole committed sequence, for a verifier that lacks
	// the session (the first round, or a resync).
	WithPrefix bool
	Sampling   events.Sampling
	// Logprobs and TopLogprobs ask for the target's logprobs of the outcome.
	Logprobs    bool
	TopLogprobs int
	// VocabFingerprint is the draft model's (engine.Model.Fingerprint).
	VocabFingerprint string
	// Timeout is how long the device waits for the verdict: the event's deadline
	// is now plus Timeout.
	Timeout time.Duration
	// TPOT is the session's latency objective per output token (0: none) and
	// Due when this round's result must arrive to keep it (zero: none).
	TPOT time.Duration
	Due  time.Time
	// ServerRounds is the most rounds after this one the verifier may run on
	// the device's behalf (events.DraftReady.ServerRounds); the caller keeps
	// it within what the generation may still produce and numbers no round
	// of its own up to Round+ServerRounds.
	ServerRounds int
	// End marks the session's end (events.DraftReady.End): no draft.
	End bool
}

// RoundDue is when a round begun at began with pending draft tokens must get
// its result for the session to keep tpot per output token: its expected
// output, one token plus the pending ones at the session's acceptance so far
// (accepted of drafted; one half before any), at tpot each. Zero without an
// objective. The device, the benchmark's simulated devices and the simulator
// (bench/sim) all set DraftRound.Due with it.
func RoundDue(began time.Time, tpot time.Duration, pending, drafted, accepted int) time.Time {
	if tpot <= 0 {
		return time.Time{}
	}
	rate := 0.5
	if drafted > 0 {
		rate = float64(accepted) / float64(drafted)
	}
	return began.Add(time.Duration((1 + rate*float64(pending)) * float64(tpot)))
}

// ServerAllowance is what a round may allow the verifier to run on the
// device's behalf (DraftRound.ServerRounds): at most limit
// (Config.ServerRounds: 0 its default, negative none), and no more than the
// tokens the generation may still produce, room, after the round's draft
// tokens and its verdict's own token, so that the verifier never runs past
// the generation's end. The device, the benchmark's simulated devices and
// the simulator (bench/sim) all allow with it.
func ServerAllowance(limit, room, draft int) int {
	if limit < 0 {
		return 0
	}
	if limit == 0 {
		limit = DefaultServerRounds
	}
	return max(min(limit, room-draft-1), 0)
}

// OwnRound is the number of a device's next round of its own after round,
// when the verifier may run rounds up to serverUntil on its behalf: above
// both, so that a late result of a round the verifier ran never passes for
// one of the device's, and the device's round supersedes the verifier's.
func OwnRound(round, serverUntil uint64) uint64 { return max(round, serverUntil) + 1 }

// SessionEnd is the draft.ready that ends a session before an end of text
// (events.DraftReady.End): numbered as the device's own next round (OwnRound),
// no draft, the committed sequence's length and hash.
func SessionEnd(deviceID, sessionID, pool string, round, serverUntil uint64, committed []engine.Token, fingerprint string, timeout time.Duration, now time.Time) *events.DraftReady {
	return DraftRound{
		DeviceID: deviceID, SessionID: sessionID, Pool: pool, Round: OwnRound(round, serverUntil),
		Committed: committed, Sent: len(committed), VocabFingerprint: fingerprint, Timeout: timeout, End: true,
	}.Event(now)
}

// Event builds the round's draft.ready event, its deadline counted from now.
// It copies every slice, so the round's own may change afterwards.
func (r DraftRound) Event(now time.Time) *events.DraftReady {
	ev := &events.DraftReady{
		DeviceID: r.DeviceID, SessionID: r.SessionID, Round: r.Round, Pool: r.Pool,
		PrefixLen: len(r.Committed), PrefixHash: events.PrefixHash(r.Committed),
		Committed:        append([]int32{}, r.Committed[r.Sent:]...),
		Draft:            append([]int32{}, r.Draft...),
		DraftProbs:       append([]float32{}, r.Probs...),
		Sampling:         r.Sampling,
		Logprobs:         r.Logprobs,
		TopLogprobs:      r.TopLogprobs,
		VocabFingerprint: r.VocabFingerprint,
		Deadline:         now.Add(r.Timeout),
		TPOTMs:           float64(r.TPOT) / float64(time.Millisecond),
		Due:              r.Due,
		ServerRounds:     min(max(r.ServerRounds, 0), events.MaxServerRounds),
		End:              r.End,
	}
	if r.WithPrefix {
		ev.Prefix = append([]int32(nil), r.Committed...)
	}
	switch {
	case r.Sampling.Temperature <= 0 || r.Sampling.Mode == events.SamplingCoupled:
		// Greedy, or coupled: the verifier needs no draft distribution.
	case len(r.Dists) == len(r.Draft):
		for _, d := range r.Dists {
			tk := events.TopK{IDs: make([]int32, len(d)), Probs: make([]float32, len(d))}
			for i, tp := range d {
				tk.IDs[i], tk.Probs[i] = tp.Token, tp.Prob
			}
			ev.TopK = append(ev.TopK, tk)
		}
	default:
		// The device drafted greedily, so its draft distribution is a point
		// mass on each draft token; telling the verifier so keeps speculative
		// sampling exact (accept with p(x), resample from p without x on
		// rejection).
		for _, t := range r.Draft {
			ev.TopK = append(ev.TopK, events.TopK{IDs: []int32{t}, Probs: []float32{1}})
		}
	}
	return ev
}
