#!/usr/bin/env bash
# The built-in example, end to end: make a small RELION project with cryolens' own projector,
# summarise it, convert it to cryoSPARC .cs and back, and check the round trip.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_out}"
CL=".venv/bin/cryolens"
rm -rf "$OUT"
$CL example "$OUT"
$CL info "$OUT/particles.star" --stats
$CL convert "$OUT/particles.star" "$OUT/particles.cs"
$CL info "$OUT/particles.cs"
$CL convert "$OUT/particles.cs" "$OUT/roundtrip.star" --project-dir "$OUT"
$CL info "$OUT/roundtrip.star"
# a registered job from the shell (the same job runs as a RELION External job: cryolens-relion-select)
$CL run select --particles "$OUT/particles.star" --out "$OUT/select" --column rlnDefocusU --max_quantile 0.5
echo "demo finished: outputs in $OUT/"
