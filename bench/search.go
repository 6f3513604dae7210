package bench

// SearchMax returns the largest n in [lo, hi] for which ok(n) holds, assuming ok
// is monotone (true up to some n, false beyond). It grows n geometrically from lo
// until ok fails or hi is reached, then bisects until the bracket is narrower than
// tol(n) (at least 1, so tol returning 0 or 1 gives the exact answer). It returns
// lo-1 when ok(lo) is false, and stops at the first error.
func SearchMax(lo, hi int, tol func(n int) int, ok func(n int) (bool, error)) (int, error) {
	s := NewSearch(lo, hi, tol)
	for n, more := s.Next(); more; n, more = s.Next() {
		pass, err := ok(n)
		if err != nil {
			return s.Result(), err
		}
		s.Report(pass)
	}
	return s.Result(), nil
}

// Search is [SearchMax] one probe at a time, so that several searches can take
// turns on one machine (see [Interleave]): Next says which n to probe, Report
// takes its outcome, Result is the answer so far (the final one once Next says
// there is nothing left to probe). A Search is not safe for concurrent use.
type Search struct {
	tol              func(int) int
	hi, good, bad, n int
	growing          bool
}

// NewSearch starts a search of [lo, hi] with SearchMax's rules.
func NewSearch(lo, hi int, tol func(n int) int) *Search {
	return &Search{tol: tol, hi: hi, good: lo - 1, bad: hi + 1, n: lo, growing: hi >= lo}
}

// Next returns the n to probe next, or false when the search is over.
func (s *Search) Next() (int, bool) {
	if s.growing {
		return s.n, true
	}
	if s.bad-s.good > max(1, s.tol(s.good)) {
		s.n = s.good + (s.bad-s.good)/2
		return s.n, true
	}
	return 0, false
}

// Report records whether the n that Next returned passed.
func (s *Search) Report(pass bool) {
	if pass {
		s.good = s.n
	} else {
		s.bad = s.n
	}
	if s.growing {
		if !pass || s.n == s.hi {
			s.growing = false
		} else {
			s.n = min(s.hi, s.n*2)
		}
	}
}

// Result is the largest n known to pass (lo-1 if none).
func (s *Search) Result() int { return s.good }

// Interleave runs searches in turns of one probe each, probe(i, n) probing
// search i at n, until every search is over or a probe fails with an error
// (returned). The order of a turn alternates, forward then backward, so that
// on a machine whose speed drifts no search's probes always run first: run one
// after the other, the searches of two systems would hand the drift to one of
// them.
func Interleave(searches []*Search, probe func(i, n int) (bool, error)) error {
	for turn := 0; ; turn++ {
		active := false
		for k := range searches {
			i := k
			if turn%2 == 1 {
				i = len(searches) - 1 - k
			}
			n, more := searches[i].Next()
			if !more {
				continue
			}
			active = true
			pass, err := probe(i, n)
			if err != nil {
				return err
			}
			searches[i].Report(pass)
		}
		if !active {
			return nil
		}
	}
}
