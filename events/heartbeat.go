package events

import (
	"time"

	"github.com/sled-project/sled/goodput"
)

// Worker heartbeats are plain core-NATS messages (no JetStream, no CloudEvents
// envelope): they are periodic and only the latest matters. A verifier worker
// publishes one every few hundred milliseconds; a batcher that misses them for its
// heartbeat timeout stops routing sessions to that worker.
//
//	sled.hb.<pool>.<worker>   JSON Heartbeat

// HeartbeatSubject returns sled.hb.<pool>.<worker>.
func HeartbeatSubject(pool, worker string) string { return "sled.hb." + pool + "." + worker }

// HeartbeatFilter returns sled.hb.<pool>.*, every worker of a pool.
func HeartbeatFilter(pool string) string { return "sled.hb." + pool + ".*" }

// Heartbeat is a verifier worker's liveness and load report.
type Heartbeat struct {
	Worker   string    `json:"worker"`
	Pool     string    `json:"pool"`
	Sessions int       `json:"sessions"` // sessions holding a KV slot
	Slots    int       `json:"slots"`    // KV slots in all
	Time     time.Time `json:"time"`
	// Model is the id the worker's target model is served under (devices that
	// front an API name the model by it). Optional.
	Model string `json:"model,omitempty"`
	// PassCost is the worker's pass-cost estimate (goodput.CostEstimator):
	// what an SLO-aware batcher expects a batch's pass to take. Optional.
	PassCost goodput.Curve `json:"pass_cost,omitempty"`
}
