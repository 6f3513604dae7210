package sim

import (
	"math"
	"testing"
	"time"

	"github.com/sled-project/sled/batcher"
)

func TestLoopOrder(t *testing.T) {
	var l Loop
	l.At(2, 0, 1)
	l.At(1, 0, 2)
	l.At(2, 0, 3) // same time as dev 1, scheduled later: runs after it
	l.At(0.5, 0, 4)
	l.At(2, 0, 5)
	var got []int
	last := 0.0
	for {
		_, dev, ok := l.Next()
		if !ok {
			break
		}
		if l.Now < last {
			t.Fatalf("time went back: %v after %v", l.Now, last)
		}
		last = l.Now
		got = append(got, dev)
	}
	want := []int{4, 2, 1, 3, 5}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order %v, want %v", got, want)
		}
	}
}

type fixedRounds Round

func (f fixedRounds) Next() Round { return Round(f) }

func TestSLEDOneDevice(t *testing.T) {
	// One device, deterministic cost: each round is draft time (Erlang, mean
	// 4/20 s) + up + pass + down; the early close ("all active devices") makes the
	// batch close at once. tokens/round = 3.
	cfg := Config{
		Devices: 1, DraftRate: 20, Rounds: func(int) RoundSource { return fixedRounds{Len: 4, Accepted: 2} },
		Batch: batcher.Policy{Size: 8, MaxWait: 20 * time.Millisecond},
		Cost:  PassCost{FixedMs: 10, PerTokenMs: 1}, UpMs: 2, DownMs: 3, Duration: 2000, Seed: 1,
	}
	r := SLED(cfg)
	round := 4.0/20 + (2+10+5+3)/1000.0
	if want := 3 / round; math.Abs(r.TokensPerSec-want)/want > 0.03 {
		t.Errorf("tokens/s %.2f, want %.2f", r.TokensPerSec, want)
	}
	if r.MeanBatch != 1 {
		t.Errorf("mean batch %v, want 1", r.MeanBatch)
	}
	if want := (2 + 10 + 5 + 3.0); math.Abs(r.RoundMs-want) > 0.01 {
		t.Errorf("round %.3f ms, want %.3f", r.RoundMs, want)
	}
}

func TestSLEDSaturates(t *testing.T) {
	// Instant drafting: the server is the bottleneck and batches fill to Size.
	cfg := Config{
		Devices: 64, DraftRate: 1e6, Rounds: func(int) RoundSource { return fixedRounds{Len: 3, Accepted: 1} },
		Batch: batcher.Policy{Size: 16, MaxWait: time.Millisecond, NoEarlyClose: true},
		Cost:  PassCost{FixedMs: 20, PerTokenMs: 0.5}, Duration: 100,
	}
	r := SLED(cfg)
	// Full batches of 16 x 4 tokens: 52 ms per pass, 32 output tokens.
	if want := 32 / 0.052; math.Abs(r.TokensPerSec-want)/want > 0.02 {
		t.Errorf("tokens/s %.1f, want %.1f (mean batch %.1f)", r.TokensPerSec, want, r.MeanBatch)
	}
}

func TestCentralized(t *testing.T) {
	r := Centralized(Config{Devices: 10, Cost: PassCost{FixedMs: 5, PerTokenMs: 0.5}, Duration: 10})
	// 10 ms per step: 100 tokens/s per device.
	if math.Abs(r.MeanPerDevice-100) > 0.5 || math.Abs(r.TokensPerSec-1000) > 5 {
		t.Errorf("per device %.1f, system %.1f", r.MeanPerDevice, r.TokensPerSec)
	}
}

func TestFit(t *testing.T) {
	truth := PassCost{FixedMs: 7, PerTokenMs: 1.9, PerSeqMs: 0.3}
	var s []Sample
	for _, n := range []int{1, 2, 4, 8} {
		for _, k := range []int{1, 3, 5} {
			s = append(s, Sample{Seqs: n, Tokens: n * k, Ms: truth.Ms(n*k, n)})
		}
	}
	got, e := Fit(s)
	if math.Abs(got.FixedMs-7) > 1e-6 || math.Abs(got.PerTokenMs-1.9) > 1e-6 || math.Abs(got.PerSeqMs-0.3) > 1e-6 || e > 1e-9 {
		t.Errorf("fit %+v err %v, want %+v", got, e, truth)
	}
}
