package sim

import (
	"testing"
	"time"
)

// The measuring window opens once every device has its first token (not
// before the warm-up ends), counts only what arrives inside it, and closes
// its duration later; a device that never gets a token holds it back no
// longer than the settle bound.
func TestWindowOpensWhenSettled(t *testing.T) {
	t0 := time.Unix(100, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	w := NewWindow(2, t0, 100*time.Millisecond, time.Second, time.Second)
	if !w.Add(0, 5, at(50)) || w.In(at(50)) {
		t.Fatal("a token in the warm-up: the window must stay open for later and not count it")
	}
	w.Add(0, 0, at(300)) // a failed round is not a first token
	if w.In(at(300)) {
		t.Fatal("window open before device 1 has a token")
	}
	w.Add(1, 3, at(400)) // the last device's first token opens it
	if !w.In(at(400)) || !w.In(at(1399)) || w.In(at(1400)) {
		from, to := w.Span()
		t.Fatalf("window [%v, %v), want [400ms, 1400ms)", from.Sub(t0), to.Sub(t0))
	}
	w.Add(0, 2, at(900))
	if w.Add(0, 7, at(1400)) {
		t.Error("a token at the window's end must close it")
	}
	if got := w.Tokens(); got[0] != 2 || got[1] != 3 {
		t.Errorf("tokens %v, want [2 3]", got)
	}
	if !w.Over(at(1400)) || w.Over(at(1399)) {
		t.Error("the window is over at its end, not before")
	}

	// Device 1 never starts: the window opens at warm-up + settle (1.1 s).
	w = NewWindow(2, t0, 100*time.Millisecond, time.Second, time.Second)
	w.Add(0, 1, at(200))
	w.Add(0, 1, at(1200))
	if !w.In(at(1100)) || w.In(at(2100)) {
		from, to := w.Span()
		t.Errorf("window [%v, %v), want [1.1s, 2.1s)", from.Sub(t0), to.Sub(t0))
	}
}
