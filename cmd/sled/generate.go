package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sled-project/sled/httpapi"
)

var generateFlags struct {
	url         string
	maxTokens   int
	temperature float64
	seed        int64
	device      string
	model       string
	chat        bool
	system      string
	stop        []string
}

var generateCmd = &cobra.Command{
	Use:   "generate [PROMPT]",
	Short: "Generate text from a SLED device's HTTP API, streaming it to stdout",
	Long: "Generate sends PROMPT (or standard input when no PROMPT is given) to the\n" +
		"OpenAI-compatible API of a SLED device, prints the text to standard output as it\n" +
		"arrives, and prints SLED's figures (rounds, acceptance rate, unverified tokens)\n" +
		"to standard error at the end. Decoding is greedy (lossless) unless --temperature\n" +
		"is set.",
	Args: cobra.MaximumNArgs(1),
	RunE: runGenerate,
}

func init() {
	f := generateCmd.Flags()
	f.StringVar(&generateFlags.url, "url", "http://127.0.0.1:8080", "base URL of the device's HTTP API")
	f.IntVar(&generateFlags.maxTokens, "max-tokens", 0, "most tokens to generate (0: the server's default)")
	f.Float64Var(&generateFlags.temperature, "temperature", 0, "sampling temperature in [0, 2]; 0 is greedy decoding")
	f.Int64Var(&generateFlags.seed, "seed", 0, "sampling seed, for reproducible sampling (default: random)")
	f.StringVar(&generateFlags.device, "device", "", "pin the request to the named device")
	f.StringVar(&generateFlags.model, "model", "", "model id to ask for (default: whatever the server serves)")
	f.BoolVar(&generateFlags.chat, "chat", false, "send PROMPT as a user chat message (the model's chat template applies)")
	f.StringVar(&generateFlags.system, "system", "", "system message to send before PROMPT (with --chat)")
	f.StringArrayVar(&generateFlags.stop, "stop", nil, "stop string (repeatable, up to 4): the text ends before it")
	rootCmd.AddCommand(generateCmd)
}

func runGenerate(cmd *cobra.Command, args []string) error {
	fl := &generateFlags
	prompt, err := generatePrompt(cmd, args)
	if err != nil {
		return err
	}
	if fl.system != "" && !fl.chat {
		return errors.New("--system needs --chat")
	}
	client := &httpapi.Client{BaseURL: fl.url, Device: fl.device}
	var maxTokens *int
	if fl.maxTokens != 0 {
		maxTokens = &fl.maxTokens
	}
	var seed *int64
	if cmd.Flags().Changed("seed") {
		seed = &fl.seed
	}
	temperature := &fl.temperature

	stdout := cmd.OutOrStdout()
	var last string // the text's last delta, to end the output with a newline
	onText := func(s string) error {
		last = s
		_, err := io.WriteString(stdout, s)
		return err
	}
	var (
		finish string
		usage  *httpapi.Usage
		stats  *httpapi.Stats
	)
	if fl.chat {
		var msgs []httpapi.ChatMessage
		if fl.system != "" {
			msgs = append(msgs, httpapi.ChatMessage{Role: "system", Content: httpapi.MessageContent(fl.system)})
		}
		msgs = append(msgs, httpapi.ChatMessage{Role: "user", Content: httpapi.MessageContent(prompt)})
		out, err := client.Chat(cmd.Context(), httpapi.ChatCompletionRequest{
			Model: fl.model, Messages: msgs, MaxTokens: maxTokens, Temperature: temperature, Seed: seed, Stop: fl.stop,
		}, onText)
		if err != nil {
			return endLine(stdout, last, err)
		}
		finish, usage, stats = out.Choices[0].FinishReason, out.Usage, out.SLED
	} else {
		out, err := client.Complete(cmd.Context(), httpapi.CompletionRequest{
			Model: fl.model, Prompt: httpapi.TextPrompt(prompt), MaxTokens: maxTokens, Temperature: temperature, Seed: seed, Stop: fl.stop,
		}, onText)
		if err != nil {
			return endLine(stdout, last, err)
		}
		if fr := out.Choices[0].FinishReason; fr != nil {
			finish = *fr
		}
		usage, stats = out.Usage, out.SLED
	}
	endLine(stdout, last, nil)
	printGenerateStats(cmd.ErrOrStderr(), finish, usage, stats)
	return nil
}

// generatePrompt is the PROMPT argument, else standard input.
func generatePrompt(cmd *cobra.Command, args []string) (string, error) {
	if len(args) == 1 {
		return args[0], nil
	}
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return "", errors.New("no PROMPT given and standard input is a terminal")
		}
	}
	b, err := io.ReadAll(in)
	if err != nil {
		return "", fmt.Errorf("reading the prompt from standard input: %w", err)
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// endLine ends the streamed text with a newline unless it has one, and returns err.
func endLine(w io.Writer, last string, err error) error {
	if last != "" && !strings.HasSuffix(last, "\n") {
		fmt.Fprintln(w)
	}
	return err
}

func printGenerateStats(w io.Writer, finish string, u *httpapi.Usage, st *httpapi.Stats) {
	var b strings.Builder
	fmt.Fprintf(&b, "finish=%s", finish)
	if u != nil {
		fmt.Fprintf(&b, " prompt_tokens=%d completion_tokens=%d", u.PromptTokens, u.CompletionTokens)
	}
	if st != nil {
		fmt.Fprintf(&b, " device=%s rounds=%d", st.Device, st.Rounds)
		if st.Drafted > 0 {
			fmt.Fprintf(&b, " acceptance=%.1f%% (%d/%d)", 100*st.AcceptanceRate, st.Accepted, st.Drafted)
		} else {
			b.WriteString(" acceptance=n/a")
		}
		fmt.Fprintf(&b, " unverified=%d", st.UnverifiedTokens)
		if st.Retries > 0 || st.Resyncs > 0 {
			fmt.Fprintf(&b, " retries=%d resyncs=%d", st.Retries, st.Resyncs)
		}
		if len(st.UnverifiedSpans) > 0 {
			fmt.Fprintf(&b, " unverified_spans=%v", st.UnverifiedSpans)
		}
	}
	fmt.Fprintf(w, "[sled] %s\n", b.String())
}
