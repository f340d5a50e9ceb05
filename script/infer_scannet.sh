#!/usr/bin/env bash
# Per-point ScanNet evaluation (OpenGaussian's protocol: 19 / 15 / 10 NYU40 classes) of every trained
# scene, then the metrics table: python eval_scannet.py over the runs of script/train_scannet.sh.
#
#   bash script/infer_scannet.sh [-c argfile ...] [argfile ...]
#
# Scenes: $SCENES (space separated) or every run folder under $OUT_ROOT/$TAG with a finished mapping.
# Argument files (-c FILE / --config FILE, repeatable, or positional) change query-time settings (e.g.
# the text encoder); they apply after $EXTRA_ARGFILES. Writes metrics.json / metrics.csv to $OUT_ROOT/$TAG.
# Env: SCANNET_ROOT (default $SYNTH_ROOT/scannet, the generated room), OUT_ROOT, TAG (default scannet
# with $SCANNET_ROOT, else scannet_synthetic, as script/train_scannet.sh), SCENES, PYTHON,
# EXTRA_ARGFILES (see script/common.sh).
#   -h, --help   this text
set -euo pipefail
# real data ($SCANNET_ROOT set) -> tag scannet; the generated room -> tag scannet_synthetic
if [[ -n "${SCANNET_ROOT:-}" ]]; then TAG="${TAG:-scannet}"; else TAG="${TAG:-scannet_synthetic}"; fi
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 0 "$@"
extra_argfiles
config_flags "${EXTRA[@]}" "${ARGFILES[@]}"
SCANNET_ROOT="$(abspath "${SCANNET_ROOT:-$SYNTH_ROOT/scannet}")"

runs_root="$OUT_ROOT/$TAG"
if [[ -n "${SCENES:-}" ]]; then
  read -r -a scenes <<< "$SCENES"
else
  scenes=()
  for d in "$runs_root"/*/; do [[ -f "$d/mapping/done.json" ]] && scenes+=("$(basename "$d")"); done
fi
[[ ${#scenes[@]} -gt 0 ]] || die "no trained scenes under $runs_root (run script/train_scannet.sh first)"
cd "$REPO"
"$PYTHON" eval_scannet.py --scenes "${scenes[@]}" --data_root "$SCANNET_ROOT" --runs_root "$runs_root" \
  "${CONFIG_FLAGS[@]}"
