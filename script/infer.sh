#!/usr/bin/env bash
# Query -> render selections -> LERF-OVS evaluation for every trained scene, then the metrics table.
#
#   bash script/infer.sh [-c argfile ...] [argfile ...]
#
# Scenes: $SCENES (space separated) or every run folder under $OUT_ROOT/$TAG with a finished mapping.
# Argument files (-c FILE / --config FILE, repeatable, or positional) change query-time settings,
# e.g. -c arguments/ablations/language_only.yaml; they apply in order, after $EXTRA_ARGFILES; a
# relative path is looked up in the current directory, then the repo root.
# Env: DATA_ROOT, LABEL_ROOT, OUT_ROOT, TAG, SCENES, PYTHON, EXTRA_ARGFILES (see script/common.sh).
#   -h, --help   this text
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 0 "$@"
extra_argfiles
config_flags "${EXTRA[@]}" "${ARGFILES[@]}"

runs_root="$OUT_ROOT/$TAG"
if [[ -n "${SCENES:-}" ]]; then
  read -r -a scenes <<< "$SCENES"
else
  scenes=()
  for d in "$runs_root"/*/; do [[ -f "$d/mapping/done.json" ]] && scenes+=("$(basename "$d")"); done
fi
[[ ${#scenes[@]} -gt 0 ]] || die "no trained scenes under $runs_root (run script/train.sh first)"

cd "$REPO"
label_root="$LABEL_ROOT"
for scene in "${scenes[@]}"; do
  run="$runs_root/$scene"
  [[ -d "$run" ]] || die "no run folder $run (train it with script/train.sh $scene)"
  "$PYTHON" query.py -m "$run" "${CONFIG_FLAGS[@]}" --set "eval.label_root=$label_root"
  "$PYTHON" render.py -m "$run" "${CONFIG_FLAGS[@]}" --set "eval.label_root=$label_root"
done
"$PYTHON" eval_lerf.py --scenes "${scenes[@]}" --label_root "$label_root" --runs_root "$runs_root" "${CONFIG_FLAGS[@]}"
