#!/usr/bin/env bash
# rust-toolchain.toml pins the toolchain by version. Machines here ship that
# version as rustup's `stable`; if rustup does not know it by number yet,
# link it (nothing is downloaded), or fail saying what is needed.
set -euo pipefail
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
command -v rustup >/dev/null || exit 0
if rustup toolchain list | grep -q "^${want}"; then exit 0; fi
have=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')
if [ "$have" = "$want" ]; then
  rustup toolchain link "$want" "$(rustup run stable rustc --print sysroot)"
else
  echo "error: rust $want is required (rust-toolchain.toml); stable here is ${have:-missing}." >&2
  echo "       install it with: rustup toolchain install $want" >&2
  exit 1
fi
