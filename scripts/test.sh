#!/usr/bin/env bash
# The whole test suite: what the README's second command runs and what CI runs.
# Unit tests, end-to-end tests (real loopback servers, a real redis-server),
# doc tests, a one-iteration run of each benchmark so they cannot rot, and
# the deployment files' validation.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-toolchain.sh
scripts/ensure-redis.sh
# The multi-process tests run the release binary, as production would.
cargo build --release --bin latchkey
LATCHKEY_RELEASE_BIN="$PWD/target/release/latchkey" cargo test --workspace --all-targets
cargo test --workspace --doc
# Kubernetes manifests (schemas), the Dockerfile (hadolint), the ConfigMaps'
# embedded configs (`latchkey check`) and the observability files.
LATCHKEY_BIN=target/debug/latchkey scripts/validate-deploy.sh
