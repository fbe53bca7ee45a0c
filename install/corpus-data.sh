#!/usr/bin/env bash
# Data for bench/corpus.py (the foreign-generator corpus): real atomic models shipped as package data
# by MDAnalysisTests. Only its data files are read (no MDAnalysis import), so its dependencies are not
# installed. Not needed by cryolens itself or its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
"$VENV/bin/python" -m pip install -q --no-deps "mdanalysistests==2.11.0"
"$VENV/bin/python" -c "import importlib.util as u; print('MDAnalysisTests data:', list(u.find_spec('MDAnalysisTests').submodule_search_locations)[0])"
