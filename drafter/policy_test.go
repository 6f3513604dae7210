package drafter

import (
	"testing"
	"time"
)

func TestDraftPolicy(t *testing.T) {
	p := DraftPolicy{Threshold: 0.5, MinLen: 2, MaxLen: 4}.WithDefaults()
	cases := []struct {
		n    int
		conf float32
		want bool
	}{
		{0, 0.1, true},   // below MinLen: draft regardless
		{1, 0.0, true},   // still below MinLen
		{2, 0.49, false}, // unsure: stop
		{2, 0.5, true},   // at the threshold: go on
		{3, 0.99, true},
		{4, 0.99, false}, // MaxLen
	}
	for _, c := range cases {
		if got := p.Continue(c.n, c.conf); got != c.want {
			t.Errorf("Continue(%d, %v) = %v, want %v", c.n, c.conf, got, c.want)
		}
	}
	fixed := DraftPolicy{Fixed: true, MaxLen: 3}.WithDefaults()
	if again := fixed.WithDefaults(); again != fixed {
		t.Errorf("WithDefaults not idempotent: %+v, then %+v", fixed, again)
	}
	if old := (DraftPolicy{Threshold: -1, MaxLen: 3}).WithDefaults(); old != fixed {
		t.Errorf("Threshold -1: %+v, want %+v", old, fixed)
	}
	for n := range 3 {
		if !fixed.Continue(n, 0) {
			t.Errorf("fixed length stopped at %d", n)
		}
	}
	if fixed.Continue(3, 1) {
		t.Error("fixed length went past MaxLen")
	}
	d := DraftPolicy{}.WithDefaults()
	if again := d.WithDefaults(); again != d {
		t.Errorf("WithDefaults not idempotent: %+v, then %+v", d, again)
	}
	if d.Threshold != DefaultThreshold || d.MinLen != DefaultMinLen || d.MaxLen != DefaultMaxLen {
		t.Errorf("defaults %+v", d)
	}
	if big := (DraftPolicy{MaxLen: 1000}).WithDefaults(); big.MaxLen != MaxDraftLen {
		t.Errorf("MaxLen not capped at the schema limit: %d", big.MaxLen)
	}
	if err := (DraftPolicy{Threshold: 1.5}).Validate(); err == nil {
		t.Error("threshold above 1 accepted")
	}
}

func TestRetryPolicy(t *testing.T) {
	strict := RetryPolicy{}.WithDefaults()
	if strict.Timeout != DefaultTimeout || strict.MaxFailures != DefaultMaxFailures {
		t.Fatalf("defaults %+v", strict)
	}
	if strict.Release(100) {
		t.Error("strict mode released drafts")
	}
	fb := RetryPolicy{Fallback: true, MaxFailures: 2, Timeout: time.Second}.WithDefaults()
	if fb.Release(1) || !fb.Release(2) {
		t.Error("fallback releases after exactly MaxFailures failures")
	}
}
