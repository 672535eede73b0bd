#!/usr/bin/env bash
# One-call GPU training (issue 16, item 4): on a bare GPU machine with no network, build a data set from the
# carried HDR sources on all cores, train with bf16 autocast for a wall-clock budget, and export weights + card
# + log to the output folder. The same script runs on the CPU with tiny sizes (--cpu or SITM_GPU_SCRIPT_CPU=1),
# which tests/test_gpu_scripts.py does so that it cannot rot. docs/gpu.md has the exact `device` call.
#
# Writes to the output folder (7 files; the device tool brings back at most 8 of at most 16 MiB each):
#   NAME.safetensors, NAME.json (the card), NAME-fp32.onnx, NAME-fp16.onnx   (python -m sitm_training.export)
#   run.tar      the run folder: card.json, log.csv, val/ sheets, ckpt/model.safetensors + state.json, and
#                ckpt/optim.pt + disc.safetensors when the whole stays under 15 MiB (else the summary says so)
#   summary.json what was built (data set counts, seconds), trained (steps, seconds, why it stopped), exported
#   log.txt      everything printed
# Exit status: 0 when data, training and export all succeeded, 1 otherwise, 2 for bad arguments.
set -u -o pipefail

usage() {
  cat <<'EOF'
usage: tools/gpu_train.sh [options] [-- MORE_TRAIN_OPTIONS...]
  --cache DIR          sitm-trt cache holding hdr/ (default .gpu-carry, filled by tools/gpu_prepare.sh)
  --out DIR            output folder (default: $OUT, else ./gpu-train-out)
  --work DIR           data set and run folder (default: a new folder under $TMPDIR or /tmp)
  --budget S           wall-clock budget of the whole script in seconds (default 510; CPU mode 120): the
                       training gets what the data build leaves, minus 75 s for start-up and export
  --n N                train + val samples to build (default 3000; CPU mode 10)
  --size S             stored sample size (default 256; CPU mode 64)
  --seed N             data and training seed (default 0)
  --workers N          data build processes (default: all cores)
  --loader-workers N   training DataLoader workers (default: cores - 2, at most 12; CPU mode 0)
  --build-seconds S    the data build's time limit (default 180)
  --preset P           compact or fast (paper: 96 MiB of weights cannot come back through the device tool)
  --fusion F           paper or residual (default paper)
  --boost B            residual fusion: down or all (default down; docs/model.md, "The boost")
  --init FILE          start from these weights (.safetensors), e.g. python/sitm_trt/weights/default.safetensors
  --responses "K ..."  the data build's camera response families, one quoted list (default: the builder's
                       srgb gamma filmic emor), e.g. "srgb gamma filmic emor hable" (docs/data.md)
  --stage1-steps N     (default: the trainer's; CPU mode 1)
  --stage2-steps N     (default: the trainer's; CPU mode 1)
  --batch N            (default: the trainer's; CPU mode 2)
  --crop N             (default: the trainer's; CPU mode 32)
  --name NAME          exported file names (default gpu-PRESET)
  --allow-procedural   build even when the cache holds no real HDR sources (procedural scenes only)
  --python PY          (default: $PYTHON, else python3)
  --cpu                CPU mode (also SITM_GPU_SCRIPT_CPU=1): device cpu, tiny data set and step counts
  Anything after -- goes to python -m sitm_training.train as it is (e.g. -- --no-gan --hdr-clip 0.5).
EOF
}
die_usage() { echo "gpu_train.sh: error: $*" >&2; echo "(tools/gpu_train.sh -h for help)" >&2; exit 2; }
int_arg() { [[ "$2" =~ ^[0-9]+$ ]] || die_usage "$1 must be a whole number, got '$2'"; }

CPU_MODE=0
[ "${SITM_GPU_SCRIPT_CPU:-0}" = "1" ] && CPU_MODE=1
CACHE=.gpu-carry; OUTDIR="${OUT:-gpu-train-out}"; WORKDIR=""; BUDGET=""; N=""; SIZE=""; SEED=0; WORKERS=""
LOADER=""; BUILD_SECONDS=180; PRESET=compact; FUSION=paper; BOOST=down; INIT=""; S1=""; S2=""; BATCH=""; CROP=""; NAME=""
ALLOW_PROC=0; PY="${PYTHON:-python3}"; EXTRA=(); RESPONSES=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --cpu) CPU_MODE=1; shift ;;
    --allow-procedural) ALLOW_PROC=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    --cache|--out|--work|--budget|--n|--size|--seed|--workers|--loader-workers|--build-seconds|--preset|--fusion|--boost|\
    --init|--stage1-steps|--stage2-steps|--batch|--crop|--name|--python|--responses)
      [ $# -ge 2 ] || die_usage "$1 needs a value"
      case "$1" in
        --cache) CACHE=$2 ;; --out) OUTDIR=$2 ;; --work) WORKDIR=$2 ;; --init) INIT=$2 ;; --python) PY=$2 ;;
        --budget) int_arg "$1" "$2"; BUDGET=$2 ;; --n) int_arg "$1" "$2"; N=$2 ;; --size) int_arg "$1" "$2"; SIZE=$2 ;;
        --seed) int_arg "$1" "$2"; SEED=$2 ;; --workers) int_arg "$1" "$2"; WORKERS=$2 ;;
        --loader-workers) int_arg "$1" "$2"; LOADER=$2 ;; --build-seconds) int_arg "$1" "$2"; BUILD_SECONDS=$2 ;;
        --stage1-steps) int_arg "$1" "$2"; S1=$2 ;; --stage2-steps) int_arg "$1" "$2"; S2=$2 ;;
        --batch) int_arg "$1" "$2"; BATCH=$2 ;; --crop) int_arg "$1" "$2"; CROP=$2 ;;
        --preset) case "$2" in compact|fast) PRESET=$2 ;;
                    paper) die_usage "--preset paper: its float32 weights (96 MiB) exceed what the device tool brings back (16 MiB a file, 64 MiB in all)" ;;
                    *) die_usage "--preset must be compact or fast, got '$2'" ;; esac ;;
        --fusion) case "$2" in paper|residual) FUSION=$2 ;; *) die_usage "--fusion must be paper or residual, got '$2'" ;; esac ;;
        --boost) case "$2" in down|all) BOOST=$2 ;; *) die_usage "--boost must be down or all, got '$2'" ;; esac ;;
        --name) [[ "$2" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "--name may hold letters, digits, '.', '_' and '-' only"; NAME=$2 ;;
        --responses) [[ "$2" =~ ^[a-z]+( [a-z]+)*$ ]] || die_usage "--responses takes one quoted list of family names, got '$2'"
                     read -r -a RESPONSES <<< "$2" ;;
      esac
      shift 2 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
command -v "$PY" >/dev/null 2>&1 || die_usage "--python $PY: not found"
[ -d "$CACHE" ] || die_usage "--cache $CACHE: no such folder (fill it with tools/gpu_prepare.sh and carry it)"
n_sources=$(find "$CACHE/hdr" -type f 2>/dev/null | wc -l)
if [ "$n_sources" -eq 0 ] && [ "$ALLOW_PROC" = 0 ]; then
  die_usage "$CACHE/hdr holds no HDR sources: carry them (tools/gpu_prepare.sh, docs/gpu.md) or pass --allow-procedural"
fi
[ -z "$INIT" ] || [ -f "$INIT" ] || die_usage "--init $INIT: no such file"
if [ "$CPU_MODE" = 1 ]; then
  DEVICE=cpu; : "${BUDGET:=120}" "${N:=10}" "${SIZE:=64}" "${WORKERS:=1}" "${LOADER:=0}" "${S1:=1}" "${S2:=1}"
  : "${BATCH:=2}" "${CROP:=32}"
  TRAIN_FIXED=(--log-every 1 --val-every 2 --ckpt-every 1 --val-images 1 --disc-width 8 --disc-max-width 16)
  BUILD_FIXED=(--val-fraction 0.2 --n-test 0)
else
  DEVICE=cuda; cores=$(nproc); : "${BUDGET:=510}" "${N:=3000}" "${SIZE:=256}" "${WORKERS:=$cores}"
  : "${LOADER:=$(( cores > 14 ? 12 : (cores > 2 ? cores - 2 : 0) ))}"
  TRAIN_FIXED=()
  BUILD_FIXED=(--n-test 0)
fi
[ "$BUDGET" -ge 30 ] || die_usage "--budget must be at least 30 seconds"
: "${NAME:=gpu-$PRESET}"
[ -n "$INIT" ] && INIT=$(cd "$(dirname "$INIT")" && pwd)/$(basename "$INIT")
CACHE=$(cd "$CACHE" && pwd)
mkdir -p "$OUTDIR" || die_usage "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [ -z "$WORKDIR" ]; then WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/sitm-gpu-train.XXXXXX"); else mkdir -p "$WORKDIR"; fi
WORKDIR=$(cd "$WORKDIR" && pwd)

START=$(date +%s); DEADLINE=$((START + BUDGET))
LOG="$OUTDIR/log.txt"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO/python:$REPO/training${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_train.sh: $(date -u +%FT%TZ) device $DEVICE budget ${BUDGET}s cache $CACHE ($n_sources files in hdr/) work $WORKDIR out $OUTDIR"
STAGES="$WORKDIR/stages.tsv"; : > "$STAGES"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STAGES"; echo "=== $1: $2 (${3}s) $4"; }
left() { echo $((DEADLINE - $(date +%s))); }
ok=1

# 1. the machine, and the carried wheels (openexr: the Blender sources are .exr)
if [ "$DEVICE" = cuda ]; then nvidia-smi || echo "nvidia-smi failed"; fi
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
for whl_dir in "$CACHE"/wheels-core; do
  if [ -d "$whl_dir" ] && ls "$whl_dir"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORKDIR/site" \
      "$whl_dir"/*.whl && export PYTHONPATH="$PYTHONPATH:$WORKDIR/site"
    break
  fi
done

# 2. the data set
t0=$(date +%s)
t=$(( BUILD_SECONDS < $(left) - 90 ? BUILD_SECONDS : $(left) - 90 ))
if [ "$t" -lt 10 ]; then
  record data out-of-time 0 "no time left for the data build"; ok=0
else
  timeout -s TERM -k 20 "$t" "$PY" -m sitm_training.data build --out "$WORKDIR/data" --n "$N" --size "$SIZE" \
    --seed "$SEED" --workers "$WORKERS" --cache "$CACHE" --no-progress "${BUILD_FIXED[@]}" \
    ${RESPONSES[@]+--responses "${RESPONSES[@]}"} | tee "$WORKDIR/build.json"
  rc=$?
  if [ "$rc" = 0 ]; then record data passed $(( $(date +%s) - t0 )) "$(tail -1 "$WORKDIR/build.json")"
  else record data failed $(( $(date +%s) - t0 )) "rc $rc (124: the ${t}s limit)"; ok=0; fi
fi

# 3. training: --max-seconds is what is left minus start-up and export; `timeout` only as a backstop
if [ "$ok" = 1 ]; then
  t0=$(date +%s)
  max=$(( $(left) - 75 ))
  if [ "$max" -lt 5 ]; then
    record train out-of-time 0 "no time left for training"; ok=0
  else
    args=(--data "$WORKDIR/data" --out "$WORKDIR/run" --preset "$PRESET" --fusion "$FUSION" --boost "$BOOST" --device "$DEVICE"
          --seed "$SEED" --workers "$LOADER" --max-seconds "$max")
    [ -n "$INIT" ] && args+=(--init "$INIT")
    [ -n "$S1" ] && args+=(--stage1-steps "$S1")
    [ -n "$S2" ] && args+=(--stage2-steps "$S2")
    [ -n "$BATCH" ] && args+=(--batch "$BATCH")
    [ -n "$CROP" ] && args+=(--crop "$CROP")
    echo "python -m sitm_training.train ${args[*]} ${TRAIN_FIXED[*]} ${EXTRA[*]}"
    timeout -s TERM -k 30 $((max + 60)) "$PY" -m sitm_training.train "${args[@]}" "${TRAIN_FIXED[@]}" "${EXTRA[@]}"
    rc=$?
    if [ "$rc" = 0 ] && [ -f "$WORKDIR/run/ckpt/model.safetensors" ]; then
      record train passed $(( $(date +%s) - t0 )) "max-seconds $max"
    else
      record train failed $(( $(date +%s) - t0 )) "rc $rc (124: stopped by the backstop)"; ok=0
    fi
  fi
fi

# 4. export: weights + ONNX + card straight into the output folder (each file written atomically)
if [ -f "$WORKDIR/run/ckpt/model.safetensors" ] && [ -f "$WORKDIR/run/card.json" ]; then
  t0=$(date +%s)
  if "$PY" -m sitm_training.export --run "$WORKDIR/run" --out "$OUTDIR/$NAME"; then
    record export passed $(( $(date +%s) - t0 )) "$OUTDIR/$NAME.*"
  else
    record export failed $(( $(date +%s) - t0 )) ""; ok=0
  fi
else
  record export skipped 0 "no checkpoint to export"; ok=0
fi

# 5. run.tar and summary.json
"$PY" - "$WORKDIR" "$OUTDIR" "$NAME" "$STAGES" "$ok" "$START" <<'EOF'
import json, os, sys, tarfile, time

work, out, name, stages_tsv, ok, start = sys.argv[1:]
run = os.path.join(work, "run")
LIMIT = 15 << 20
summary = {"format": "sitm-trt-gpu-train/1", "ok": ok == "1", "seconds": round(time.time() - int(start)),
           "stages": [dict(zip(("stage", "status", "seconds", "note"), line.rstrip("\n").split("\t")))
                      for line in open(stages_tsv)]}
try:
    summary["data"] = json.loads(open(os.path.join(work, "build.json")).read().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    summary["data"] = None
try:
    card = json.load(open(os.path.join(run, "card.json")))
    summary["train"] = {k: card.get(k) for k in ("step", "train_seconds", "stopped", "losses", "validation", "device",
                                                   "torch", "perceptual")}
    summary["train"]["config"] = {k: card["config"].get(k) for k in ("preset", "fusion", "boost", "init", "stage1_steps",
                                                                       "stage2_steps", "batch", "crop", "max_seconds")}
except (OSError, ValueError, KeyError):
    summary["train"] = None
if os.path.isdir(run):
    files = []
    for base, _, names in os.walk(run):
        for n in sorted(names):
            p = os.path.join(base, n)
            files.append((os.path.relpath(p, run), os.path.getsize(p)))
    optional = {"ckpt/optim.pt", "ckpt/disc.safetensors"}
    keep = [f for f in files if f[0] not in optional and not f[0].endswith(".tmp")]
    total = sum(s for _, s in keep)
    left_out = []
    for rel, size in sorted((f for f in files if f[0] in optional), key=lambda f: f[1]):
        if total + size <= LIMIT:
            keep.append((rel, size)); total += size
        else:
            left_out.append(f"{rel} ({size / 2**20:.1f} MiB)")
    if total > LIMIT:  # validation sheets are the only thing that grows with steps: keep the newest
        sheets = sorted(f for f in keep if f[0].startswith("val/"))
        while total > LIMIT and sheets:
            rel, size = sheets.pop(0)
            keep.remove((rel, size)); total -= size; left_out.append(rel)
    tmp = os.path.join(out, "run.tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        for rel, _ in sorted(keep):
            tar.add(os.path.join(run, rel), arcname=rel)
    os.replace(tmp, os.path.join(out, "run.tar"))
    summary["run_tar"] = {"files": sorted(r for r, _ in keep), "left_out": left_out,
                          "MiB": round(os.path.getsize(os.path.join(out, "run.tar")) / 2**20, 2)}
summary["exported"] = sorted(f for f in os.listdir(out) if f.startswith(name))
with open(os.path.join(out, "summary.json.tmp"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
os.replace(os.path.join(out, "summary.json.tmp"), os.path.join(out, "summary.json"))
print("\n| stage | status | s | note |\n|---|---|---:|---|")
for s in summary["stages"]:
    print(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s.get('note', '')[:160]} |")
t = summary["train"] or {}
print(f"\ntrained {t.get('step')} steps in {t.get('train_seconds') or 0:.0f} s ({(t.get('stopped') or {}).get('reason', 'step count reached')}); "
      f"validation {t.get('validation')}; exported {summary['exported']}")
EOF
[ -f "$OUTDIR/summary.json" ] || ok=0
echo "gpu_train.sh: $([ "$ok" = 1 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - START )) s; files in $OUTDIR"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
[ "$ok" = 1 ]
