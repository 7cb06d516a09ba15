#!/usr/bin/env bash
# basecli against transformers generate on one GPU: prints a markdown table for bench/README.md.
#   bench/gpu.sh             the real shapes on CUDA (about 5-8 minutes on one H100/H200)
#   bench/gpu.sh --dry-run   tiny shapes on the CPU, to check the script end to end
# Options after these go to bench/gpu.py (--batches, --compile-batches, --new-tokens, --bandwidth, --budget).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$root/bench/gpu.py" "$@"
