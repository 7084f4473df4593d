# PromptLearning gRPC service (frozen GPT-2, prompt tuning / p-tuning) on Deno.
#
# No registry is reachable where this is built, so FROM names a local base made by
# scripts/build-base-image.sh (debootstrap --variant=minbase bookworm | docker import).
# Build with scripts/build-image.sh, or by hand:
#   scripts/build-base-image.sh && docker build --network host -t promptlearning:0.1.0 .
# (`--network host` because apt and npm need the network and the daemon may have no bridge.)
#
# Two stages: Debian's nodejs/npm only run `npm ci` (which also fetches the pinned Deno binary,
# npm package `deno`) and gcc only compiles the oneDNN shim; the runtime stage has no node or gcc,
# just Deno, OpenBLAS, oneDNN (libdnnl2) and the project.
ARG BASE_IMAGE=promptlearning-base:bookworm

FROM ${BASE_IMAGE} AS deps
# PEM text of extra CAs to trust in this stage only, for networks whose HTTPS goes through a
# TLS-inspecting proxy (scripts/build-image.sh passes the host's locally added CAs). Not in the
# final image: nothing there makes outbound HTTPS calls.
ARG EXTRA_CA_CERTS=""
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      nodejs npm ca-certificates gcc libc6-dev libdnnl-dev \
 && rm -rf /var/lib/apt/lists/* \
 && if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" >/usr/local/share/ca-certificates/build-extra.crt \
      && update-ca-certificates; \
    fi
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=dev: testcontainers and kubernetes-models are for the test suite only.
# The deno package keeps a second copy of its ~95 MB binary under @deno/<platform>/ (a hard link
# that COPY --from would turn into a real copy): point it at the one the CMD runs.
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force \
 && node_modules/deno/deno --version \
 && for bin in node_modules/@deno/*/deno; do \
      if [ -f "$bin" ] && [ ! -L "$bin" ]; then ln -sf ../../deno/deno "$bin"; fi; \
    done
# The oneDNN engine's C shim, compiled here (gcc and libdnnl-dev stay in this stage).
COPY server/model/onednn/ ./server/model/onednn/
RUN node_modules/deno/deno run -A server/model/onednn/build.ts

FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopenblas0-pthread libdnnl2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Non-root user with a fixed uid/gid so k8s runAsUser/fsGroup can name it.
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app \
      --shell /usr/sbin/nologin app \
 && mkdir -p /data/registry /data/runs \
 && chown -R app:app /data

WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
# The project, models/ included: the service runs on the shipped tiny-gpt2 by default.
COPY . .
COPY --from=deps /app/server/model/onednn/build ./server/model/onednn/build

ENV HOST=0.0.0.0 \
    PORT=50051 \
    METRICS_PORT=9464 \
    REGISTRY_DIR=/data/registry \
    RUNS_DIR=/data/runs \
    MODEL_DIR=/app/models/tiny-gpt2 \
    BACKEND=onednn \
    DENO_DIR=/app/.deno \
    DENO_NO_UPDATE_CHECK=1 \
    NO_COLOR=1

# Type-strip and cache the server's module graph at build time, so start-up reads a cache
# instead of writing one (the root filesystem can then be read-only).
RUN node_modules/deno/deno cache server/main.ts

USER 10001:10001
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
CMD ["node_modules/deno/deno", "run", "-A", "server/main.ts"]
