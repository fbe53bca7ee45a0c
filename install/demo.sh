#!/usr/bin/env bash
# The built-in example, end to end: simulate a small mixed data set (several phantom proteins,
# junk, SNR 0.1) as a RELION project with ground truth and 2D classes, summarise it, convert it to
# cryoSPARC .cs and back, and run a registered job on it from the shell.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_out}"
CL=".venv/bin/cryolens"
rm -rf "$OUT"
$CL simulate "$OUT" --n 1000 --species 3 --snr 0.1 --junk 0.1 --classes 12 --seed 0
$CL info "$OUT/Simulated/particles.star" --stats
$CL convert "$OUT/Simulated/particles.star" "$OUT/Simulated/particles.cs"
$CL info "$OUT/Simulated/particles.cs"
$CL convert "$OUT/Simulated/particles.cs" "$OUT/roundtrip.star" --project-dir "$OUT"
# a registered job from the shell (the same job runs as a RELION External job: cryolens-relion-select)
(cd "$OUT" && "../$CL" run select --particles Simulated/particles.star --out Select --column rlnDefocusU --max_quantile 0.5)
echo "demo finished: outputs in $OUT/ (gallery: $OUT/gallery.png)"
