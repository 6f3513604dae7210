package bench

import (
	"fmt"
	"strings"
)

// Profile describes one kind of edge device: how fast it drafts and what it costs.
type Profile struct {
	// Name is the profile's key, e.g. "rpi4b".
	Name string `json:"name"`
	// Device is the hardware, in words.
	Device string `json:"device"`
	// DraftModel names the draft model the rate is for.
	DraftModel string `json:"draft_model"`
	// TokensPerSec is the draft model's decode rate on the device (one sequence,
	// greedy), in tokens per second.
	TokensPerSec float64 `json:"tokens_per_sec"`
	// BandwidthGBs is the board's effective memory bandwidth for decoding, in
	// GB/s, from which ForDraft derives the rate for another draft model (0: the
	// profile is a measurement of one model and cannot be rescaled).
	BandwidthGBs float64 `json:"bandwidth_gb_s,omitempty"`
	// PowerW is the board's power draw while drafting, in watts.
	PowerW float64 `json:"power_w"`
	// PriceUSD is the board's purchase price in US dollars.
	PriceUSD float64 `json:"price_usd"`
	// Source says where the numbers come from: a measurement (with how), or an
	// estimate (with how it was derived).
	Source string `json:"source"`
}

// estimateNote is the derivation shared by the built-in board profiles.
const estimateNote = "ESTIMATE, not a measurement: decode of a small model on a CPU is memory-bandwidth bound, " +
	"so rate ≈ effective bandwidth / bytes read per token; draft model = SmolLM-135M at Q8_0 (~145 MB of weights). "

// Built-in device profiles. No board was available to measure, so every figure is
// an estimate whose derivation is in Source; `sled bench device` measures the
// machine it runs on and `--profile-rate` overrides the rate.
var profiles = []Profile{
	{
		Name: "rpi4b", Device: "Raspberry Pi 4 Model B (4x Cortex-A72 1.8 GHz, 4 GB LPDDR4-3200)",
		DraftModel: "smollm-135m Q8_0", TokensPerSec: 20, BandwidthGBs: 3, PowerW: 6.4, PriceUSD: 55,
		Source: estimateNote + "~3 GB/s effective (STREAM-class copy bandwidth of the A72 board) / 0.145 GB ≈ 20 tok/s; " +
			"power: typical whole-board draw under 4-core load (6-7 W); price: 4 GB list price.",
	},
	{
		Name: "rpi5", Device: "Raspberry Pi 5 (4x Cortex-A76 2.4 GHz, 8 GB LPDDR4X-4267)",
		DraftModel: "smollm-135m Q8_0", TokensPerSec: 45, BandwidthGBs: 6.5, PowerW: 9, PriceUSD: 80,
		Source: estimateNote + "~6.5 GB/s effective / 0.145 GB ≈ 45 tok/s; " +
			"power: typical whole-board draw under 4-core load (8-10 W); price: 8 GB list price.",
	},
	{
		Name: "jetson-orin-nano", Device: "NVIDIA Jetson Orin Nano 8 GB (6x Cortex-A78AE, 1024-core Ampere GPU, LPDDR5 68 GB/s)",
		DraftModel: "smollm-135m Q8_0", TokensPerSec: 120, BandwidthGBs: 17, PowerW: 15, PriceUSD: 249,
		Source: estimateNote + "GPU decode at ~25% of the 68 GB/s peak (small models are launch-bound) ≈ 17 GB/s / 0.145 GB ≈ 120 tok/s; " +
			"power: the 15 W mode; price: developer kit list price.",
	},
}

// ForDraft returns the profile for a draft model of the given name and size:
// its rate rescaled to bandwidth / bytes read per token (the model's weights, as
// for the built-in estimates). A profile without a bandwidth is returned as is.
func (p Profile) ForDraft(name string, bytes int64) Profile {
	if p.BandwidthGBs <= 0 || bytes <= 0 {
		return p
	}
	p.TokensPerSec = p.BandwidthGBs * 1e9 / float64(bytes)
	p.Source = fmt.Sprintf("rescaled for %s (%.0f MB): %.1f GB/s / %.3f GB ≈ %.1f tok/s; derivation of the bandwidth: %s",
		name, float64(bytes)/1e6, p.BandwidthGBs, float64(bytes)/1e9, p.TokensPerSec, p.Source)
	p.DraftModel = name
	return p
}

// Profiles returns the built-in device profiles.
func Profiles() []Profile { return append([]Profile(nil), profiles...) }

// LookupProfile returns the built-in profile called name.
func LookupProfile(name string) (Profile, error) {
	var names []string
	for _, p := range profiles {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	return Profile{}, fmt.Errorf("bench: unknown device profile %q; known: %s", name, strings.Join(names, ", "))
}
