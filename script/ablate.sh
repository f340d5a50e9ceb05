#!/usr/bin/env bash
# Run every ablation argument file (arguments/ablations/*.yaml, or those given) on one scene and print
# one table of metrics.
#
#   bash script/ablate.sh [scene] [ablation.yaml ...]
#
# Each ablation runs in $OUT_ROOT/<ablation name>/<scene>. Stages an ablation does not change are
# shared with the base run ($OUT_ROOT/$TAG/<scene>, trained first if needed) through symbolic links:
# the 3DGS stage always, the instance field and mapping when the file only changes query/eval settings.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

scene="${1:-}"
[[ $# -gt 0 ]] && shift
files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=("$REPO"/arguments/ablations/*.yaml)
train_scene=("$scene")
if [[ -z "$scene" ]]; then scene="$DEFAULT_SCENE"; DATA_ROOT="$SYNTH_ROOT"; LABEL_ROOT="$SYNTH_ROOT/label"; train_scene=(); fi
export DATA_ROOT LABEL_ROOT OUT_ROOT

base="$OUT_ROOT/$TAG/$scene"
TAG="$TAG" bash "$REPO/script/train.sh" "${train_scene[@]}"
TAG="$TAG" SCENES="$scene" bash "$REPO/script/infer.sh"

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
  TAG="$name" bash "$REPO/script/train.sh" "${train_scene[@]}" "$f"
  TAG="$name" SCENES="$scene" bash "$REPO/script/infer.sh" "$f"
done

echo
printf '%-22s %8s %10s %9s\n' run mIoU mAcc@0.25 Acc@0.5
for tag in "$TAG" $(for f in "${files[@]}"; do basename "$f" .yaml; done); do
  csv="$OUT_ROOT/$tag/metrics.csv"
  [[ -f "$csv" ]] && awk -F, -v t="$tag" '$1=="mean"{printf "%-22s %8s %10s %9s\n", t, $3, $4, $5}' "$csv"
done
