package bench

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sled-project/sled/httpapi"
)

// LoadConfig configures RunLoad: closed-loop clients against any OpenAI-compatible
// server (sled up in any mode, llama-server, vLLM), so that SLED and its peers are
// measured by the same client. Zero fields take the documented defaults.
type LoadConfig struct {
	// URL is the server's base URL, e.g. "http://127.0.0.1:8080". Required.
	URL string
	// Clients are the concurrency levels, measured in order. Default 1, 4, 16.
	Clients []int
	// Prompts are sent round-robin (client i's k-th request gets prompt i+k).
	// Default DefaultLosslessPrompts.
	Prompts []Prompt
	// Chat sends each prompt as a user's turn to /v1/chat/completions instead of
	// /v1/completions.
	Chat bool
	// MaxTokens per request. Default 64.
	MaxTokens int
	// Duration is how long each level keeps issuing requests; requests in flight
	// at its end complete and count. Default 30s.
	Duration time.Duration
	// Model is sent as the request's model field (llama-server ignores it). Default
	// none.
	Model string
	// Timeout bounds one request. Default 5 minutes.
	Timeout time.Duration
}

// LoadPoint is one concurrency level's result.
type LoadPoint struct {
	Clients  int     `json:"clients"`
	Requests int     `json:"requests"`
	Tokens   int     `json:"tokens"` // completion tokens, as the server's usage reports them
	Seconds  float64 `json:"seconds"`
	// TokensPerSec is Tokens / Seconds: the server's whole output rate.
	TokensPerSec float64 `json:"tokens_per_sec"`
	// PerClient is the mean of each client's own tokens/s.
	PerClient float64 `json:"per_client_tokens_per_sec"`
	// SteadyTokensPerSec is the output rate while every client was busy: the
	// tokens of each request counted in proportion to how much of its time lay
	// inside the issuing window (from the level's start until clients stop
	// sending), divided by the window. Unlike TokensPerSec it leaves out the
	// drain after the window, when fewer clients remain, and does not jump with
	// whether a round of long requests ended just inside or just after it.
	SteadyTokensPerSec float64 `json:"steady_tokens_per_sec"`
	// Latency of whole requests, seconds.
	LatencyP50 float64 `json:"latency_p50_s"`
	LatencyP90 float64 `json:"latency_p90_s"`
}

// loadSpan is one measured request: when it was sent and answered, and the
// completion tokens it brought.
type loadSpan struct {
	start, end time.Time
	tokens     int
}

// windowTokens is how many of spans' tokens fall in [from, to), each span's
// tokens spread evenly over its duration (as a continuously batched server
// produces them, one a step).
func windowTokens(spans []loadSpan, from, to time.Time) float64 {
	var n float64
	for _, s := range spans {
		d := s.end.Sub(s.start)
		if d <= 0 {
			if !s.end.Before(from) && s.end.Before(to) {
				n += float64(s.tokens)
			}
			continue
		}
		lo, hi := s.start, s.end
		if lo.Before(from) {
			lo = from
		}
		if hi.After(to) {
			hi = to
		}
		if hi.After(lo) {
			n += float64(s.tokens) * float64(hi.Sub(lo)) / float64(d)
		}
	}
	return n
}

// RunLoad measures each concurrency level in turn. Before each level every client
// sends one request that is not counted (warm-up: the server's caches and
// threads). A failed request fails the run: a benchmark of a server that errors
// measures nothing.
func RunLoad(ctx context.Context, cfg LoadConfig) ([]LoadPoint, error) {
	if cfg.URL == "" {
		return nil, errors.New("bench: load needs a URL")
	}
	if len(cfg.Clients) == 0 {
		cfg.Clients = []int{1, 4, 16}
	}
	if len(cfg.Prompts) == 0 {
		cfg.Prompts = DefaultLosslessPrompts()
	}
	if cfg.MaxTokens <= 0 {
		cfg.MaxTokens = 64
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	client := &httpapi.Client{BaseURL: cfg.URL}
	var out []LoadPoint
	for _, n := range cfg.Clients {
		if n <= 0 {
			return nil, fmt.Errorf("bench: %d clients", n)
		}
		p, err := loadLevel(ctx, client, cfg, n)
		if err != nil {
			return out, err
		}
		out = append(out, p)
	}
	return out, nil
}

func loadLevel(ctx context.Context, c *httpapi.Client, cfg LoadConfig, n int) (LoadPoint, error) {
	type clientResult struct {
		tokens  int
		el      time.Duration
		spans   []loadSpan
		err     error
		request int
	}
	// Warm-up: one request per client, all at once.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = loadRequest(ctx, c, cfg, cfg.Prompts[i%len(cfg.Prompts)])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return LoadPoint{}, fmt.Errorf("bench: warm-up: %w", err)
	}
	res := make([]clientResult, n)
	start := time.Now()
	end := start.Add(cfg.Duration)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &res[i]
			for k := 0; time.Now().Before(end); k++ {
				t0 := time.Now()
				toks, err := loadRequest(ctx, c, cfg, cfg.Prompts[(i+k)%len(cfg.Prompts)])
				if err != nil {
					r.err = err
					return
				}
				r.spans = append(r.spans, loadSpan{start: t0, end: time.Now(), tokens: toks})
				r.tokens += toks
				r.request++
			}
			r.el = time.Since(start)
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	p := LoadPoint{Clients: n, Seconds: wall.Seconds()}
	var spans []loadSpan
	for _, r := range res {
		if r.err != nil {
			return LoadPoint{}, r.err
		}
		p.Tokens += r.tokens
		p.Requests += r.request
		p.PerClient += float64(r.tokens) / r.el.Seconds() / float64(n)
		spans = append(spans, r.spans...)
	}
	p.TokensPerSec = float64(p.Tokens) / wall.Seconds()
	p.SteadyTokensPerSec = windowTokens(spans, start, end) / end.Sub(start).Seconds()
	lats := make([]float64, len(spans))
	for i, sp := range spans {
		lats[i] = sp.end.Sub(sp.start).Seconds()
	}
	sort.Float64s(lats)
	if len(lats) > 0 {
		p.LatencyP50 = lats[len(lats)/2]
		p.LatencyP90 = lats[min(len(lats)-1, len(lats)*9/10)]
	}
	return p, nil
}

// loadRequest sends one greedy request and returns the completion tokens the
// server reports.
func loadRequest(ctx context.Context, c *httpapi.Client, cfg LoadConfig, p Prompt) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	n := cfg.MaxTokens
	zero := 0.0
	var usage *httpapi.Usage
	if cfg.Chat {
		r, err := c.Chat(ctx, httpapi.ChatCompletionRequest{
			Model: cfg.Model, Messages: []httpapi.ChatMessage{{Role: "user", Content: httpapi.MessageContent(p.Text)}},
			MaxTokens: &n, Temperature: &zero,
		}, nil)
		if err != nil {
			return 0, err
		}
		usage = r.Usage
	} else {
		r, err := c.Complete(ctx, httpapi.CompletionRequest{Model: cfg.Model, Prompt: httpapi.TextPrompt(p.Text), MaxTokens: &n, Temperature: &zero}, nil)
		if err != nil {
			return 0, err
		}
		usage = r.Usage
	}
	if usage == nil {
		return 0, errors.New("bench: the server's response has no usage")
	}
	return usage.CompletionTokens, nil
}

// LoadTable renders load points as a table.
func LoadTable(title string, ps []LoadPoint) Table {
	t := Table{Title: title, Header: []string{"clients", "requests", "tokens", "tokens/s", "steady tokens/s", "per client tok/s", "latency p50 s", "p90 s"}}
	for _, p := range ps {
		t.Rows = append(t.Rows, []string{itoa(p.Clients), itoa(p.Requests), itoa(p.Tokens), f1(p.TokensPerSec), f1(p.SteadyTokensPerSec), f2(p.PerClient), f2(p.LatencyP50), f2(p.LatencyP90)})
	}
	return t
}
