# Shared settings of script/*.sh (sourced, not run). Paths come from environment variables with
# repo-relative defaults, so the scripts work from any directory.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SYNTH_ROOT="${SYNTH_ROOT:-$REPO/data/synthetic}"     # where the generated default scene lives
DEFAULT_SCENE="${DEFAULT_SCENE:-default}"             # its name
DATA_ROOT="${DATA_ROOT:-$SYNTH_ROOT}"                 # scenes: $DATA_ROOT/<scene>/{images,sparse,language_features}
LABEL_ROOT="${LABEL_ROOT:-$DATA_ROOT/label}"          # LERF-OVS labels: $LABEL_ROOT/<scene>/...
OUT_ROOT="${OUT_ROOT:-$REPO/output}"                  # runs: $OUT_ROOT/$TAG/<scene>
TAG="${TAG:-default}"
CKPT_DIR="${CKPT_DIR:-$REPO/ckpts}"                   # SAM / OpenCLIP weights for real preprocessing
CPU_ARGFILE="$REPO/arguments/synthetic_cpu.yaml"      # short schedules for the default scene on CPU

# argfile list -> "-c file" flags (each must exist)
config_flags() {
  local f
  CONFIG_FLAGS=()
  for f in "$@"; do
    [[ -f "$f" ]] || { echo "error: argument file not found: $f" >&2; exit 2; }
    CONFIG_FLAGS+=(-c "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
  done
}
