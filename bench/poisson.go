package bench

import (
	"math"
	"math/rand/v2"
	"time"
)

// Poisson draws the gaps of a Poisson process of a given rate (events per second).
// It is deterministic for a given seed. Not safe for concurrent use.
type Poisson struct {
	rate float64
	rng  *rand.Rand
}

// NewPoisson returns a Poisson process of rate events per second (> 0), seeded.
func NewPoisson(rate float64, seed uint64) *Poisson {
	return &Poisson{rate: rate, rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))}
}

// Gap returns the time to the next event: an exponential draw of mean 1/rate.
func (p *Poisson) Gap() time.Duration {
	return seconds(p.rng.ExpFloat64() / p.rate)
}

// Gaps returns the time until k more events: the sum of k exponential draws (an
// Erlang-k draw of mean k/rate). A device that drafts tokens as a Poisson process
// sends a k-token draft after Gaps(k).
func (p *Poisson) Gaps(k int) time.Duration {
	s := 0.0
	for range k {
		s += p.rng.ExpFloat64()
	}
	return seconds(s / p.rate)
}

func seconds(s float64) time.Duration {
	if s > math.MaxInt64/float64(time.Second) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(s * float64(time.Second))
}
