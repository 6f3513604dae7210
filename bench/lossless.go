package bench

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sled-project/sled/engine"
	"github.com/sled-project/sled/goodput"
	"github.com/sled-project/sled/gumbel"
	"github.com/sled-project/sled/services"
	"github.com/sled-project/sled/textgen"
	"github.com/sled-project/sled/verifier"
)

// NearTieGap is the largest top-1 minus top-2 logit gap of the reference at which
// a difference between SLED's output and the reference is put down to llama.cpp's
// batches not being bit-identical (a batched pass and token-by-token decoding
// round differently) rather than to a bug. Measured on the Qwen pair: the batched
// pass flips 10 of 576 positions, all with gaps of 0.005-0.29.
const NearTieGap = 0.5

// Prompt is one prompt of a lossless or benchmark run. Kind labels it ("code",
// "prose", ...) so that results can be reported apart; it may be empty.
type Prompt struct {
	Text string `json:"prompt"`
	Kind string `json:"kind,omitempty"`
}

//go:embed prompts/lossless.jsonl
var defaultLosslessPrompts []byte

// DefaultLosslessPrompts are the prompts `sled bench lossless` uses by default:
// four code and four prose requests, written as a user's turn in a chat.
func DefaultLosslessPrompts() []Prompt {
	ps, err := ParsePrompts(bytes.NewReader(defaultLosslessPrompts))
	if err != nil {
		panic(err) // the embedded file is tested
	}
	return ps
}

// ParsePrompts reads one prompt per line: a JSON string (which may hold newlines),
// or a JSON object {"prompt": "...", "kind": "..."}. Blank lines are skipped; any
// other line is an error naming its number.
func ParsePrompts(r io.Reader) ([]Prompt, error) {
	var out []Prompt
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var p Prompt
		var err error
		if line[0] == '"' {
			err = json.Unmarshal(line, &p.Text)
		} else {
			dec := json.NewDecoder(bytes.NewReader(line))
			dec.DisallowUnknownFields()
			err = dec.Decode(&p)
		}
		if err != nil {
			return nil, fmt.Errorf("bench: prompts line %d: want a JSON string or {\"prompt\": ..., \"kind\": ...}: %w", n, err)
		}
		if p.Text == "" {
			return nil, fmt.Errorf("bench: prompts line %d: empty prompt", n)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bench: prompts: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("bench: no prompts")
	}
	return out, nil
}

// ReadPrompts is ParsePrompts on a file.
func ReadPrompts(path string) ([]Prompt, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	return ParsePrompts(f)
}

// Reference is a model's own decoding of one prompt (greedy, or coupled
// sampling with a seed), one sequence, one token per forward pass: the output a
// lossless system must reproduce. Like every
// generator's output it ends with the end-of-generation token when the model
// produced one.
type Reference struct {
	Tokens []engine.Token
	// Alts are, at each position, the runner-up tokens (up to RefAlternatives,
	// best first) with their logit gap to the chosen token.
	Alts [][]Alt
	// Elapsed is the time the decoding took (prompt evaluation included).
	Elapsed time.Duration
}

// Alt is a runner-up token and how far its logit is below the best one.
type Alt struct {
	Token engine.Token `json:"token"`
	Gap   float32      `json:"gap"`
}

// RefAlternatives is how many runner-ups a Reference keeps per position.
const RefAlternatives = 4

// GreedyReference decodes up to n tokens of prompt with m alone, greedily, one
// token per pass, stopping after an end-of-generation token.
func GreedyReference(ctx context.Context, m *engine.Model, prompt []engine.Token, n, threads int) (*Reference, error) {
	return decodeReference(ctx, m, prompt, n, threads, func(row []float32, _ int) (engine.Token, []Alt) {
		top := engine.TopK(row, RefAlternatives+1, 1)
		best := top[0].Token
		alts := make([]Alt, 0, len(top)-1)
		for _, tp := range top[1:] {
			alts = append(alts, Alt{Token: tp.Token, Gap: row[best] - row[tp.Token]})
		}
		return best, alts
	})
}

// CoupledReference decodes up to n tokens of prompt with m alone by coupled
// sampling (engine.Coupled at temp and topP with seed), one token per pass:
// the output SLED must reproduce for that seed. The gaps of its Alts are in
// logit units, like a greedy reference's: temp times the winner's perturbed
// score less the alternative's, the change in the logits that would flip the
// choice; so NearTieGap means the same for both.
func CoupledReference(ctx context.Context, m *engine.Model, prompt []engine.Token, n, threads int, temp, topP float32, seed uint64) (*Reference, error) {
	return decodeReference(ctx, m, prompt, n, threads, func(row []float32, pos int) (engine.Token, []Alt) {
		keep := engine.Distribution(nil, row, temp, topP)
		type scored struct {
			t engine.Token
			s float64
		}
		var top []scored // the best RefAlternatives+1 perturbed scores, best first
		for t, v := range row {
			if keep[t] == 0 {
				continue
			}
			s := float64(v)/float64(temp) + gumbel.Noise(seed, pos, engine.Token(t))
			j := len(top)
			for j > 0 && s > top[j-1].s {
				j--
			}
			if j <= RefAlternatives {
				top = slices.Insert(top, j, scored{engine.Token(t), s})
				top = top[:min(len(top), RefAlternatives+1)]
			}
		}
		alts := make([]Alt, 0, len(top)-1)
		for _, a := range top[1:] {
			alts = append(alts, Alt{Token: a.t, Gap: float32(float64(temp) * (top[0].s - a.s))})
		}
		return top[0].t, alts
	})
}

// decodeReference decodes with m alone, one token per pass, choose picking
// each token from the logits row at its absolute position.
func decodeReference(ctx context.Context, m *engine.Model, prompt []engine.Token, n, threads int, choose func(row []float32, pos int) (engine.Token, []Alt)) (*Reference, error) {
	if len(prompt) == 0 {
		return nil, errors.New("bench: empty prompt")
	}
	start := time.Now()
	c, err := m.NewContext(engine.ContextOptions{Slots: 1, SlotContext: len(prompt) + n + 1, BatchSize: max(len(prompt), 1), Threads: threads})
	if err != nil {
		return nil, fmt.Errorf("bench: reference context: %w", err)
	}
	defer c.Close()
	entries := make([]engine.Entry, len(prompt))
	for i, t := range prompt {
		entries[i] = engine.Entry{Pos: i, Token: t, Logits: i == len(prompt)-1}
	}
	rows, err := c.Decode(ctx, entries)
	if err != nil {
		return nil, fmt.Errorf("bench: reference prefill: %w", err)
	}
	ref := &Reference{}
	row := rows[0]
	for range n {
		best, alts := choose(row, len(prompt)+len(ref.Tokens))
		ref.Tokens = append(ref.Tokens, best)
		ref.Alts = append(ref.Alts, alts)
		if m.IsEOG(best) || len(ref.Tokens) == n {
			break
		}
		rows, err := c.Decode(ctx, []engine.Entry{{Pos: c.Len(0), Token: best, Logits: true}})
		if err != nil {
			return nil, fmt.Errorf("bench: reference decode: %w", err)
		}
		row = rows[0]
	}
	ref.Elapsed = time.Since(start)
	return ref, nil
}

// Diff is where an output first departs from a Reference. FirstDiff is -1 when
// the two are identical; an output that is a prefix of the other differs where it
// ends (its token there is -1). At FirstDiff: the reference's token, its top-2
// logit gap there, the output's token, and GotGap, how far the output's token's
// logit is below the reference's choice (-1 when it is not among the
// reference's runner-ups).
type Diff struct {
	FirstDiff int          `json:"first_diff"`
	RefToken  engine.Token `json:"ref_token,omitempty"`
	GotToken  engine.Token `json:"got_token,omitempty"`
	Gap       float32      `json:"ref_top2_gap,omitempty"`
	GotGap    float32      `json:"got_gap,omitempty"`
}

// Identical reports whether the outputs agree everywhere.
func (d Diff) Identical() bool { return d.FirstDiff < 0 }

// NearTie reports whether the first difference is a near-tie of the reference:
// the output took a token whose logit, in the reference, is within NearTieGap of
// the reference's choice.
func (d Diff) NearTie() bool {
	return d.FirstDiff >= 0 && d.GotGap >= 0 && d.GotGap <= NearTieGap
}

// DiffAt builds the Diff for a first difference at position i where the output
// has token got (-1: the output ended).
func (ref *Reference) DiffAt(i int, got engine.Token) Diff {
	d := Diff{FirstDiff: i, RefToken: -1, GotToken: got, GotGap: -1}
	if i >= len(ref.Tokens) {
		return d
	}
	d.RefToken = ref.Tokens[i]
	if alts := ref.Alts[i]; len(alts) > 0 {
		d.Gap = alts[0].Gap
		for _, a := range alts {
			if a.Token == got {
				d.GotGap = a.Gap
			}
		}
	}
	return d
}

// Compare locates the first difference between got and ref.
func Compare(ref *Reference, got []engine.Token) Diff {
	n := min(len(ref.Tokens), len(got))
	i := 0
	for i < n && ref.Tokens[i] == got[i] {
		i++
	}
	if i == len(ref.Tokens) && i == len(got) {
		return Diff{FirstDiff: -1}
	}
	tok := engine.Token(-1)
	if i < len(got) {
		tok = got[i]
	}
	return ref.DiffAt(i, tok)
}

// LosslessConfig configures RunLossless. Zero fields take the documented
// defaults.
type LosslessConfig struct {
	// Target and Drafts are the models (names as services.FindModel takes them).
	// Default: the qwen pair's.
	Target string
	Drafts []string
	// Chat formats each prompt as a user's turn with the target's chat template.
	Chat bool
	// CrossVocab lets drafts with another tokenizer draft across
	// vocabularies (services.UpConfig.CrossVocab).
	CrossVocab bool
	// Budget is the verifier's goodput policy (default: draft budgets;
	// Budget.Static: devices draft by their own policy, which is what an
	// acceptance measurement wants).
	Budget goodput.Policy
	// EveryDevice serves each prompt on every device (one device per draft),
	// so that drafts are compared on the same prompts; default: prompts are
	// spread over the devices round-robin.
	EveryDevice bool
	// Prompts default to DefaultLosslessPrompts.
	Prompts []Prompt
	// MaxTokens per prompt. Default 64.
	MaxTokens int
	// Threads is the reference's and the verifier's llama.cpp thread count.
	// Default engine.DefaultThreads().
	Threads int
	// Find resolves model names (its Progress shows fetches).
	Find services.FindOptions
	// Progress, when set, receives a line per prompt.
	Progress io.Writer
	Logger   *slog.Logger
}

// LosslessRow is one prompt's result.
type LosslessRow struct {
	Prompt    int    `json:"prompt"`
	Kind      string `json:"kind,omitempty"`
	Text      string `json:"text"`
	Device    string `json:"device"`
	Tokens    int    `json:"tokens"`
	RefTokens int    `json:"ref_tokens"`
	Identical bool   `json:"identical"`
	NearTie   bool   `json:"near_tie,omitempty"`
	Diff
	Rounds           int     `json:"rounds"`
	Drafted          int     `json:"drafted"`
	Accepted         int     `json:"accepted"`
	AcceptedPerRound float64 `json:"accepted_per_round"`
	TokensPerRound   float64 `json:"tokens_per_round"`
	SLEDSeconds      float64 `json:"sled_seconds"`
	RefSeconds       float64 `json:"ref_seconds"`
}

// LosslessResult is the outcome of RunLossless.
type LosslessResult struct {
	Rows      []LosslessRow `json:"rows"`
	Identical int           `json:"identical"`
	NearTies  int           `json:"near_ties"`
	// Unexplained counts differences that are not near-ties: bugs.
	Unexplained int `json:"unexplained"`
	// AcceptedPerRound by prompt kind, and by device and kind ("device/kind").
	AcceptedPerRound       map[string]float64 `json:"accepted_per_round_by_kind"`
	AcceptedPerRoundDevice map[string]float64 `json:"accepted_per_round_by_device,omitempty"`
	// TokensPerSecond by device: SLED's, one request at a time; RefTokensPerSecond
	// the target alone's over the same prompts.
	TokensPerSecond    map[string]float64 `json:"tokens_per_second_by_device,omitempty"`
	RefTokensPerSecond float64            `json:"ref_tokens_per_second,omitempty"`
	NearTieGap         float32            `json:"near_tie_gap"`
}

// RunLossless serves each prompt with SLED (sled up in this process: embedded
// NATS, batcher, verifier, one device per draft, prompts spread over the devices
// round-robin, one request at a time) and with the target alone (GreedyReference),
// greedy, and reports per prompt whether the outputs are identical and, where
// not, the reference's top-2 gap at the first difference.
func RunLossless(ctx context.Context, cfg LosslessConfig) (*Report, error) {
	if cfg.MaxTokens <= 0 {
		cfg.MaxTokens = 64
	}
	if len(cfg.Prompts) == 0 {
		cfg.Prompts = DefaultLosslessPrompts()
	}
	if cfg.Threads <= 0 {
		cfg.Threads = engine.DefaultThreads()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Target == "" || len(cfg.Drafts) == 0 {
		return nil, errors.New("bench: lossless needs a target and at least one draft")
	}
	target, err := services.FindModel(ctx, cfg.Target, cfg.Find)
	if err != nil {
		return nil, err
	}
	var drafts []string
	for _, d := range cfg.Drafts {
		p, err := services.FindModel(ctx, d, cfg.Find)
		if err != nil {
			return nil, err
		}
		drafts = append(drafts, p)
	}
	sys, err := services.Start(ctx, services.UpConfig{
		Target: target, Drafts: drafts, Devices: len(drafts), Logger: cfg.Logger, CrossVocab: cfg.CrossVocab, Budget: cfg.Budget,
		Verifier: verifier.Config{Threads: cfg.Threads},
	})
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	tm := sys.Target()
	res := &LosslessResult{AcceptedPerRound: map[string]float64{}, AcceptedPerRoundDevice: map[string]float64{},
		TokensPerSecond: map[string]float64{}, NearTieGap: NearTieGap}
	kindRounds, kindAccepted := map[string]int{}, map[string]int{}
	devRounds, devAccepted := map[string]int{}, map[string]int{}
	devTokens, devSecs := map[string]int{}, map[string]float64{}
	var refTokens int
	var refSecs float64
	type job struct {
		i   int
		p   Prompt
		dev int
	}
	var jobs []job
	for i, p := range cfg.Prompts {
		if !cfg.EveryDevice {
			jobs = append(jobs, job{i, p, i % len(sys.Generators())})
			continue
		}
		for d := range sys.Generators() {
			jobs = append(jobs, job{i, p, d})
		}
	}
	refs := map[int]*Reference{}
	for _, j := range jobs {
		i, p := j.i, j.p
		toks, err := promptTokens(tm, p.Text, cfg.Chat)
		if err != nil {
			return nil, fmt.Errorf("bench: prompt %d: %w", i+1, err)
		}
		dev := sys.Generators()[j.dev]
		start := time.Now()
		out, err := dev.Generator.Generate(ctx, textgen.Request{Prompt: toks, MaxTokens: cfg.MaxTokens}, func(textgen.Chunk) error { return nil })
		if err != nil {
			return nil, fmt.Errorf("bench: prompt %d on %s: %w", i+1, dev.Name, err)
		}
		sledTime := time.Since(start)
		ref := refs[i]
		if ref == nil {
			if ref, err = GreedyReference(ctx, tm, toks, cfg.MaxTokens, cfg.Threads); err != nil {
				return nil, err
			}
			refs[i] = ref
			refTokens += len(ref.Tokens)
			refSecs += ref.Elapsed.Seconds()
		}
		d := Compare(ref, out.Tokens)
		st := out.Stats
		row := LosslessRow{
			Prompt: i + 1, Kind: p.Kind, Text: clip(p.Text, 60), Device: dev.Name,
			Tokens: len(out.Tokens), RefTokens: len(ref.Tokens), Identical: d.Identical(), NearTie: d.NearTie(), Diff: d,
			Rounds: st.Rounds, Drafted: st.Drafted, Accepted: st.Accepted,
			AcceptedPerRound: float64(st.Accepted) / float64(max(st.Rounds, 1)),
			TokensPerRound:   float64(len(out.Tokens)) / float64(max(st.Rounds, 1)),
			SLEDSeconds:      sledTime.Seconds(), RefSeconds: ref.Elapsed.Seconds(),
		}
		switch {
		case row.Identical:
			res.Identical++
		case row.NearTie:
			res.NearTies++
		default:
			res.Unexplained++
		}
		kindRounds[p.Kind] += st.Rounds
		kindAccepted[p.Kind] += st.Accepted
		dk := dev.Name + "/" + p.Kind
		devRounds[dk] += st.Rounds
		devAccepted[dk] += st.Accepted
		devTokens[dev.Name] += len(out.Tokens)
		devSecs[dev.Name] += sledTime.Seconds()
		res.Rows = append(res.Rows, row)
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "prompt %d/%d (%s) on %s: %s\n", i+1, len(cfg.Prompts), p.Kind, dev.Name, rowVerdict(row))
		}
	}
	for k, r := range kindRounds {
		res.AcceptedPerRound[k] = float64(kindAccepted[k]) / float64(max(r, 1))
	}
	for k, r := range devRounds {
		res.AcceptedPerRoundDevice[k] = float64(devAccepted[k]) / float64(max(r, 1))
	}
	for d, n := range devTokens {
		res.TokensPerSecond[d] = float64(n) / devSecs[d]
	}
	res.RefTokensPerSecond = float64(refTokens) / refSecs
	rep := &Report{
		Experiment: "lossless", Time: time.Now(), Machine: machine(),
		Target: filepath.Base(target), Pair: strings.Join(baseNames(drafts), ", "),
		Measured: []string{
			"SLED: sled up in one process (embedded NATS, batcher, verifier, one simulated device per draft running its draft model), one request at a time, greedy",
			"reference: the target alone, one sequence, one token per forward pass, greedy",
			fmt.Sprintf("a difference is a near-tie when the token SLED took has a logit, in the reference, within %.2g of the reference's choice (SLED token's gap)", NearTieGap),
		},
		Result: res,
	}
	t := Table{Title: fmt.Sprintf("Lossless: SLED vs the target alone, %d tokens per prompt", cfg.MaxTokens),
		Header: []string{"prompt", "kind", "device", "tokens", "verdict", "first diff", "ref top-2 gap", "SLED token's gap", "accepted/round", "SLED s", "ref s"}}
	for _, r := range res.Rows {
		diff, gap, gotGap := "-", "-", "-"
		if !r.Identical {
			diff, gap = itoa(r.FirstDiff), fmt.Sprintf("%.3f", r.Gap)
			if r.GotGap >= 0 {
				gotGap = fmt.Sprintf("%.3f", r.GotGap)
			}
		}
		t.Rows = append(t.Rows, []string{itoa(r.Prompt), r.Kind, r.Device, itoa(r.Tokens), verdictWord(r), diff, gap, gotGap,
			f2(r.AcceptedPerRound), f1(r.SLEDSeconds), f1(r.RefSeconds)})
	}
	rep.Tables = append(rep.Tables, t)
	rep.Tables = append(rep.Tables, Table{Title: "Summary", Header: []string{"prompts", "identical", "near-ties", "unexplained"},
		Rows: [][]string{{itoa(len(res.Rows)), itoa(res.Identical), itoa(res.NearTies), itoa(res.Unexplained)}}})
	bd := Table{Title: "By device", Header: []string{"device", "kind", "accepted/round", "tokens/s (one request at a time)", "target alone tokens/s"}}
	for _, g := range sys.Generators() {
		for _, kind := range []string{"code", "prose", ""} {
			v, ok := res.AcceptedPerRoundDevice[g.Name+"/"+kind]
			if !ok {
				continue
			}
			bd.Rows = append(bd.Rows, []string{g.Name, kind, f2(v), f1(res.TokensPerSecond[g.Name]), f1(res.RefTokensPerSecond)})
		}
	}
	rep.Tables = append(rep.Tables, bd)
	return rep, nil
}

// promptTokens tokenizes a prompt, as a chat user turn when chat is set.
func promptTokens(m *engine.Model, text string, chat bool) ([]engine.Token, error) {
	if chat {
		s, _ := m.FormatChat([]engine.ChatMessage{{Role: "user", Content: text}}, true)
		return m.TokenizeSpecial(s, true)
	}
	return m.Tokenize(text, true)
}

func verdictWord(r LosslessRow) string {
	switch {
	case r.Identical:
		return "identical"
	case r.NearTie:
		return "near-tie"
	default:
		return "DIFFERS"
	}
}

func rowVerdict(r LosslessRow) string {
	if r.Identical {
		return fmt.Sprintf("identical, %d tokens, %.2f accepted/round", r.Tokens, r.AcceptedPerRound)
	}
	return fmt.Sprintf("%s at token %d (ref top-2 gap %.3f, SLED token's gap %.3f), %.2f accepted/round", verdictWord(r), r.FirstDiff, r.Gap, r.GotGap, r.AcceptedPerRound)
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}
