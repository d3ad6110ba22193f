#!/usr/bin/env bash
# GPU check in one command: one markdown table (device, ONNX Runtime, Lite0 map parity, the transformers judge's
# judgments/s, peak GPU memory). The work is scripts/gpu_check.py; its docstring says what each row measures.
#
#   bash scripts/gpu_check.sh                      # on a machine with one NVIDIA GPU
#   bash scripts/gpu_check.sh --dry                # anywhere (automatic without a CUDA device)
#   bash scripts/gpu_check.sh --out gpu-check.md   # also gpu-check.md and gpu-check.json
#
# This wrapper only readies the environment: offline switches, the Python to use ($PYTHON, else the checkout's
# .venv, else python3), and, where a carry folder .gpu_check/ came with the checkout (gpu_check.py --prepare), its
# wheels installed offline into a temporary folder and its tokenizers unpacked.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# No network: model libraries read these at import; localjudge.offline.enforce() sets them again in Python.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export PYTHONUNBUFFERED=1

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

carry=.gpu_check
if compgen -G "$carry/wheels/*.whl" >/dev/null; then
  # --target keeps the machine's own packages untouched; --no-index: nothing is fetched.
  site="${TMPDIR:-/tmp}/gpu_check_site"
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
    --root-user-action=ignore --upgrade \
    --target "$site" "$carry"/wheels/*.whl >&2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -f "$carry/data/tokenizers.tar.gz" && ! -d "$carry/data/tokenizers" ]]; then
  tar -xzf "$carry/data/tokenizers.tar.gz" -C "$carry/data"
fi

exec "$python" scripts/gpu_check.py "$@"
