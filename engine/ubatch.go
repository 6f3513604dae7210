package engine

// Micro-batch planning for contexts with a KV stream per slot (SeparateKV).
//
// With a stream per slot, llama.cpp evaluates a batch in micro-batches that each
// hold the same number of tokens from every slot of a run of consecutive slots
// (llama_batch_allocr::split_equal with sequential sequence ids): a ragged batch,
// or one with a gap in its slots, costs several forward passes, each of which
// reads every weight. Padding the short slots (and the gaps) with tokens that are
// evaluated and then removed turns such a batch into fewer micro-batches at the
// price of the padding's compute. Which is cheaper depends on the hardware: a CPU
// pays for every token about as much as for a pass's fixed cost divided by a few,
// a GPU at small batch almost nothing per token. planPadding chooses by a cost in
// tokens: tokens evaluated plus passTokens per micro-batch.

// microBatches is how many micro-batches llama.cpp's split_equal (sequential)
// makes of a batch whose entries, sorted by slot, give slot lo+i counts[i] tokens
// (0: the slot is absent), with at most maxUbatch tokens per micro-batch.
func microBatches(counts []int, maxUbatch int) int {
	rem := append([]int(nil), counts...)
	n := 0
	for {
		start := -1
		for i, r := range rem {
			if r > 0 {
				start = i
				break
			}
		}
		if start < 0 {
			return n
		}
		// A run of consecutive slots that still have tokens, at most maxUbatch long.
		end := start
		for end+1 < len(rem) && rem[end+1] > 0 && end+1-start+1 <= maxUbatch {
			end++
		}
		seqs := end - start + 1
		k := rem[start]
		for _, r := range rem[start : end+1] {
			k = min(k, r)
		}
		k = max(1, min(k, maxUbatch/seqs))
		for i := start; i <= end; i++ {
			rem[i] -= k
		}
		n++
	}
}

// planPadding returns how many padding tokens to add to each slot of counts (as
// for microBatches) to minimise the batch's cost: tokens evaluated plus
// passTokens per micro-batch. It tries padding every slot below a level L up to L,
// for L = 0 (no padding) and each count present; room[i] caps slot i's padding
// (the positions left in its stream), and a level that does not fit is skipped.
// Ties go to less padding.
func planPadding(counts, room []int, passTokens float64, maxUbatch int) []int {
	pad := make([]int, len(counts))
	total := 0
	for _, c := range counts {
		total += c
	}
	best := float64(total) + passTokens*float64(microBatches(counts, maxUbatch))
	bestPad := 0
	padded := make([]int, len(counts))
	tried := map[int]bool{0: true}
	for _, level := range counts {
		if tried[level] {
			continue
		}
		tried[level] = true
		extra, fits := 0, true
		for i, c := range counts {
			padded[i] = max(c, level)
			if p := padded[i] - c; p > 0 {
				if p > room[i] {
					fits = false
					break
				}
				extra += p
			}
		}
		if !fits || total+extra > maxUbatch {
			continue
		}
		cost := float64(total+extra) + passTokens*float64(microBatches(padded, maxUbatch))
		if cost < best || cost == best && extra < bestPad {
			best, bestPad = cost, extra
			for i, c := range counts {
				pad[i] = max(c, level) - c
			}
		}
	}
	return pad
}
