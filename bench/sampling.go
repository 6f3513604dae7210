package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
	"github.com/sled-project/sled/verifier"
)

// SamplingConfig configures RunSampling. Zero fields take the documented
// defaults.
type SamplingConfig struct {
	// Target and Draft are the models (names as services.FindModel takes
	// them); one device drafts with Draft.
	Target, Draft string
	// Chat formats each prompt as a user's turn with the target's chat template.
	Chat bool
	// Prompts default to DefaultLosslessPrompts (4 code, 4 prose).
	Prompts []Prompt
	// Temperatures default to 0.7 and 1.0.
	Temperatures []float32
	// Modes default to textgen.SamplingPoint, SamplingTopK, SamplingCoupled.
	Modes []string
	// DraftTopK is the top-k mode's draft distribution size. Default
	// textgen.DefaultDraftTopK.
	DraftTopK int
	// MaxTokens per prompt. Default 64.
	MaxTokens int
	// Seed is the first prompt's seed; prompt i uses Seed+i. Default 1.
	Seed uint64
	// Threads is the verifier's and the reference's llama.cpp thread count.
	// Default engine.DefaultThreads().
	Threads  int
	Find     services.FindOptions
	Progress io.Writer
	Logger   *slog.Logger
}

// SamplingRow is one mode at one temperature over the prompts of one kind.
type SamplingRow struct {
	Temperature      float32 `json:"temperature"`
	Mode             string  `json:"mode"`
	Kind             string  `json:"kind"`
	Prompts          int     `json:"prompts"`
	Tokens           int     `json:"tokens"`
	Rounds           int     `json:"rounds"`
	Drafted          int     `json:"drafted"`
	Accepted         int     `json:"accepted"`
	AcceptanceRate   float64 `json:"acceptance_rate"`
	AcceptedPerRound float64 `json:"accepted_per_round"`
	TokensPerSecond  float64 `json:"tokens_per_second"`
	// RefTokensPerSecond is the target alone's rate on the same prompts
	// (coupled sampling, one token per pass), measured in the same run.
	RefTokensPerSecond float64 `json:"ref_tokens_per_second"`
	// Identical counts the coupled texts equal to the target alone's sample
	// for the seed; NearTies those that part from it at a near-tie (coupled
	// mode only).
	Identical int `json:"identical,omitempty"`
	NearTies  int `json:"near_ties,omitempty"`
	// Unexplained counts coupled texts that part from the reference with a
	// clear margin: bugs.
	Unexplained int `json:"unexplained,omitempty"`
}

// SamplingResult is the outcome of RunSampling.
type SamplingResult struct {
	Rows []SamplingRow `json:"rows"`
}

// RunSampling measures speculative sampling on one device: for each
// temperature and prompt, it serves the prompt in every mode back to back
// (interleaved, so the machine's drift falls on every mode alike), with the
// device drafting by its own policy (static length: the acceptance is what is
// measured), and the target alone's coupled sample of the prompt for the same
// seed as the reference and the single-stream baseline.
func RunSampling(ctx context.Context, cfg SamplingConfig) (*Report, error) {
	if cfg.MaxTokens <= 0 {
		cfg.MaxTokens = 64
	}
	if len(cfg.Prompts) == 0 {
		cfg.Prompts = DefaultLosslessPrompts()
	}
	if len(cfg.Temperatures) == 0 {
		cfg.Temperatures = []float32{0.7, 1}
	}
	if len(cfg.Modes) == 0 {
		cfg.Modes = []string{textgen.SamplingPoint, textgen.SamplingTopK, textgen.SamplingCoupled}
	}
	if cfg.DraftTopK <= 0 {
		cfg.DraftTopK = textgen.DefaultDraftTopK
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.Threads <= 0 {
		cfg.Threads = engine.DefaultThreads()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Target == "" || cfg.Draft == "" {
		return nil, errors.New("bench: sampling needs a target and a draft")
	}
	target, err := services.FindModel(ctx, cfg.Target, cfg.Find)
	if err != nil {
		return nil, err
	}
	draft, err := services.FindModel(ctx, cfg.Draft, cfg.Find)
	if err != nil {
		return nil, err
	}
	sys, err := services.Start(ctx, services.UpConfig{
		Target: target, Drafts: []string{draft}, Devices: 1, Logger: cfg.Logger,
		Verifier: verifier.Config{Threads: cfg.Threads},
		Budget:   goodput.Policy{Static: true},
	})
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	tm := sys.Target()
	dev := sys.Generators()[0]
	type key struct {
		temp       float32
		mode, kind string
	}
	rows := map[key]*SamplingRow{}
	secs, refSecs := map[key]float64{}, map[key]float64{}
	refTokens := map[key]int{}
	var order []key
	for _, temp := range cfg.Temperatures {
		for i, p := range cfg.Prompts {
			toks, err := promptTokens(tm, p.Text, cfg.Chat)
			if err != nil {
				return nil, fmt.Errorf("bench: prompt %d: %w", i+1, err)
			}
			seed := cfg.Seed + uint64(i)
			ref, err := CoupledReference(ctx, tm, toks, cfg.MaxTokens, cfg.Threads, temp, 0, seed)
			if err != nil {
				return nil, err
			}
			for _, mode := range cfg.Modes {
				k := key{temp, mode, p.Kind}
				r := rows[k]
				if r == nil {
					r = &SamplingRow{Temperature: temp, Mode: mode, Kind: p.Kind}
					rows[k] = r
					order = append(order, k)
				}
				req := textgen.Request{Prompt: toks, MaxTokens: cfg.MaxTokens, Temperature: temp, Seed: seed, Sampling: mode, DraftTopK: cfg.DraftTopK}
				start := time.Now()
				out, err := dev.Generator.Generate(ctx, req, func(textgen.Chunk) error { return nil })
				if err != nil {
					return nil, fmt.Errorf("bench: prompt %d (%s, T=%.1f): %w", i+1, mode, temp, err)
				}
				secs[k] += time.Since(start).Seconds()
				refSecs[k] += ref.Elapsed.Seconds()
				refTokens[k] += len(ref.Tokens)
				st := out.Stats
				r.Prompts++
				r.Tokens += len(out.Tokens)
				r.Rounds += st.Rounds
				r.Drafted += st.Drafted
				r.Accepted += st.Accepted
				verdict := ""
				if mode == textgen.SamplingCoupled {
					switch d := Compare(ref, out.Tokens); {
					case d.Identical():
						r.Identical++
						verdict = ", identical to the target's sample"
					case d.NearTie():
						r.NearTies++
						verdict = fmt.Sprintf(", near-tie at token %d (gap %.3f)", d.FirstDiff, d.GotGap)
					default:
						r.Unexplained++
						verdict = fmt.Sprintf(", DIFFERS at token %d (reference gap %.3f, got gap %.3f)", d.FirstDiff, d.Gap, d.GotGap)
					}
				}
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "T=%.1f prompt %d/%d (%s) %s: %d tokens, %d rounds, %d/%d accepted%s\n",
						temp, i+1, len(cfg.Prompts), p.Kind, mode, len(out.Tokens), st.Rounds, st.Accepted, st.Drafted, verdict)
				}
			}
		}
	}
	res := &SamplingResult{}
	for _, k := range order {
		r := rows[k]
		r.AcceptanceRate = float64(r.Accepted) / float64(max(r.Drafted, 1))
		r.AcceptedPerRound = float64(r.Accepted) / float64(max(r.Rounds, 1))
		r.TokensPerSecond = float64(r.Tokens) / secs[k]
		r.RefTokensPerSecond = float64(refTokens[k]) / refSecs[k]
		res.Rows = append(res.Rows, *r)
	}
	rep := &Report{
		Experiment: "sampling", Time: time.Now(), Machine: machine(),
		Target: filepath.Base(target), Pair: filepath.Base(draft),
		Measured: []string{
			"SLED: sled up in one process (embedded NATS, batcher, verifier, one device drafting with its own policy: static length), one request at a time; every mode of a prompt back to back",
			"modes: point = greedy drafts declared as a point mass, rejection rule; topk = drafts sampled from the draft's top-k distribution at the temperature, sent, rejection rule; coupled = Gumbel-max with noise keyed by (seed, position) on both sides",
			"reference: the target alone, one sequence, one token per forward pass, coupled sampling with the same seed (its rate is the single-stream baseline)",
			fmt.Sprintf("a coupled text parts from the reference at a near-tie when the token SLED took scores, in the reference, within %.2g (logit units) of its choice", NearTieGap),
		},
		Result: res,
	}
	t := Table{Title: fmt.Sprintf("Speculative sampling by mode, %d tokens per prompt, draft top-k %d", cfg.MaxTokens, cfg.DraftTopK),
		Header: []string{"T", "mode", "kind", "prompts", "accepted/round", "acceptance", "tokens/s", "target alone tokens/s", "ratio", "coupled = target's sample"}}
	for _, r := range res.Rows {
		same := "-"
		if r.Mode == textgen.SamplingCoupled {
			same = fmt.Sprintf("%d identical, %d near-ties, %d unexplained", r.Identical, r.NearTies, r.Unexplained)
		}
		t.Rows = append(t.Rows, []string{fmt.Sprintf("%.1f", r.Temperature), r.Mode, r.Kind, itoa(r.Prompts), f2(r.AcceptedPerRound),
			f2(r.AcceptanceRate), f1(r.TokensPerSecond), f1(r.RefTokensPerSecond), f2(r.TokensPerSecond / r.RefTokensPerSecond), same})
	}
	rep.Tables = append(rep.Tables, t)
	return rep, nil
}
