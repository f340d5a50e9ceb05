#!/usr/bin/env bash
# Query -> render selections -> LERF-OVS evaluation for every trained scene, then the metrics table.
#
#   bash script/infer.sh [argfile ...]
#
# Scenes: $SCENES (space separated) or every run folder under $OUT_ROOT/$TAG. Argument files change
# query-time settings (e.g. arguments/ablations/language_only.yaml). Env: DATA_ROOT, LABEL_ROOT,
# OUT_ROOT, TAG, PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
config_flags "$@"

runs_root="$OUT_ROOT/$TAG"
if [[ -n "${SCENES:-}" ]]; then
  read -r -a scenes <<< "$SCENES"
else
  scenes=()
  for d in "$runs_root"/*/; do [[ -f "$d/mapping/done.json" ]] && scenes+=("$(basename "$d")"); done
fi
[[ ${#scenes[@]} -gt 0 ]] || { echo "error: no trained scenes under $runs_root (run script/train.sh first)" >&2; exit 2; }

cd "$REPO"
label_root="$LABEL_ROOT"
for scene in "${scenes[@]}"; do
  run="$runs_root/$scene"
  [[ -d "$run" ]] || { echo "error: no run folder $run (train it with script/train.sh $scene)" >&2; exit 2; }
  "$PYTHON" query.py -m "$run" "${CONFIG_FLAGS[@]}" --set "eval.label_root=$label_root"
  "$PYTHON" render.py -m "$run" "${CONFIG_FLAGS[@]}" --set "eval.label_root=$label_root"
done
"$PYTHON" eval_lerf.py --scenes "${scenes[@]}" --label_root "$label_root" --runs_root "$runs_root"
