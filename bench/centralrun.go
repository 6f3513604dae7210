package bench

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sled-project/sled/bench/sim"
	"github.com/sled-project/sled/centralized"
	"github.com/sled-project/sled/textgen"
)

// errWindowClosed ends a generation once the measuring window has passed.
var errWindowClosed = errors.New("bench: window closed")

// RunCentralized runs the centralized baseline: t.Devices clients, each generating
// one prompt's continuation after another through a real centralized.Server
// (continuous batching, one slot per device, the same engine and target), and
// measures the tokens each client gets. Clients ask for tokens as fast as the
// server gives them (a thin client has nothing else to do). Mismatches counts
// requests whose tokens diverge from the precomputed continuation (a near-tie
// between the batched pass and the reference); each counts once, at its first
// differing token, since every later token follows from that one.
func (e *Env) RunCentralized(ctx context.Context, t Trial) (*Measurement, error) {
	t = t.withDefaults()
	if t.Devices <= 0 {
		return nil, errors.New("bench: a centralized trial needs devices")
	}
	srv, err := centralized.New(e.Target, centralized.Config{Slots: t.Devices, SlotContext: e.SlotContext(), Threads: e.Cfg.Threads})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(runCtx) }()
	defer func() { cancel(); <-done; srv.Close() }()

	win := sim.NewWindow(t.Devices, time.Now(), t.Warmup, t.Timeout, t.Duration)
	var mu sync.Mutex
	mismatches := 0
	var wg sync.WaitGroup
	for i := range t.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				p := (i + k*t.Devices) % len(e.Prompts)
				cont := e.Conts[p]
				j, diverged := 0, false
				_, err := srv.Generate(runCtx, textgen.Request{Prompt: e.Prompts[p], MaxTokens: len(cont)}, func(c textgen.Chunk) error {
					for _, tok := range c.Tokens {
						if j < len(cont) && tok != cont[j] && !diverged {
							diverged = true
							mu.Lock()
							mismatches++
							mu.Unlock()
						}
						j++
					}
					if !win.Add(i, len(c.Tokens), time.Now()) {
						return errWindowClosed
					}
					return nil
				})
				if err != nil || runCtx.Err() != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := &Measurement{System: "centralized", Mismatches: mismatches}
	fillWindow(win, m)
	return m, nil
}

// EdgeOnly is the edge-only baseline, modelled: every device generates alone with
// its draft model at its profile's rate, so each device gets TokensPerSec and the
// system devices x TokensPerSec (the draft model's text, not the target's).
func EdgeOnly(p Profile, devices int) *Measurement {
	m := &Measurement{System: "edge", Devices: devices, PerDevice: make([]float64, devices)}
	for i := range m.PerDevice {
		m.PerDevice[i] = p.TokensPerSec
	}
	m.TokensPerSec = p.TokensPerSec * float64(devices)
	summarize(m)
	return m
}
