package bench

// CostModel is the paper's CAPEX + OPEX model of the price of generated tokens:
// hardware is amortized over its lifetime at a utilization, energy is paid per
// kWh, and a server is rented by the hour.
type CostModel struct {
	// LifetimeYears over which a device's price is amortized. Default 3.
	LifetimeYears float64 `json:"lifetime_years"`
	// Utilization is the share of its lifetime a device serves. Default 0.7.
	Utilization float64 `json:"utilization"`
	// EnergyUSDPerKWh is the electricity price. Default 0.083 (the paper's).
	EnergyUSDPerKWh float64 `json:"energy_usd_per_kwh"`
	// ServerUSDPerHour is the rental price of the server that verifies (SLED) or
	// generates (centralized), energy included. Default 0.10: a 2-vCPU
	// compute-optimized cloud instance (on-demand list prices of c7a.large-class
	// instances are 0.08-0.11 USD/h). For GPU servers see GPUHourUSD.
	ServerUSDPerHour float64 `json:"server_usd_per_hour"`
}

// Server prices used by the experiments, in USD per hour (on-demand cloud list
// prices, rounded; they change often, so treat them as assumptions).
const (
	CPU2HourUSD = 0.10 // 2 vCPUs, compute-optimized (this machine's class)
	A100HourUSD = 1.80 // one A100 80 GB
	H100HourUSD = 3.00 // one H100 80 GB
)

// WithDefaults fills zero fields.
func (c CostModel) WithDefaults() CostModel {
	if c.LifetimeYears <= 0 {
		c.LifetimeYears = 3
	}
	if c.Utilization <= 0 {
		c.Utilization = 0.7
	}
	if c.EnergyUSDPerKWh <= 0 {
		c.EnergyUSDPerKWh = 0.083
	}
	if c.ServerUSDPerHour <= 0 {
		c.ServerUSDPerHour = CPU2HourUSD
	}
	return c
}

const hoursPerYear = 365 * 24

// DeviceUSDPerHour is what one device of profile p costs per hour of service:
// its price spread over the hours it serves in its lifetime, plus its energy.
func (c CostModel) DeviceUSDPerHour(p Profile) float64 {
	c = c.WithDefaults()
	capex := p.PriceUSD / (c.LifetimeYears * hoursPerYear * c.Utilization)
	opex := p.PowerW / 1000 * c.EnergyUSDPerKWh
	return capex + opex
}

// USDPer1K is the price of 1000 tokens for a system of devices devices of
// profile p (0 for the centralized baseline's thin clients, whose cost the
// paper leaves out) and the server, generating tokensPerSec in all.
func (c CostModel) USDPer1K(p Profile, devices int, tokensPerSec float64) float64 {
	if tokensPerSec <= 0 {
		return 0
	}
	c = c.WithDefaults()
	perHour := float64(devices)*c.DeviceUSDPerHour(p) + c.ServerUSDPerHour
	return perHour / (tokensPerSec * 3600) * 1000
}

// Point is one system configuration on the cost/throughput plane.
type Point struct {
	Label        string  `json:"label"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	USDPer1K     float64 `json:"usd_per_1k"`
	Pareto       bool    `json:"pareto"`
}

// MarkPareto sets Pareto on every point no other point beats: none has at least
// its throughput at no more cost, better in one of the two.
func MarkPareto(ps []Point) {
	for i := range ps {
		ps[i].Pareto = true
		for j := range ps {
			a, b := ps[j], ps[i]
			if a.TokensPerSec >= b.TokensPerSec && a.USDPer1K <= b.USDPer1K &&
				(a.TokensPerSec > b.TokensPerSec || a.USDPer1K < b.USDPer1K) {
				ps[i].Pareto = false
				break
			}
		}
	}
}
