package engine

import (
	"log/slog"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// llama.cpp logs through slog's default level; keep test output to warnings.
	slog.SetLogLoggerLevel(slog.LevelWarn)
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}
