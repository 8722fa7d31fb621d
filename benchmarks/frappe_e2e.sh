#!/usr/bin/env bash
# End to end on Frappe_x1 (issue 7): search with one-shot RL and DNAS at several FLOPs targets
# in the given spaces, retrain every found architecture with the BARS protocol, and report them
# next to the baselines' runs.
#   bash benchmarks/frappe_e2e.sh OUT_DIR [BASELINE_RUN_DIR...]
# Environment (defaults in brackets):
#   FRAPPE [../shared/data/frappe_x1]  SPACES ["rankitect_frappe dhen2"]
#   METHODS ["oneshot_rl dnas"]  TARGETS ["720000 760000 800000"]
#   RETRAIN_EPOCHS [100: BARS early stopping decides]  RL_ARGS / DNAS_ARGS: extra overrides
set -euo pipefail
out=${1:?output directory}
shift
baselines=("$@")
frappe=${FRAPPE:-../shared/data/frappe_x1}
spaces=${SPACES:-rankitect_frappe dhen2}
methods=${METHODS:-oneshot_rl dnas}
targets=${TARGETS:-720000 760000 800000}
epochs=${RETRAIN_EPOCHS:-100}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Frappe has ~200k training rows: smaller batches than the BARS 4096 give the policy more
# updates; alpha is raised so the FLOPs term is not drowned by early-training NE noise.
read -r -a rl_args <<< "${RL_ARGS:-data.batch_size=1024 trainer.max_epochs=6 method.alpha=2.0}"
read -r -a dnas_args <<< "${DNAS_ARGS:-trainer.max_steps=600}"
common=(data=frappe "data.source.root=$frappe" trainer.enable_progress_bar=false logger=none)
mkdir -p "$out"
# targets outermost, so that a partial run already covers every method and space
for target in $targets; do
  for space in $spaces; do
    for method in $methods; do
      run="$out/search/$space-$method-$target"
      train="$out/retrain/$space-$method-$target"
      if [ ! -f "$run/results.json" ]; then
        args=("${rl_args[@]}"); [ "$method" = dnas ] && args=("${dnas_args[@]}")
        mkdir -p "$(dirname "$run")" "$(dirname "$train")"
        # the search's CPU seconds (user + system), for the docs' table
        /usr/bin/time -f "%U %S" -o "$run.cpu" rankitect-search "method=$method" final=none \
          "search_space=$space" "method.target_flops=$target" "${common[@]}" "${args[@]}" \
          hydra.run.dir="$run" > "$run.log" 2>&1
      fi
      if [ ! -f "$train/results.json" ]; then
        # the baselines' regularisation (DNN: dropout 0.2, embedding L2 0.05)
        rankitect-train experiment=frappe_bars model=arch "model.space=$space" \
          "model.arch_file=$run/best_arch.json" model.dropout=0.2 module.emb_l2=0.05 \
          "name=$method-$space-$target" "trainer.max_epochs=$epochs" "${common[@]}" \
          hydra.run.dir="$train" > "$train.log" 2>&1
      fi
    done
  done
done
rankitect-report "$out/retrain" "${baselines[@]}" -o "$out/report" --metric test_logloss
