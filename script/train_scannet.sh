#!/usr/bin/env bash
# Train COS3D on ScanNet scenes with OpenGaussian's set-up (arguments/scannet.yaml: one frozen Gaussian
# per mesh vertex, half resolution, SAM level 0): rgb (3DGS) -> instance -> mapping, per scene.
#
#   bash script/train_scannet.sh [scene | all] [-c argfile ...] [argfile ...]
#
# scene: a folder of $SCANNET_ROOT (color/, transforms_train.json, transforms_test.json, points3d.ply,
# language_features/, <scene>_vh_clean_2.labels.ply: OpenGaussian's ScanNet data); all = OpenGaussian's
# 10 scenes (scene/scannet.py SCANNET_SCENES). No scene (and no SCANNET_ROOT): the generated
# ScanNet-shaped room $SYNTH_ROOT/scannet/scene0000_00 (python -m preprocess.synthetic.room), made on
# first use and trained with arguments/synthetic_cpu.yaml after arguments/scannet.yaml (CPU-sized
# schedules).
# Argument files (-c FILE / --config FILE, repeatable, or positional after the scene) apply in order
# after arguments/scannet.yaml and $EXTRA_ARGFILES. A finished stage is skipped; FORCE=1 re-runs all of
# them. Runs go to $OUT_ROOT/$TAG/<scene> ($TAG default: scannet with $SCANNET_ROOT, else
# scannet_synthetic, so the generated room's runs never meet a real scene's).
# Env: SCANNET_ROOT (default $SYNTH_ROOT/scannet), OUT_ROOT, TAG, PYTHON, FORCE, EXTRA_ARGFILES,
# SYNTH_ROOT, ROOM_ARGS (extra arguments of the room generator, e.g. "--views 8 --width 48 --height 36")
# (see script/common.sh).
#   -h, --help   this text
set -euo pipefail
# real data ($SCANNET_ROOT set) -> tag scannet; the generated room -> tag scannet_synthetic
if [[ -n "${SCANNET_ROOT:-}" ]]; then TAG="${TAG:-scannet}"; else TAG="${TAG:-scannet_synthetic}"; fi
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 1 "$@"
extra_argfiles

cd "$REPO"
SCANNET_ROOT_SET="${SCANNET_ROOT:-}"
SCANNET_ROOT="$(abspath "${SCANNET_ROOT:-$SYNTH_ROOT/scannet}")"
ROOM_ARGS="${ROOM_ARGS:-}"
scene="${LEAD[0]:-}"
argfiles=("$REPO/arguments/scannet.yaml" "${EXTRA[@]}" "${ARGFILES[@]}")
if [[ -z "$scene" ]]; then
  [[ -z "${SCANNET_ROOT_SET:-}" ]] || die "SCANNET_ROOT is set: name a scene of it, or all (see --help)"
  scene="scene0000_00"
  # shellcheck disable=SC2086  # ROOM_ARGS is a list of words
  "$PYTHON" -m preprocess.synthetic.room --root "$SCANNET_ROOT" --scene "$scene" --seed 0 $ROOM_ARGS
  argfiles=("$REPO/arguments/scannet.yaml" "$CPU_ARGFILE" "${EXTRA[@]}" "${ARGFILES[@]}")
  scenes=("$scene")
elif [[ "$scene" == "all" ]]; then
  read -r -a scenes <<< "$("$PYTHON" -c 'from scene.scannet import SCANNET_SCENES; print(*SCANNET_SCENES)')"
else
  scenes=("$scene")
fi
config_flags "${argfiles[@]}"
force=()
[[ "${FORCE:-0}" == "1" ]] && force=(--force)
for scene in "${scenes[@]}"; do
  src="$SCANNET_ROOT/$scene"
  run="$OUT_ROOT/$TAG/$scene"
  [[ -d "$src" ]] || die "scene folder not found: $src (set SCANNET_ROOT; scene = '$scene')"
  [[ -f "$src/transforms_train.json" ]] || die "$src/transforms_train.json not found: not a ScanNet scene in OpenGaussian's layout"
  [[ -d "$src/language_features" ]] || die "$src/language_features not found: preprocess the scene first (python -m preprocess.run -s $src --images color)"
  for stage in rgb instance mapping; do
    "$PYTHON" train.py --stage "$stage" -s "$src" -m "$run" "${CONFIG_FLAGS[@]}" "${force[@]}"
  done
  echo "[train_scannet.sh] $scene trained in $run"
done
