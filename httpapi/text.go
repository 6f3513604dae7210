package httpapi

import (
	"strings"
	"unicode/utf8"

	"github.com/sled-project/sled/textgen"
)

// textAssembler builds a generation's text from detokenized pieces: it finds stop
// strings across piece boundaries, holds back a tail that could still become a stop
// string, and records which bytes came from unverified tokens. It is not safe for
// concurrent use.
type textAssembler struct {
	stops   []string
	maxStop int

	buf      []byte   // all text so far (truncated before a stop string once found)
	released int      // bytes of buf handed out by release
	spans    [][2]int // unverified byte ranges of buf, sorted, merged
	stopped  bool     // no more text: a stop string was found, or finish was called
	cut      bool     // a stop string was found
	runes    int      // code points added (before any cut)

	lps   []tokenLogprob // logprobs of the tokens added, when asked for
	lpOut int            // lps handed out by takeLogprobs
}

// tokenLogprob is one token's logprob with where its text starts.
type tokenLogprob struct {
	textgen.Logprob
	piece  []byte // the token's own bytes (may be part of a character)
	start  int    // byte offset of its text in buf
	offset int    // code point offset of its text
}

func newTextAssembler(stops []string) *textAssembler {
	a := &textAssembler{}
	for _, s := range stops {
		if s != "" {
			a.stops = append(a.stops, s)
			a.maxStop = max(a.maxStop, len(s))
		}
	}
	return a
}

// add appends piece and reports whether a stop string is now complete; then the
// text ends before it and add must not be called again.
func (a *textAssembler) add(piece string, unverified bool) (stopped bool) {
	if a.stopped || piece == "" {
		return a.stopped
	}
	old := len(a.buf)
	a.buf = append(a.buf, piece...)
	a.runes += utf8.RuneCountInString(piece)
	if unverified {
		if n := len(a.spans); n > 0 && a.spans[n-1][1] == old {
			a.spans[n-1][1] = len(a.buf)
		} else {
			a.spans = append(a.spans, [2]int{old, len(a.buf)})
		}
	}
	// Text before old held no stop string, so any occurrence ends in the new piece.
	from := max(0, old-a.maxStop+1)
	cut := -1
	for _, s := range a.stops {
		if i := strings.Index(string(a.buf[from:]), s); i >= 0 && (cut < 0 || from+i < cut) {
			cut = from + i
		}
	}
	if cut < 0 {
		return false
	}
	a.buf = a.buf[:cut]
	a.stopped, a.cut = true, true
	return true
}

// addLogprob records the logprob of the token whose text add receives next (call
// it before that add). piece is the token's own bytes.
func (a *textAssembler) addLogprob(lp textgen.Logprob, piece []byte) {
	if a.stopped {
		return
	}
	a.lps = append(a.lps, tokenLogprob{Logprob: lp, piece: piece, start: len(a.buf), offset: a.runes})
}

// takeLogprobs returns the logprobs of the tokens whose text has been released and
// that were not taken yet. Once finished, it returns the rest: every token's,
// unless a stop string cut the text, when the tokens wholly after the cut have
// none (their text is not in the output).
func (a *textAssembler) takeLogprobs() []tokenLogprob {
	k := a.lpOut
	// stopped without a cut means finish was called: every token counts.
	for k < len(a.lps) && (a.lps[k].start < a.released || a.stopped && !a.cut) {
		k++
	}
	out := a.lps[a.lpOut:k]
	a.lpOut = k
	return out
}

// release returns the text that can no longer become part of a stop string and has
// not been released yet. Once stopped, it returns the rest of the text.
func (a *textAssembler) release() string {
	end := len(a.buf)
	if !a.stopped {
		end -= a.heldBack()
	}
	if end <= a.released {
		return ""
	}
	s := string(a.buf[a.released:end])
	a.released = end
	return s
}

// finish releases everything, the held-back tail included: the generation is over.
func (a *textAssembler) finish() string {
	a.stopped = true
	return a.release()
}

// heldBack is the length of the longest unreleased suffix of buf that is a proper
// prefix of a stop string.
func (a *textAssembler) heldBack() int {
	for k := min(a.maxStop-1, len(a.buf)-a.released); k > 0; k-- {
		tail := string(a.buf[len(a.buf)-k:])
		for _, s := range a.stops {
			if strings.HasPrefix(s, tail) {
				return k
			}
		}
	}
	return 0
}

// text is the full text (truncated before the stop string, if one was found).
func (a *textAssembler) text() string { return string(a.buf) }

// unverifiedSpans converts the unverified byte ranges inside the final text to code
// point offsets.
func (a *textAssembler) unverifiedSpans() [][2]int {
	var out [][2]int
	for _, sp := range a.spans {
		lo, hi := sp[0], min(sp[1], len(a.buf))
		if lo >= hi {
			continue
		}
		out = append(out, [2]int{utf8.RuneCount(a.buf[:lo]), utf8.RuneCount(a.buf[:hi])})
	}
	return out
}
