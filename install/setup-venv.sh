#!/usr/bin/env bash
# Create .venv (if missing) and install cryolens with the right torch build.
#   - no NVIDIA GPU visible: the CPU wheel torch==2.13.0 (never the multi-GB CUDA wheels);
#   - a GPU visible (nvidia-smi works): the default CUDA build of torch 2.13.0.
# Override with CRYOLENS_TORCH="torch==X.Y.Z" (a pip requirement) if your site needs another build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || {
        echo "python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
fi
PIP="$VENV/bin/python -m pip"
if [ -n "${CRYOLENS_TORCH:-}" ]; then
    TORCH="$CRYOLENS_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH="torch==2.13.0"   # GPU node: the index's default (CUDA) build
else
    # No GPU: pin the exact version so pip takes the local CPU wheel where the site provides
    # one (a floating "torch" would pull several GB of CUDA packages).
    TORCH="torch==2.13.0"
fi
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "installing $TORCH"
    $PIP install -q "$TORCH"
fi
echo "installing cryolens and its dependencies"
$PIP install -q -e ".[test,models]"
"$VENV/bin/python" - <<'PY'
import torch, cryolens
print(f"cryolens {cryolens.__version__} with torch {torch.__version__} "
      f"(CUDA {'available' if torch.cuda.is_available() else 'not available: CPU mode'})")
PY
touch "$VENV/.cryolens-installed"
