package events

import "encoding/json"

// AddressOf finds, best effort, whom an error result about a rejected message
// should go to. It trusts the subject for the device (device subjects are
// what NATS permissions guard, so a device cannot name another) and reads
// session and round leniently from the data, keeping only valid values:
//
//   - sled.draft.<pool>.<device>: that device, with the session and round
//     of the data if they parse;
//   - sled.batch.<pool>[.<worker>]: every draft in the data whose device,
//     session and round parse;
//   - anything else (results, unparsable subjects): nobody.
func AddressOf(subject string, data []byte) []Address {
	s, err := ParseSubject(subject)
	if err != nil {
		return nil
	}
	switch s.Kind {
	case KindDraft:
		var d struct {
			SessionID any `json:"session_id"`
			Round     any `json:"round"`
		}
		_ = json.Unmarshal(data, &d)
		a := Address{DeviceID: s.Device}
		if sid, ok := d.SessionID.(string); ok && ValidID(sid) {
			a.SessionID = sid
			a.Round = lenientRound(d.Round)
		}
		return []Address{a}
	case KindBatch:
		var b struct {
			Drafts []struct {
				DeviceID  any `json:"device_id"`
				SessionID any `json:"session_id"`
				Round     any `json:"round"`
			} `json:"drafts"`
		}
		if json.Unmarshal(data, &b) != nil {
			return nil
		}
		var out []Address
		for _, d := range b.Drafts {
			dev, _ := d.DeviceID.(string)
			if !ValidID(dev) {
				continue
			}
			a := Address{DeviceID: dev}
			if sid, ok := d.SessionID.(string); ok && ValidID(sid) {
				a.SessionID = sid
				a.Round = lenientRound(d.Round)
			}
			out = append(out, a)
		}
		return out
	}
	return nil
}

func lenientRound(v any) uint64 {
	f, ok := v.(float64)
	if !ok || f < 1 || f > 1<<53 || f != float64(uint64(f)) {
		return 0
	}
	return uint64(f)
}
