// Package goodput decides how many tokens each device may draft in its next
// round: the draft budget, 0 ... Policy.MaxBudget, that maximises the server's
// goodput (expected output tokens per second of server time) while the devices'
// latency objectives are met.
//
// Speculation is not free on a server: every draft token is evaluated by the
// target, accepted or not. Whether it pays depends on two things the server
// measures for itself:
//
//   - the pass-cost curve, the time of a forward pass over n tokens
//     (CostEstimator, fitted online from the verifier's own passes): on a GPU a
//     pass over 64 tokens costs little more than one over 8 (memory-bound), so
//     long drafts are nearly free; on a CPU past about 16 tokens every token
//     costs the same (compute-bound), and a draft token pays only when it is
//     accepted more often than the batch's tokens already are;
//   - each device's acceptance per draft position (Acceptance, a decaying
//     estimate): a code-writing device whose drafts agree with the target nine
//     times in ten earns a longer budget than a prose device at one in three.
//
// Policy.Choose is the decision, pure and tested alone; Tracker keeps the
// per-device state a verifier (and the simulator, bench/sim) feeds it. With
// budget 0 a device sends only its committed token and the verifier returns
// the target's next token: plain decoding through the same path, so
// speculation never does worse than not speculating, by the server's own
// measurements.
package goodput
