package events

import "testing"

// BenchmarkCodec measures Encode + Decode (attributes, the schema's Go rules
// and semantic validation) per event type; the "schema" variants also run the
// generic JSON Schema validator (Decoder.Schema), the decode path before the
// Go rules, so that the two are compared in one run.
func BenchmarkCodec(b *testing.B) {
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
		for _, v := range []struct {
			name   string
			schema bool
		}{{"rules", false}, {"schema", true}} {
			dec := &Decoder{VocabSize: 32000, Schema: v.schema}
			b.Run(c.name+"/"+v.name, func(b *testing.B) {
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
}
