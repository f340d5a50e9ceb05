#!/usr/bin/env bash
# Train every stage of COS3D for one scene: [preprocess] -> rgb (3DGS) -> instance -> mapping.
#
#   bash script/train.sh [scene] [argfile ...]
#
# No scene: the generated default synthetic scene ($SYNTH_ROOT/$DEFAULT_SCENE), made on first use and
# trained with arguments/synthetic_cpu.yaml first in the argfile list (CPU-sized schedules).
# A finished stage is skipped; FORCE=1 re-runs all of them. Env: DATA_ROOT, OUT_ROOT, TAG, CKPT_DIR, PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

scene="${1:-}"
[[ $# -gt 0 ]] && shift
argfiles=("$@")
if [[ -z "$scene" ]]; then
  scene="$DEFAULT_SCENE"
  DATA_ROOT="$SYNTH_ROOT"
  "$PYTHON" -m preprocess.synthetic --root "$SYNTH_ROOT" --scene "$scene" --seed 0
  argfiles=("$CPU_ARGFILE" "${argfiles[@]}")
fi
src="$DATA_ROOT/$scene"
run="$OUT_ROOT/$TAG/$scene"
[[ -d "$src" ]] || { echo "error: scene folder not found: $src (set DATA_ROOT)" >&2; exit 2; }
config_flags "${argfiles[@]}"
force=()
[[ "${FORCE:-0}" == "1" ]] && force=(--force)

# no features yet, or our own preprocessing's folder (it resumes an interrupted run and is a no-op when complete)
if [[ ! -d "$src/language_features" || -f "$src/language_features/manifest.json" ]]; then
  echo "[train.sh] SAM + CLIP preprocessing of $src (resumes / skips finished images)"
  "$PYTHON" -m preprocess.run -s "$src" --ckpt_dir "$CKPT_DIR"
fi
cd "$REPO"
"$PYTHON" train.py --stage rgb -s "$src" -m "$run" "${CONFIG_FLAGS[@]}" "${force[@]}"
"$PYTHON" train.py --stage instance -s "$src" -m "$run" "${CONFIG_FLAGS[@]}" "${force[@]}"
"$PYTHON" train.py --stage mapping -s "$src" -m "$run" "${CONFIG_FLAGS[@]}" "${force[@]}"
echo "[train.sh] $scene trained in $run"
