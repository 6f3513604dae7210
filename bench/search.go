package bench

// SearchMax returns the largest n in [lo, hi] for which ok(n) holds, assuming ok
// is monotone (true up to some n, false beyond). It grows n geometrically from lo
// until ok fails or hi is reached, then bisects until the bracket is narrower than
// tol(n) (at least 1, so tol returning 0 or 1 gives the exact answer). It returns
// lo-1 when ok(lo) is false, and stops at the first error.
func SearchMax(lo, hi int, tol func(n int) int, ok func(n int) (bool, error)) (int, error) {
	if hi < lo {
		return lo - 1, nil
	}
	good, bad := lo-1, hi+1
	for n := lo; n <= hi; {
		pass, err := ok(n)
		if err != nil {
			return good, err
		}
		if !pass {
			bad = n
			break
		}
		good = n
		if n == hi {
			return hi, nil
		}
		n = min(hi, n*2)
	}
	for bad-good > max(1, tol(good)) {
		mid := good + (bad-good)/2
		pass, err := ok(mid)
		if err != nil {
			return good, err
		}
		if pass {
			good = mid
		} else {
			bad = mid
		}
	}
	return good, nil
}
