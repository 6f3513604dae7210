package bench

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sled-project/sled/bench/sim"
	"github.com/sled-project/sled/centralized"
	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/textgen"
)

var (
	// errWindowClosed ends a generation once the measuring window has passed.
	errWindowClosed = errors.New("bench: window closed")
	// errDiverged ends a generation at its first token that differs from the
	// precomputed continuation.
	errDiverged = errors.New("bench: diverged from the reference")
)

// RunCentralized runs the centralized baseline: t.Devices clients, each generating
// one prompt's continuation after another through a real centralized.Server
// (continuous batching, one slot per device, the same engine and target), and
// measures the tokens each client gets. Clients ask for tokens as fast as the
// server gives them (a thin client has nothing else to do). A request whose
// tokens diverge from the precomputed continuation (a near-tie between the
// batched pass and the reference) ends there, its differing token not counted,
// and the client goes on with its next prompt: as a SLED trial's device does,
// so that both systems serve the same sessions (a session cut short costs
// either system a new prompt). Mismatches counts those ends within the window.
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
				p := sessionPrompt(i, k, len(e.Prompts))
				cont := e.Conts[p]
				j := 0
				_, err := srv.Generate(runCtx, textgen.Request{Prompt: e.Prompts[p], MaxTokens: len(cont)}, func(c textgen.Chunk) error {
					ok, diverged := follows(c.Tokens, cont, j)
					j += ok
					now := time.Now()
					if diverged {
						if win.In(now) {
							mu.Lock()
							mismatches++
							mu.Unlock()
						}
						if !win.Add(i, ok, now) {
							return errWindowClosed
						}
						return errDiverged
					}
					if !win.Add(i, ok, now) {
						return errWindowClosed
					}
					return nil
				})
				if errors.Is(err, errDiverged) {
					err = nil
				}
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

// follows reports how many of toks, a generation's next tokens from position j
// of its reference continuation cont, still follow cont, and whether toks
// depart from it. Tokens past the end of cont follow it: a reference that ends
// early (its end-of-generation token) is not a divergence.
func follows(toks, cont []engine.Token, j int) (ok int, diverged bool) {
	for ok < len(toks) && j+ok < len(cont) && toks[ok] == cont[j+ok] {
		ok++
	}
	return ok, ok < len(toks) && j+ok < len(cont)
}

// sessionPrompt is the prompt (an index into n prompts) of client i's k-th
// session in a trial of either system: the clients start spread over the
// prompts and each goes on to the next prompt with every session. A client
// that kept one prompt (each of 16 clients did with 8 prompts when session k
// took prompt i + 16k) would, where a near-tie in one system's layout ends
// that prompt's sessions at their first tokens, spend the whole trial
// restarting it: a slot lost for good to one rounding. Moving on costs that
// once.
func sessionPrompt(i, k, n int) int { return (i + k) % n }
