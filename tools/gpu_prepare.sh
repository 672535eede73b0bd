#!/usr/bin/env bash
# Fill the git-ignored folder .gpu-carry/ on THIS (CPU, networked) machine with what the bare GPU machine lacks,
# and check that every `device` call of docs/gpu.md stays under the tool's 64 MiB (working tree + carried paths):
#   .gpu-carry/hdr/           the fetched real HDR sources (python -m sitm_training.data fetch), for gpu_train.sh
#   .gpu-carry/wheels-core/   openexr (cp312 wheel): .exr I/O, for both scripts
#   .gpu-carry/wheels-test/   av and colour-science (wheels): the video and transfer tests (their gpu tests
#                             too) and `sitm-trt bench video`, for gpu_check.sh
#   .gpu-carry/trt-N/         with --trt: the TensorRT-RTX wheels, the 91 MiB libs wheel split into parts that
#                             travel in separate staging calls (docs/gpu.md, "TensorRT-RTX")
# usage: tools/gpu_prepare.sh [--cache DIR] [--trt] [--python PY]
set -eu -o pipefail

usage() {
  cat <<'EOF'
usage: tools/gpu_prepare.sh [--cache DIR] [--trt] [--python PY]
  --cache DIR   the sitm-trt cache holding hdr/ (default: $SITM_TRT_CACHE, else ~/.cache/sitm-trt); fetched
                there first (python -m sitm_training.data fetch) when it holds no HDR sources
  --trt         also download the TensorRT-RTX wheels and split them into .gpu-carry/trt-N parts
  --python PY   the Python whose pip downloads the wheels (default: $PYTHON, else python3)
EOF
}
die() { echo "gpu_prepare.sh: error: $*" >&2; exit 2; }

CACHE="${SITM_TRT_CACHE:-$HOME/.cache/sitm-trt}"
PY="${PYTHON:-python3}"
TRT=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --cache) [ $# -ge 2 ] || die "--cache needs a folder"; CACHE=$2; shift 2 ;;
    --trt) TRT=1; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY=$2; shift 2 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
git check-ignore -q .gpu-carry/x || die ".gpu-carry/ is not git-ignored here (add /.gpu-carry/ to .gitignore)"
MIB=$((1 << 20))
LIMIT=$((64 * MIB))   # the device tool's limit for the working tree plus the carried paths
TARGET=$((62 * MIB))  # what this script aims for: 2 MiB of room for edits made before the call

# 1. the HDR sources
if ! find "$CACHE/hdr" -type f 2>/dev/null | grep -q .; then
  echo "no HDR sources in $CACHE/hdr: fetching them (python -m sitm_training.data fetch --cache $CACHE)"
  PYTHONPATH="$REPO/python:$REPO/training${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m sitm_training.data fetch --cache "$CACHE"
fi
rm -rf .gpu-carry/hdr.tmp
mkdir -p .gpu-carry
cp -a "$CACHE/hdr" .gpu-carry/hdr.tmp
rm -rf .gpu-carry/hdr
mv .gpu-carry/hdr.tmp .gpu-carry/hdr
echo "HDR sources: $(find .gpu-carry/hdr -type f | wc -l) files from $CACHE/hdr"

# 2. wheels for the GPU machine's Python 3.12 (versions: the ones installed here, which the tests ran with)
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
download() {  # folder requirement...
  local dir=$1; shift
  mkdir -p "$dir"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
fresh_dir() { rm -rf "$1"; mkdir -p "$1"; }
fresh_dir .gpu-carry/wheels-core
download .gpu-carry/wheels-core "openexr==$(version openexr)"
fresh_dir .gpu-carry/wheels-test
download .gpu-carry/wheels-test "av==$(version av)"
fresh_dir .gpu-carry/wheels-colour  # carried only when it fits (section 5): tests/test_transfer.py imports it
download .gpu-carry/wheels-colour "colour-science==$(version colour-science)"

# 3. the working tree that travels with every call: tracked and untracked-not-ignored files
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | sort -zu \
  | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
[ -d shared ] && tree_bytes=$((tree_bytes + $(du -sb shared | cut -f1)))
bytes() { du -sb "$@" | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

# 4. TensorRT-RTX: the bindings wheel (1 MiB) travels with the check call, the libs wheel in parts
for d in .gpu-carry/trt-*; do [ -d "$d" ] && rm -rf "$d"; done
CHECK_CARRY=".gpu-carry/wheels-core .gpu-carry/wheels-test"
STAGING=()
if [ "$TRT" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  download "$tmp" "tensorrt-rtx-cu13-bindings==$(version tensorrt-rtx-cu13-bindings)" \
    "tensorrt-rtx-cu13-libs==$(version tensorrt-rtx-cu13-libs)"
  mkdir -p .gpu-carry/trt-0
  mv "$tmp"/tensorrt_rtx_cu13_bindings-*.whl .gpu-carry/trt-0/
  CHECK_CARRY="$CHECK_CARRY .gpu-carry/trt-0"
  libs=$(ls "$tmp"/tensorrt_rtx_cu13_libs-*.whl)
  size=$(stat -c %s "$libs")
  room=$((TARGET - tree_bytes))
  [ "$room" -gt $((4 * MIB)) ] || die "the working tree ($(mib "$tree_bytes") MiB) leaves no room for TensorRT-RTX parts"
  n=$(( (size + room - 1) / room ))
  part=$(( (size + n - 1) / n ))
  name=$(basename "$libs")
  (cd "$tmp" && sha256sum "$name" > "$name.sha256")
  split -b "$part" -d -a 2 "$libs" "$tmp/$name.part-"
  i=1
  for p in "$tmp/$name".part-*; do
    mkdir -p ".gpu-carry/trt-$i"
    mv "$p" ".gpu-carry/trt-$i/"
    cp "$tmp/$name.sha256" ".gpu-carry/trt-$i/"
    STAGING+=(".gpu-carry/trt-$i")
    i=$((i + 1))
  done
  echo "TensorRT-RTX: $name ($(mib "$size") MiB) split into ${#STAGING[@]} parts of <= $(mib "$part") MiB"
fi

# 5. what each call sends
status=0
check() {  # label, carried paths...
  local label=$1; shift
  local total=$((tree_bytes + $(bytes "$@")))
  local verdict=ok
  [ "$total" -le "$LIMIT" ] || { verdict="OVER the 64 MiB limit"; status=1; }
  printf '  %-28s %6s MiB  %s  carry: %s\n' "$label" "$(mib "$total")" "$verdict" "$*"
}
echo "working tree that travels: $(mib "$tree_bytes") MiB"
echo "per call (working tree + carry):"
for s in "${STAGING[@]}"; do check "TensorRT-RTX staging $s" "$s"; done
if [ $((tree_bytes + $(bytes $CHECK_CARRY .gpu-carry/wheels-colour))) -le "$TARGET" ]; then
  CHECK_CARRY="$CHECK_CARRY .gpu-carry/wheels-colour"
else
  echo "colour-science left out of the check call (no room): tests/test_transfer.py will fail at collection"
fi
# shellcheck disable=SC2086
check "gpu_check.sh" $CHECK_CARRY
check "gpu_train.sh" .gpu-carry/hdr .gpu-carry/wheels-core
[ "$status" = 0 ] || echo "gpu_prepare.sh: a call is over the limit: carry less (docs/gpu.md)" >&2
exit $status
