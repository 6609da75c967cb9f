#!/usr/bin/env bash
# Install RecForge into .venv (idempotent: a second run with everything in place does nothing).
#
#   scripts/install.sh            # CPU or CUDA machine, detected with nvidia-smi
#   RECFORGE_CUDA=0 scripts/install.sh   # force the CPU build
#   PYTHON=python3.12 scripts/install.sh # choose the interpreter (>= 3.11)
#
# Steps: venv -> torch 2.13.0 (CPU wheel, or the CUDA build on a CUDA machine) -> the FBGEMM build that loads
# with that torch (fbgemm-gpu-cpu 1.8.0 on CPU, fbgemm-gpu 1.8.0 on CUDA) -> torchrec 1.8.0 with --no-deps
# (its declared fbgemm-gpu dependency would pull the 2.7 GB CUDA build) -> the rest from constraints.txt
# -> RecForge itself (editable) -> redis-server where apt is available (for the Redis online-store tests)
# -> chromium and chromium-driver likewise (for the console's browser tests).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
TORCH_VERSION=2.13.0
FBGEMM_VERSION=1.8.0
TORCHREC_VERSION=1.8.0
STAMP="$VENV/.recforge-install"

fail() { echo "install: FAILED at step '$1'. $2" >&2; exit 1; }
step() { echo "install: $*"; }

if [ -z "${RECFORGE_CUDA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then RECFORGE_CUDA=1; else RECFORGE_CUDA=0; fi
fi
# PyPI's Linux torch wheel is the CUDA build; a machine that carries the CPU wheel locally (pip config) gets that.
TORCH_SPEC="torch==$TORCH_VERSION"
if [ "$RECFORGE_CUDA" = 1 ]; then FBGEMM_SPEC="fbgemm-gpu==$FBGEMM_VERSION"; else FBGEMM_SPEC="fbgemm-gpu-cpu==$FBGEMM_VERSION"; fi

# What an install is made of: a change in any of these re-runs the install.
want=$(cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -c1-16)-cuda$RECFORGE_CUDA
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import recforge, torchrec, faiss, mlflow, ray" 2>/dev/null; then
  echo "install: .venv is up to date (nothing to do)"
  exit 0
fi

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || fail "python" "RecForge needs Python >= 3.11; set PYTHON=/path/to/python3.11"

if [ ! -x "$VENV/bin/python" ]; then
  step "creating .venv with $("$PY" --version)"
  "$PY" -m venv "$VENV" || fail "venv" "could not create $VENV (is the python venv module installed?)"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip >/dev/null || fail "pip" "could not upgrade pip in .venv"

step "torch $TORCH_VERSION ($([ "$RECFORGE_CUDA" = 1 ] && echo CUDA || echo CPU) build)"
"${PIP[@]}" install -q "$TORCH_SPEC" \
  || fail "torch" "pip could not install $TORCH_SPEC; on a CPU machine the CPU wheel must be reachable"

step "$FBGEMM_SPEC (the FBGEMM build that loads with torch $TORCH_VERSION)"
"${PIP[@]}" install -q "$FBGEMM_SPEC" || fail "fbgemm" "pip could not install $FBGEMM_SPEC"
"$VENV/bin/python" -c "import torch, fbgemm_gpu" 2>/dev/null \
  || fail "fbgemm" "$FBGEMM_SPEC is installed but does not load with torch $TORCH_VERSION"

step "torchrec $TORCHREC_VERSION (--no-deps) and its real dependencies"
"${PIP[@]}" install -q --no-deps "torchrec==$TORCHREC_VERSION" || fail "torchrec" "pip could not install torchrec"

step "RecForge and its dependencies (pinned by constraints.txt)"
"${PIP[@]}" install -q -c constraints.txt -e ".[dev,bench]" \
  || fail "recforge" "pip could not install the pinned dependencies; see the pip output above"

"$VENV/bin/python" - <<'EOF' || fail "check" "a core package does not import; see the traceback above"
import faiss, mlflow, pyarrow, pytorch_lightning, ray, torch, torchrec  # noqa: F401
from torchrec import KeyedJaggedTensor
KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
print(f"install: torch {torch.__version__}, torchrec {torchrec.__version__}, ray {ray.__version__}, "
      f"mlflow {mlflow.__version__}, faiss {faiss.__version__}, cuda={torch.cuda.is_available()}")
EOF

if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    step "redis-server (Debian package, for the Redis online-store tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 \
      || echo "install: note: redis-server could not be installed; the Redis tests will be skipped"
  else
    echo "install: note: no redis-server and no apt as root; the Redis online-store tests will be skipped"
  fi
fi

if ! { [ -x /usr/bin/chromium ] || [ -x /usr/bin/chromium-browser ]; } || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    step "chromium and chromium-driver (Debian packages, for the console's browser tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
      || echo "install: note: chromium could not be installed; the console browser tests will be skipped"
  else
    echo "install: note: no chromium/chromedriver and no apt as root; the console browser tests will be skipped"
  fi
fi

echo "$want" > "$STAMP"
echo "install: done"
