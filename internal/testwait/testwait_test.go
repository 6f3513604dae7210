package testwait

import (
	"testing"
	"time"
)

func TestEventually(t *testing.T) {
	n := 0
	if !Eventually(time.Second, time.Millisecond, func() bool { n++; return n == 3 }) || n != 3 {
		t.Fatalf("cond true at the 3rd call: Eventually stopped after %d calls", n)
	}
	n = 0
	start := time.Now()
	if Eventually(30*time.Millisecond, 5*time.Millisecond, func() bool { n++; return false }) {
		t.Fatal("Eventually reported a condition that never held")
	}
	if el := time.Since(start); el < 30*time.Millisecond || el > 2*time.Second {
		t.Fatalf("gave up after %v, want about 30ms", el)
	}
	if n < 2 {
		t.Fatalf("cond called %d times in 30ms at a 5ms tick", n)
	}
}
