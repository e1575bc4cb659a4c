#!/usr/bin/env bash
# Seed-compatible entry point: the seed's operators run
#   ./build-images.sh --profile control-plane --output-dir artifacts
# Every argument goes to `plasmaboot build` (see `plasmaboot build --help`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -x "$here/.venv/bin/plasmaboot" ]; then
    exec "$here/.venv/bin/plasmaboot" build "$@"
elif command -v plasmaboot >/dev/null 2>&1; then
    exec plasmaboot build "$@"
else
    echo "build-images.sh: plasmaboot is not installed; run \`make setup\` first" >&2
    exit 2
fi
