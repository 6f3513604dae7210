// Package bench is SLED's evaluation harness: it measures the whole system the way
// the SLED paper does (whole-system token generation rate, system capacity,
// speculative length, cost per token) and the centralized and edge-only baselines
// in the same run.
//
// What is measured and what is modelled:
//
//   - Measured: the server. Verification requests go through the real batcher and
//     verifier over NATS JetStream (an embedded server), published with
//     infra.Publisher as a device publishes them, and the target runs a real
//     llama.cpp forward pass over every batch. The centralized baseline is the real
//     centralized.Server with continuous batching on the same engine. Acceptance
//     statistics are measured on real draft/target pairs (see MeasureAcceptance).
//   - Modelled: the devices. A simulated device does not run a draft model; it is a
//     Poisson source of draft tokens at the rate of a device Profile, and it builds
//     each draft from the target's own greedy continuation so that the verifier
//     accepts exactly the number of tokens drawn from the measured acceptance
//     distribution (see Sampler). The verifier's verdicts are checked against that
//     plan (RunStats.Mismatches). Profiles of real edge boards are estimates unless
//     their Source says otherwise; `sled bench device` measures this machine.
//
// Decision and arithmetic code (Poisson draws, acceptance sampling, the cost model,
// capacity search) is pure and unit-tested; the runners around it do the I/O.
package bench
