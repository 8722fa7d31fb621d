#!/usr/bin/env bash
# One-shot RL vs DNAS at the same FLOPs target (the seed architecture's), on the synthetic data
# and on Frappe_x1: each method's default search, then its found architecture retrained alone.
#   bash benchmarks/compare_methods.sh OUT_DIR [FRAPPE_DIR]
set -euo pipefail
out=${1:?output directory}
frappe=${2:-../shared/data/frappe_x1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for data in synthetic frappe; do
  root=(); [ "$data" = frappe ] && root=("data.source.root=$frappe")
  for m in oneshot_rl dnas; do
    rankitect-search method=$m final=none data=$data "${root[@]}" trainer.enable_progress_bar=false \
      hydra.run.dir="$out/$data-$m"
    if [ "$data" = frappe ]; then
      retrain=(experiment=frappe_bars "${root[@]}" trainer.max_epochs=10)
    else
      retrain=(trainer.max_epochs=5)
    fi
    rankitect-train model=arch model.arch_file="$out/$data-$m/best_arch.json" "${retrain[@]}" \
      trainer.enable_progress_bar=false logger=none hydra.run.dir="$out/train-$data-$m"
  done
done
