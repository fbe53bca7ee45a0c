#!/usr/bin/env bash
# The built-in example, end to end: simulate a small mixed data set (several phantom proteins,
# junk, SNR 0.1) as a RELION project with ground truth and 2D classes, summarise it, convert it to
# cryoSPARC .cs and back, and run a registered job on it from the shell.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_out}"
CL="$PWD/.venv/bin/cryolens"  # absolute: one step runs inside $OUT
rm -rf "$OUT"
$CL simulate "$OUT" --n 1000 --species 3 --snr 0.1 --junk 0.1 --classes 12 --seed 0
$CL info "$OUT/Simulated/particles.star" --stats
$CL convert "$OUT/Simulated/particles.star" "$OUT/Simulated/particles.cs"
$CL info "$OUT/Simulated/particles.cs"
$CL convert "$OUT/Simulated/particles.cs" "$OUT/roundtrip.star" --project-dir "$OUT"
# a registered job from the shell (the same job runs as a RELION External job: cryolens-relion-select)
(cd "$OUT" && "$CL" run select --particles Simulated/particles.star --out Select --column rlnDefocusU --max_quantile 0.5)
# identify: which protein is each class? A library of the three maps plus 12 decoy phantoms, then
# the identify job on the bare stack of class averages (junk classes should come back "unknown")
$CL library build "$OUT/library.npz" --maps "$OUT"/Simulated/map_*.mrc --phantoms 12 --phantom-seed 99 --views 100
$CL run identify --classes-in "$OUT/Simulated/classes_fast.mrcs" --library "$OUT/library.npz" --out "$OUT/Identify"
.venv/bin/python - "$OUT" <<'PY'
import sys, pandas as pd
out = sys.argv[1]
t = pd.read_csv(f"{out}/Identify/identities.csv", keep_default_na=False)
truth = pd.read_csv(f"{out}/Simulated/classes_fast_truth.csv", keep_default_na=False)
t["truth"] = [("map_" + s if k == "protein" else f"({k})") for s, k in zip(truth["truth_species"], truth["truth_kind"])]
pd.set_option("display.width", 160)
print(t[["class_id", "identity", "confidence", "score", "match1", "match2", "truth"]].to_string(index=False))
PY
# rank: a calibrated quality score per class and an automatic, data-set-adaptive selection
$CL run rank --classes-in "$OUT/Simulated/classes_fast.mrcs" --out "$OUT/Rank"
echo "demo finished: outputs in $OUT/ (gallery: $OUT/gallery.png)"
