#!/usr/bin/env bash
# Separate environments for the dedup baselines (bench/dedup.py --datatrove / --rensa), under .bench/envs/ (ignored
# by git), so their dependencies never enter the project's lock. Idempotent: an environment that imports is kept.
#
#     bench/envs/setup.sh            # both
#     bench/envs/setup.sh rensa      # one
set -euo pipefail
cd "$(dirname "$0")/../.."
UV="$(command -v uv 2>/dev/null || echo .tools/bin/uv)"
PYTHON="$(.venv/bin/python -c 'import sys; print(sys.executable)')"

declare -A PACKAGES=(
  [datatrove]="datatrove[io,processing]==0.10.1"
  [rensa]="rensa==0.5.0 pyarrow numpy"
)
declare -A IMPORTS=(
  [datatrove]="from datatrove.pipeline.dedup.minhash import MinhashDedupSignature"
  [rensa]="from rensa import RMinHash, RMinHashLSH"
)

for name in "${@:-datatrove rensa}"; do
  for env in $name; do
    target=".bench/envs/$env"
    if [ -x "$target/bin/python" ] && "$target/bin/python" -c "${IMPORTS[$env]}" 2>/dev/null; then
      echo "$target: ready"; continue
    fi
    "$UV" venv -q --clear --python "$PYTHON" "$target"
    # shellcheck disable=SC2086
    VIRTUAL_ENV="$target" "$UV" pip install -q ${PACKAGES[$env]}
    "$target/bin/python" -c "${IMPORTS[$env]}"
    echo "$target: installed ${PACKAGES[$env]}"
  done
done
