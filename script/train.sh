#!/usr/bin/env bash
# Train every stage of COS3D for one scene: [preprocess] -> rgb (3DGS) -> instance -> mapping.
#
#   bash script/train.sh [scene] [-c argfile ...] [argfile ...]
#
# scene: a folder of $DATA_ROOT (e.g. DATA_ROOT=/data/lerf_ovs bash script/train.sh figurines).
# No scene: the generated default synthetic scene ($SYNTH_ROOT/$DEFAULT_SCENE), made on first use and
# trained with arguments/synthetic_cpu.yaml first in the argfile list (CPU-sized schedules).
# Argument files (-c FILE / --config FILE, repeatable, or positional after the scene) apply in order,
# after $EXTRA_ARGFILES; a relative path is looked up in the current directory, then the repo root.
# A scene with photos (images/ or input/) but no sparse/0 gets camera poses first (python -m
# preprocess.capture: structure from motion, docs/capture.md).
# A scene without language_features/ is preprocessed first (SAM + CLIP, weights in $CKPT_DIR).
# A finished stage is skipped; FORCE=1 re-runs all of them. The run goes to $OUT_ROOT/$TAG/<scene>.
# Env: DATA_ROOT, OUT_ROOT, TAG, CKPT_DIR, PYTHON, FORCE, EXTRA_ARGFILES, SYNTH_ROOT, SYNTH_ARGS
# (see script/common.sh).
#   -h, --help   this text
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 1 "$@"
extra_argfiles

cd "$REPO"   # every path is absolute from here on
scene="${LEAD[0]:-}"
argfiles=("${EXTRA[@]}" "${ARGFILES[@]}")
if [[ -z "$scene" ]]; then
  scene="$DEFAULT_SCENE"
  DATA_ROOT="$SYNTH_ROOT"
  # shellcheck disable=SC2086  # SYNTH_ARGS is a list of words
  "$PYTHON" -m preprocess.synthetic --root "$SYNTH_ROOT" --scene "$scene" --seed 0 $SYNTH_ARGS
  argfiles=("$CPU_ARGFILE" "${argfiles[@]}")
fi
src="$DATA_ROOT/$scene"
run="$OUT_ROOT/$TAG/$scene"
if [[ ! -d "$src" ]]; then
  [[ "$scene" == *.yaml || "$scene" == *.yml ]] && die "scene folder not found: $src ('$scene' is the scene: give argument files after it, or with -c FILE)"
  die "scene folder not found: $src (set DATA_ROOT; scene = '$scene')"
fi
config_flags "${argfiles[@]}"
force=()
[[ "${FORCE:-0}" == "1" ]] && force=(--force)

# a capture without camera poses yet: structure from motion first (never redone: FORCE=1 keeps the poses)
if [[ ! -d "$src/sparse/0" && ( -d "$src/images" || -d "$src/input" ) ]]; then
  echo "[train.sh] no $src/sparse/0: structure from motion (python -m preprocess.capture)"
  "$PYTHON" -m preprocess.capture -s "$src"
fi
# no features yet, or our own preprocessing's folder (it resumes an interrupted run and is a no-op when complete)
if [[ ! -d "$src/language_features" || -f "$src/language_features/manifest.json" ]]; then
  echo "[train.sh] SAM + CLIP preprocessing of $src (resumes / skips finished images)"
  "$PYTHON" -m preprocess.run -s "$src" --ckpt_dir "$CKPT_DIR"
fi
"$PYTHON" train.py --stage rgb -s "$src" -m "$run" "${CONFIG_FLAGS[@]}" "${force[@]}"
"$PYTHON" train.py --stage instance -s "$src" -m "$run" "${CONFIG_FLAGS[@]}" "${force[@]}"
"$PYTHON" train.py --stage mapping -s "$src" -m "$run" "${CONFIG_FLAGS[@]}" "${force[@]}"
echo "[train.sh] $scene trained in $run"
