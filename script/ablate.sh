#!/usr/bin/env bash
# Run every ablation argument file (arguments/ablations/*.yaml, or those given) on one scene and print
# one table of metrics.
#
#   bash script/ablate.sh [scene] [-c argfile ...] [ablation.yaml ...]
#
# scene: a folder of $DATA_ROOT (e.g. DATA_ROOT=/data/lerf_ovs bash script/ablate.sh figurines); none:
# the generated default synthetic scene. Positional files after the scene are the ablations (a
# relative path is looked up in the current directory, then the repo root). -c FILE / --config FILE
# (repeatable) files are passed to every train.sh / infer.sh call, the base run's and each
# ablation's, before the ablation file (as is $EXTRA_ARGFILES, before them).
# Each ablation runs in $OUT_ROOT/<ablation name>/<scene>. Stages an ablation does not change are
# shared with the base run ($OUT_ROOT/$TAG/<scene>, trained first if needed) through symbolic links:
# the 3DGS stage always, the instance field and mapping when the file only changes query/eval settings.
# Env: DATA_ROOT, LABEL_ROOT, OUT_ROOT, TAG, PYTHON, FORCE, EXTRA_ARGFILES (see script/common.sh).
#   -h, --help   this text
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 1 "$@"
extra_argfiles   # only to fail early on a missing file; train.sh / infer.sh apply them

scene="${LEAD[0]:-}"
files=("${POS_FILES[@]}")
[[ ${#files[@]} -gt 0 ]] || files=("$REPO"/arguments/ablations/*.yaml)
common_flags=()
for f in "${OPT_FILES[@]}"; do common_flags+=(-c "$f"); done
train_scene=("$scene")
if [[ -z "$scene" ]]; then scene="$DEFAULT_SCENE"; DATA_ROOT="$SYNTH_ROOT"; LABEL_ROOT="$SYNTH_ROOT/label"; train_scene=(); fi
export DATA_ROOT LABEL_ROOT OUT_ROOT

base="$OUT_ROOT/$TAG/$scene"
TAG="$TAG" bash "$REPO/script/train.sh" "${train_scene[@]}" "${common_flags[@]}"
TAG="$TAG" SCENES="$scene" bash "$REPO/script/infer.sh" "${common_flags[@]}"

for f in "${files[@]}"; do
  name="$(basename "$f" .yaml)"
  run="$OUT_ROOT/$name/$scene"
  mkdir -p "$run"
  sections="$("$PYTHON" -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1])) or {}))' "$f")"
  shared=(rgb)
  if [[ -z "$(echo "$sections" | tr ' ' '\n' | grep -v -x -E 'query|eval' || true)" ]]; then shared=(rgb instance mapping); fi
  for stage in "${shared[@]}"; do
    [[ -e "$run/$stage" ]] || ln -s "$base/$stage" "$run/$stage"
  done
  echo "== ablation $name (shares: ${shared[*]}) =="
  TAG="$name" bash "$REPO/script/train.sh" "${train_scene[@]}" "${common_flags[@]}" -c "$f"
  TAG="$name" SCENES="$scene" bash "$REPO/script/infer.sh" "${common_flags[@]}" -c "$f"
done

echo
printf '%-22s %8s %10s %9s\n' run mIoU mAcc@0.25 Acc@0.5
for tag in "$TAG" $(for f in "${files[@]}"; do basename "$f" .yaml; done); do
  csv="$OUT_ROOT/$tag/metrics.csv"
  if [[ -f "$csv" ]]; then awk -F, -v t="$tag" '$1=="mean"{printf "%-22s %8s %10s %9s\n", t, $3, $4, $5}' "$csv"; fi
done
