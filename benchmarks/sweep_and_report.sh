#!/usr/bin/env bash
# A FLOPs-target sweep, each found architecture retrained alone, a few baselines, then one
# NE-FLOPs Pareto plot (docs/report.md):
#   bash benchmarks/sweep_and_report.sh OUT_DIR
# The defaults are tiny settings on the synthetic data (a few CPU minutes); the environment
# variables below change them. The rankitect-* commands must be on PATH (e.g. .venv/bin).
#   DATA=synthetic         data config (synthetic, frappe, criteo)
#   DATA_ARGS=...          data overrides shared by every run (default: a 20k-row synthetic set)
#   SPACE=rankitect        search space (also the retrained model's model.space)
#   METHOD=oneshot_rl      search method (oneshot_rl, dnas, sampling)
#   TARGETS=40000,70000,100000   comma-separated FLOPs targets, one search job each
#   SEARCH_ARGS=...        extra search overrides (default: batch 256, 2 epochs)
#   EPOCHS=2               epochs of every training run (retrained archs and baselines)
#   TRAIN_ARGS=...         extra training overrides (default: module.lr=0.01)
#   BASELINES=lr,dnn       hand-designed models trained beside them ("" for none)
#   BASELINE=<first of BASELINES>   the model the NE gain is measured against
#   METRIC=test_ne         quality axis of the report
set -euo pipefail
out=${1:?usage: sweep_and_report.sh OUT_DIR}
data=${DATA:-synthetic}
read -r -a data_args <<<"${DATA_ARGS-data.source.n_train=20000 data.source.n_val=4000 data.source.n_test=4000}"
space=${SPACE:-rankitect}
method=${METHOD:-oneshot_rl}
targets=${TARGETS:-40000,70000,100000}
read -r -a search_args <<<"${SEARCH_ARGS-data.batch_size=256 trainer.max_epochs=2}"
epochs=${EPOCHS:-2}
read -r -a train_args <<<"${TRAIN_ARGS-module.lr=0.01}"
baselines=${BASELINES-lr,dnn}
baseline=${BASELINE:-${baselines%%,*}}
metric=${METRIC:-test_ne}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
quiet=(trainer.enable_progress_bar=false trainer.enable_model_summary=false logger=none)

# 1. One search job per FLOPs target: $out/search/<job num>/{best_arch,results}.json
rankitect-search -m final=none method="$method" search_space="$space" data="$data" "${data_args[@]}" \
  method.target_flops="$targets" "${search_args[@]}" "${quiet[@]}" hydra.sweep.dir="$out/search"

# 2. Every found architecture trained alone: $out/retrain/<job num>/results.json
for arch in "$out"/search/*/best_arch.json; do
  job=$(basename "$(dirname "$arch")")
  rankitect-train model=arch model.arch_file="$arch" model.space="$space" data="$data" \
    "${data_args[@]}" trainer.max_epochs="$epochs" "${train_args[@]}" "${quiet[@]}" \
    hydra.run.dir="$out/retrain/$job"
done

# 3. The baselines, same data and training settings: $out/baselines/<job num>/results.json
report_dirs=("$out/search" "$out/retrain")
gain=()
if [ -n "$baselines" ]; then
  rankitect-train -m model="$baselines" data="$data" "${data_args[@]}" \
    trainer.max_epochs="$epochs" "${train_args[@]}" "${quiet[@]}" hydra.sweep.dir="$out/baselines"
  report_dirs+=("$out/baselines")
  gain=(--baseline "$baseline")
fi

# 4. One plot, one table: $out/report/{pareto.png,report.csv,report.md}
rankitect-report "${report_dirs[@]}" -o "$out/report" --metric "$metric" "${gain[@]}" \
  --title "$method on $space ($data): $metric vs FLOPs, targets $targets"
