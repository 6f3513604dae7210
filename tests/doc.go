// Package tests holds SLED's end-to-end, fault and load tests: real NATS (embedded
// or separate server processes), real llama.cpp inference on the shared test
// models, and the real services wired as `sled up` wires them.
package tests
