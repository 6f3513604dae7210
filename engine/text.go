package engine

import "unicode/utf8"

// TextStream turns tokens into text as they are generated. A character whose UTF-8
// bytes are split across tokens (SentencePiece byte-fallback tokens, for instance)
// is held back until it is whole, so every string Add returns is valid UTF-8 as
// long as the model's bytes are. A TextStream is not safe for concurrent use.
type TextStream struct {
	m       *Model
	pending []byte
}

// NewTextStream returns a stream that detokenizes with m's vocabulary.
func (m *Model) NewTextStream() *TextStream { return &TextStream{m: m} }

// Add appends token t and returns the text that is now complete (possibly "").
func (s *TextStream) Add(t Token) string {
	s.pending = append(s.pending, s.m.Piece(t)...)
	n := completePrefix(s.pending)
	out := string(s.pending[:n])
	s.pending = append(s.pending[:0], s.pending[n:]...)
	return out
}

// Flush returns whatever is held back (an incomplete character at the end of
// generation) and resets the stream.
func (s *TextStream) Flush() string {
	out := string(s.pending)
	s.pending = s.pending[:0]
	return out
}

// completePrefix is the length of b without a trailing incomplete UTF-8 sequence.
// Bytes that can never start or continue a valid sequence are passed through.
func completePrefix(b []byte) int {
	// Look back at most UTFMax-1 bytes for the start of the last character.
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		c := b[i]
		if c < utf8.RuneSelf { // ASCII: everything up to here is complete
			return len(b)
		}
		if utf8.RuneStart(c) {
			if utf8.FullRune(b[i:]) {
				return len(b)
			}
			return i
		}
	}
	return len(b)
}
