# Shared settings and option parsing of script/*.sh (sourced, not run). Paths come from environment
# variables with repo-relative defaults, so the scripts work from any directory.
#
# Environment (every script):
#   DATA_ROOT       scenes: $DATA_ROOT/<scene>/{images,sparse/0,language_features} (default $SYNTH_ROOT)
#   LABEL_ROOT      LERF-OVS labels: $LABEL_ROOT/<scene>/... (default $DATA_ROOT/label)
#   OUT_ROOT, TAG   runs go to $OUT_ROOT/$TAG/<scene> (default <repo>/output, default)
#   SYNTH_ROOT      where the generated default scene lives (default <repo>/data/synthetic)
#   DEFAULT_SCENE   its name (default "default")
#   CKPT_DIR        SAM / OpenCLIP weights for real preprocessing (default <repo>/ckpts)
#   PYTHON          the interpreter (default python3)
#   EXTRA_ARGFILES  space-separated argument files that train.sh and infer.sh (and so every call of
#                   ablate.sh) apply to every python call, after the built-in ones
#                   (arguments/synthetic_cpu.yaml for the default scene) and before the command
#                   line's, e.g. tiny schedules for a smoke test without changing the documented
#                   command: EXTRA_ARGFILES="tests/readme_tiny.yaml" bash script/train.sh
#                   (paths resolved like -c files; no spaces inside a path)
#   SYNTH_ARGS      extra arguments of the generator of the default scene (train.sh without a scene),
#                   e.g. SYNTH_ARGS="--views 8 --width 64 --height 48 --objects 3" for a tiny one
#                   (see python -m preprocess.synthetic --help; split on spaces)
#
# Options (every script): -c FILE / --config FILE / --config=FILE (repeatable) and positional
# argument files; -h / --help. A relative argument-file path is looked up in the current directory
# first, then in the repo root.
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
EXTRA_ARGFILES="${EXTRA_ARGFILES:-}"                  # see above
SYNTH_ARGS="${SYNTH_ARGS:-}"                          # see above

# relative paths in these variables are relative to the directory the script was run from
abspath() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
SYNTH_ROOT="$(abspath "$SYNTH_ROOT")"; DATA_ROOT="$(abspath "$DATA_ROOT")"; LABEL_ROOT="$(abspath "$LABEL_ROOT")"
OUT_ROOT="$(abspath "$OUT_ROOT")"; CKPT_DIR="$(abspath "$CKPT_DIR")"

die() { echo "error: $*" >&2; exit 2; }

# the header comment of the script that was run (its usage)
usage() {
  local script="${BASH_SOURCE[${#BASH_SOURCE[@]}-1]}"
  awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$script"
}

# resolve_argfile PATH -> RESOLVED (absolute). Absolute paths are taken as they are; a relative one
# is looked up in the current directory first, then in the repo root. A missing file is an error
# naming the path(s) tried.
resolve_argfile() {
  local f="$1"
  if [[ "$f" == /* ]]; then
    [[ -f "$f" ]] || die "argument file not found: $f"
    RESOLVED="$f"
  elif [[ -n "$f" && -f "$PWD/$f" ]]; then
    RESOLVED="$PWD/$f"
  elif [[ -n "$f" && -f "$REPO/$f" ]]; then
    RESOLVED="$REPO/$f"
  else
    die "argument file not found: '$f' (tried $PWD/$f and $REPO/$f)"
  fi
  RESOLVED="$(cd "$(dirname "$RESOLVED")" && pwd)/$(basename "$RESOLVED")"
}

# parse_args NLEAD "$@": the command line of a script.
#   -c FILE, --config FILE, --config=FILE   an argument file (repeatable)
#   -h, --help                              print the script's header comment, exit 0
#   --                                      everything after it is positional
# Sets LEAD (the first NLEAD positionals, e.g. train.sh's scene), POS_FILES (the other positionals:
# argument files), OPT_FILES (the -c files) and ARGFILES (POS_FILES and OPT_FILES in command-line
# order); every file resolved with resolve_argfile. An unknown option is an error.
parse_args() {
  local nlead="$1" a
  shift
  LEAD=(); POS_FILES=(); OPT_FILES=(); ARGFILES=()
  local positional=()
  while [[ $# -gt 0 ]]; do
    a="$1"; shift
    case "$a" in
      -h|--help) usage; exit 0 ;;
      -c|--config)
        [[ $# -gt 0 ]] || die "$a needs an argument file (see --help)"
        resolve_argfile "$1"; shift
        OPT_FILES+=("$RESOLVED"); ARGFILES+=("$RESOLVED") ;;
      --config=*)
        resolve_argfile "${a#--config=}"
        OPT_FILES+=("$RESOLVED"); ARGFILES+=("$RESOLVED") ;;
      --) positional=("$@"); set -- ;;
      -?*) die "unknown option: $a (see --help)" ;;
      *) positional=("$a") ;;
    esac
    for a in "${positional[@]}"; do
      if [[ ${#LEAD[@]} -lt $nlead ]]; then
        LEAD+=("$a")
      else
        resolve_argfile "$a"
        POS_FILES+=("$RESOLVED"); ARGFILES+=("$RESOLVED")
      fi
    done
    positional=()
  done
}

# $EXTRA_ARGFILES -> EXTRA (resolved paths)
extra_argfiles() {
  local f
  EXTRA=()
  for f in $EXTRA_ARGFILES; do
    resolve_argfile "$f"
    EXTRA+=("$RESOLVED")
  done
}

# argfile list -> "-c file" flags in CONFIG_FLAGS (each must exist; relative paths as resolve_argfile)
config_flags() {
  local f
  CONFIG_FLAGS=()
  for f in "$@"; do
    resolve_argfile "$f"
    CONFIG_FLAGS+=(-c "$RESOLVED")
  done
}
