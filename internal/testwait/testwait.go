// Package testwait holds the tests' one polling helper, so that every wait for
// a condition is bounded the same way.
package testwait

import "time"

// Eventually calls cond every tick until it returns true or timeout has
// passed, and reports whether it returned true. cond runs on the caller's
// goroutine, so it may call t.Fatal. It always calls cond at least once, and
// once more at the deadline.
func Eventually(timeout, tick time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(min(tick, max(time.Until(deadline), time.Millisecond)))
	}
}
