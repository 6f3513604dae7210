package events

import "testing"

// BenchmarkCodec measures Encode + Decode (attributes, JSON Schema and
// semantic validation) per event type.
func BenchmarkCodec(b *testing.B) {
	dec := &Decoder{VocabSize: 32000}
	nop := sampleDraft("d1", "s1", 7)
	nop.Prefix = nil
	for _, c := range []struct {
		name string
		p    Payload
	}{
		{"draft.ready", nop},
		{"draft.ready+prefix", sampleDraft("d1", "s1", 7)},
		{"verify.batch(4)", sampleBatch()},
		{"verify.result", sampleResult()},
	} {
		b.Run(c.name, func(b *testing.B) {
			ev := New(sourceOf(c.p), c.p)
			m0, _ := Encode(ev)
			b.SetBytes(int64(len(m0.Data)))
			b.ReportAllocs()
			for b.Loop() {
				ev.ID = ""
				m, err := Encode(ev)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := dec.DecodeMsg(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
