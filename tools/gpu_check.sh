#!/usr/bin/env bash
# One-call GPU validation (issue 17): build the extension for this machine's GPU, run every `gpu` test with
# SITM_REQUIRE_GPU=1, try TensorRT-RTX once if its wheels were carried, run `sitm-trt bench` (kernels, pipeline
# per preset at 1080p and 4K, the video path), and write the results to an output folder. Every stage is
# time-boxed and a failed stage does not stop the later ones. docs/gpu.md has the exact `device` call.
#
# Writes (at most 7 files, the device tool brings back 8): log.txt, report.json (per stage: status, seconds,
# exit code, note; test counts and failures; the TensorRT-RTX probe; the exit status), junit.xml (gpu tests),
# junit-trt.xml (only when TensorRT-RTX was tried), bench.json, nvidia-smi.txt, versions.txt.
# Exit status: 0 when every stage that ran passed (stages skipped on purpose -- --skip, --cpu, no TensorRT-RTX
# carried -- do not count; the TensorRT-RTX stage is a record and never counts), 1 otherwise, 2 for bad arguments.
set -u -o pipefail

usage() {
  cat <<'EOF'
usage: tools/gpu_check.sh [--out DIR] [--budget SECONDS] [--wheels DIR]... [--trt DIR]... [--arch CC]
                          [--skip STAGE]... [--python PY] [--cpu]

  --out DIR        where the report goes (default: $OUT, else ./gpu-check-out)
  --budget S       wall-clock budget of the whole script in seconds (default 480); each stage gets
                   min(its own cap, what is left minus 20 s), a stage with under 5 s left is not started
  --wheels DIR     a folder of wheels to install first with pip --target (repeatable; default: every
                   .gpu-carry/wheels-* folder that exists)
  --trt DIR        a folder holding the TensorRT-RTX wheels, whole or split into NAME.whl.part-* by
                   tools/gpu_prepare.sh --trt (repeatable; default: .gpu-stash and .gpu-carry/trt-* if they exist)
  --arch CC        CUDA architecture to build for, e.g. 90 (default: nvidia-smi's compute_cap of GPU 0)
  --skip STAGE     env, wheels, build, tests, trt, bench-kernels, bench-pipeline, bench-video (repeatable)
  --python PY      the Python to use (default: $PYTHON, else python3)
  --cpu            CPU mode (also SITM_GPU_SCRIPT_CPU=1): skip every stage that needs a GPU, write the report
EOF
}

die_usage() { echo "gpu_check.sh: error: $*" >&2; usage >&2; exit 2; }

OUTDIR="${OUT:-gpu-check-out}"
BUDGET=480
PY="${PYTHON:-python3}"
ARCH=""
CPU_MODE=0
[ "${SITM_GPU_SCRIPT_CPU:-0}" = "1" ] && CPU_MODE=1
WHEEL_DIRS=()
TRT_DIRS=()
SKIP=" "
STAGES="env wheels build tests trt bench-kernels bench-pipeline bench-video"

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || die_usage "--out needs a folder"; OUTDIR=$2; shift 2 ;;
    --budget) [ $# -ge 2 ] || die_usage "--budget needs seconds"
      [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 30 ] || die_usage "--budget must be a whole number of seconds >= 30, got '$2'"
      BUDGET=$2; shift 2 ;;
    --wheels) [ $# -ge 2 ] || die_usage "--wheels needs a folder"
      [ -d "$2" ] || die_usage "--wheels $2: no such folder"; WHEEL_DIRS+=("$2"); shift 2 ;;
    --trt) [ $# -ge 2 ] || die_usage "--trt needs a folder"
      [ -d "$2" ] || die_usage "--trt $2: no such folder"; TRT_DIRS+=("$2"); shift 2 ;;
    --arch) [ $# -ge 2 ] || die_usage "--arch needs a compute capability"
      [[ "$2" =~ ^[0-9]{2,3}[af]?$ ]] || die_usage "--arch must look like 90, 89 or 90a, got '$2'"; ARCH=$2; shift 2 ;;
    --skip) [ $# -ge 2 ] || die_usage "--skip needs a stage"
      case " $STAGES " in *" $2 "*) ;; *) die_usage "--skip: unknown stage '$2' (stages: $STAGES)" ;; esac
      SKIP="$SKIP$2 "; shift 2 ;;
    --python) [ $# -ge 2 ] || die_usage "--python needs an interpreter"; PY=$2; shift 2 ;;
    --cpu) CPU_MODE=1; shift ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
command -v "$PY" >/dev/null 2>&1 || die_usage "--python $PY: not found"
mkdir -p "$OUTDIR" || die_usage "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [ ${#WHEEL_DIRS[@]} -eq 0 ]; then
  for d in .gpu-carry/wheels-*; do [ -d "$d" ] && WHEEL_DIRS+=("$d"); done
fi
if [ ${#TRT_DIRS[@]} -eq 0 ]; then
  for d in .gpu-stash .gpu-carry/trt-*; do [ -d "$d" ] && TRT_DIRS+=("$d"); done
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sitm-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGES_TSV="$WORK/stages.tsv"
: > "$STAGES_TSV"
LOG="$OUTDIR/log.txt"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1 SITM_TRT_CACHE="$WORK/cache" PY REPO OUTDIR WORK
echo "gpu_check.sh: $(date -u +%FT%TZ) repo $REPO out $OUTDIR budget ${BUDGET}s cpu_mode=$CPU_MODE python $PY"

record() {  # name status seconds rc note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$STAGES_TSV"
  echo "=== stage $1: $2 (${3}s, rc $4) $5"
}

# run_stage NAME CAP NEEDS_GPU FUNCTION: runs the exported FUNCTION under `timeout -s INT` (pytest still
# writes its JUnit file on SIGINT), then KILL 20 s later; records passed / failed / timeout.
run_stage() {
  local name=$1 cap=$2 needs_gpu=$3 fn=$4
  case "$SKIP" in *" $name "*) record "$name" skipped 0 - "skipped with --skip"; return 0 ;; esac
  if [ "$needs_gpu" = 1 ] && [ "$CPU_MODE" = 1 ]; then record "$name" skipped 0 - "needs a GPU: skipped in CPU mode"; return 0; fi
  local left=$((DEADLINE - $(date +%s) - 20))
  local t=$((cap < left ? cap : left))
  if [ "$t" -lt 5 ]; then record "$name" out-of-time 0 - "not started: the ${BUDGET}s budget is spent"; return 0; fi
  echo "=== stage $name: start $(date -u +%T), timeout ${t}s"
  local t0 rc
  t0=$(date +%s)
  NOTE_FILE="$WORK/$name.note" timeout -s INT -k 20 "$t" bash -c "$fn"
  rc=$?
  local secs=$(( $(date +%s) - t0 )) note=""
  [ -f "$WORK/$name.note" ] && note=$(tr '\n\t' '  ' < "$WORK/$name.note")
  if [ "$rc" = 0 ]; then record "$name" passed "$secs" "$rc" "$note"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record "$name" timeout "$secs" "$rc" "stopped after ${t}s. $note"
  elif [ "$rc" = 77 ]; then record "$name" skipped "$secs" - "$note"
  else record "$name" failed "$secs" "$rc" "$note"
  fi
}

note() { echo "$*" >> "$NOTE_FILE"; }
export -f note

stage_env() {
  {
    if command -v nvidia-smi >/dev/null 2>&1; then
      nvidia-smi
      nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
    else
      echo "nvidia-smi: not found"
    fi
  } > "$OUTDIR/nvidia-smi.txt" 2>&1
  {
    echo "date: $(date -u +%FT%TZ)"; echo "uname: $(uname -a)"; echo "cpus: $(nproc)"
    echo "git: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo 'no .git in this copy')"
    echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    "$PY" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "numpy", "pybind11", "scikit-build-core", "cmake", "ninja", "onnx", "onnxruntime", "pytest",
             "pytest-timeout", "opencv-python-headless", "av", "openexr", "safetensors", "tqdm", "sitm-trt",
             "tensorrt", "tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu13-libs"):
    try:
        print(f"{name}: {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
try:
    import torch
    print("torch.version.cuda:", torch.version.cuda, "| cuda available:", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"device 0: {p.name}, cc {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.1f} GiB")
except Exception as err:  # noqa: BLE001
    print("torch:", err)
EOF
    echo "nvcc: $( (command -v nvcc || ls /usr/local/cuda/bin/nvcc) 2>/dev/null | head -1)"
    (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>/dev/null | tail -2
    echo "cmake: $(cmake --version 2>/dev/null | head -1)"; echo "ninja: $(ninja --version 2>/dev/null)"
    echo "c++: $( (c++ --version || g++ --version) 2>/dev/null | head -1)"
  } > "$OUTDIR/versions.txt" 2>&1
  cat "$OUTDIR/versions.txt"
  head -20 "$OUTDIR/nvidia-smi.txt"
  grep -q "not found" "$OUTDIR/nvidia-smi.txt" && { note "nvidia-smi not found"; [ "${CPU_MODE}" = 1 ] || return 1; }
  return 0
}

stage_wheels() {
  if [ -z "${WHEEL_LIST:-}" ]; then note "no carried wheels (.gpu-carry/wheels-*): nothing to install"; return 77; fi
  mkdir -p "$WORK/site"
  local d ok=0
  for d in $WHEEL_LIST; do
    note "$d: $(cd "$d" && ls *.whl 2>/dev/null | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$d"/*.whl || ok=1
  done
  return $ok
}

stage_build() {
  local arch=$ARCH
  if [ -z "$arch" ]; then
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  fi
  [ -n "$arch" ] || { note "no GPU architecture: pass --arch"; return 1; }
  command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"
  note "CUDA architectures ${arch}-real"
  # Asked for by name: ON makes a missing nvcc fail this stage instead of giving a CPU-only build (the default,
  # AUTO, would follow nvidia-smi too); one architecture costs about a fifth of the CUDA compile of every
  # supported one (README, "Building with or without CUDA").
  SITM_WITH_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${arch}-real" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip install --no-index --disable-pip-version-check --no-build-isolation --no-deps -e "$REPO" \
    || { note "pip install -e . failed"; return 1; }  # --no-index: no network there; a retry would eat the cap
  "$PY" - "$arch" <<'EOF' || return 1
import json, sys
import sitm_trt
b = sitm_trt.build_info()
print(json.dumps(b))
arch = sys.argv[1]
if not b.get("cuda") or arch not in str(b.get("cuda_architectures")):
    sys.exit(f"the extension was not built with CUDA for {arch}: {b}")
EOF
}

stage_tests() {
  SITM_REQUIRE_GPU=1 "$PY" -m pytest -m gpu -p no:cacheprovider -q -rfE --continue-on-collection-errors \
    --junitxml="$OUTDIR/junit.xml" -o junit_family=xunit2 "$REPO/tests"
}

stage_trt() {
  local d f base wheels=()
  mkdir -p "$WORK/trt"
  for d in ${TRT_LIST:-}; do
    for f in "$d"/*.whl; do [ -f "$f" ] && wheels+=("$f"); done
    for f in "$d"/*.whl.part-* "$d"/*.whl.sha256; do [ -f "$f" ] && cp -n "$f" "$WORK/trt/"; done
  done
  for f in "$WORK"/trt/*.whl.part-*; do  # NAME.whl.part-00, -01, ...: the glob sorts them
    [ -f "$f" ] || continue
    base=$(basename "${f%.part-*}")
    cat "$f" >> "$WORK/trt/$base" && rm "$f"
  done
  for f in "$WORK"/trt/*.whl; do
    [ -f "$f" ] || continue
    base=$(basename "$f")
    if [ -f "$WORK/trt/$base.sha256" ] && ! (cd "$WORK/trt" && sha256sum -c "$base.sha256" >/dev/null); then
      note "$base: the parts do not make the recorded wheel (checksum differs): were all parts carried?"; return 1
    fi
    wheels+=("$WORK/trt/$base")
  done
  if [ ${#wheels[@]} -eq 0 ]; then note "no TensorRT-RTX wheels carried (docs/gpu.md, 'TensorRT-RTX'): not tried"; return 77; fi
  note "wheels: $(for w in "${wheels[@]}"; do basename "$w"; done | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/trt-site" "${wheels[@]}" \
    || { note "pip could not install the TensorRT-RTX wheels"; return 1; }
  export PYTHONPATH="$WORK/trt-site${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" "$REPO/tools/trt_rtx_probe.py" "$WORK/trt-rtx.json"
  note "probe exit $?"
  if [ "$CPU_MODE" = 1 ]; then note "CPU mode: the TensorRT tests were not run"; return 0; fi
  "$PY" -c 'import json, sitm_trt; print(json.dumps(sitm_trt.info(), indent=2, default=str))' > "$WORK/trt-info.json" 2>&1
  cat "$WORK/trt-info.json"
  # what the library does with TensorRT-RTX importable on this GPU (skips count as failures here too)
  SITM_REQUIRE_GPU=1 "$PY" -m pytest -p no:cacheprovider -q -rfE --junitxml="$OUTDIR/junit-trt.xml" \
    -o junit_family=xunit2 "$REPO/tests/test_runtime_gpu.py" "$REPO/tests/test_engine.py"
}

stage_bench_kernels() {
  local rc=0
  "$PY" -m sitm_trt.tools.bench kernels --device cuda --repeats 50 --warmup 5 --json "$WORK/bench-kernels-float32.json" || rc=1
  "$PY" -m sitm_trt.tools.bench kernels --device cuda --repeats 50 --warmup 5 --dtype float16 \
    --json "$WORK/bench-kernels-float16.json" || rc=1
  return $rc
}

stage_bench_pipeline() {
  local rc=0 preset
  for preset in compact fast paper; do  # one process per preset: a failure (memory) costs one preset only
    "$PY" -m sitm_trt.tools.bench pipeline --backend torch:cuda:fp32 torch:cuda:fp16 --preset "$preset" \
      --resolution 1080p 4k --repeats 20 --warmup 3 --json "$WORK/bench-pipeline-$preset.json" \
      || { rc=1; note "pipeline $preset failed"; }
  done
  return $rc
}

stage_bench_video() {
  "$PY" -m sitm_trt.tools.bench video --resolution 1080p --frames 48 --format hdr10 --device cuda:0 \
    --json "$WORK/bench-video.json"
}

export -f stage_env stage_wheels stage_build stage_tests stage_trt stage_bench_kernels stage_bench_pipeline stage_bench_video
export CPU_MODE ARCH WHEEL_LIST="${WHEEL_DIRS[*]:-}" TRT_LIST="${TRT_DIRS[*]:-}"

run_stage env 30 0 stage_env
run_stage wheels 90 0 stage_wheels
[ -d "$WORK/site" ] && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
run_stage build 240 1 stage_build
run_stage tests 200 1 stage_tests
run_stage trt 100 0 stage_trt  # in CPU mode: the wheels and the probe only
run_stage bench-kernels 60 1 stage_bench_kernels
run_stage bench-pipeline 150 1 stage_bench_pipeline
run_stage bench-video 60 1 stage_bench_video

# The report: report.json and bench.json, written atomically, and a summary at the end of the output.
"$PY" - "$STAGES_TSV" "$OUTDIR" "$WORK" "$CPU_MODE" "$BUDGET" "$START" <<'EOF'
import glob, json, os, sys, time
import xml.etree.ElementTree as ET

tsv, out, work, cpu_mode, budget, start = sys.argv[1:]

def atomic(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def junit(path):
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return {"error": f"unreadable: {err}"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    bad = []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        for kind, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            el = case.find(kind)
            if el is not None:
                counts[key] += 1
                if kind != "skipped" and len(bad) < 60:
                    msg = (el.get("message") or el.text or "").strip().splitlines()
                    bad.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": kind,
                                "message": msg[0][:300] if msg else ""})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "not_passed": bad}

stages = []
with open(tsv) as f:
    for line in f:
        name, status, secs, rc, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
        stages.append({"stage": name, "status": status, "seconds": int(secs), "rc": rc, "note": note})
bench = {"kernels": {dt: load(os.path.join(work, f"bench-kernels-{dt}.json")) for dt in ("float32", "float16")},
         "pipeline": {p: load(os.path.join(work, f"bench-pipeline-{p}.json")) for p in ("compact", "fast", "paper")},
         "video": load(os.path.join(work, "bench-video.json"))}
counted = [s for s in stages if s["stage"] != "trt" and s["status"] not in ("passed", "skipped")]
report = {"format": "sitm-trt-gpu-check/1", "cpu_mode": cpu_mode == "1", "budget_s": int(budget),
          "seconds": round(time.time() - int(start)), "stages": stages,
          "tests": junit(os.path.join(out, "junit.xml")), "tensorrt_rtx": {
              "probe": load(os.path.join(work, "trt-rtx.json")), "info": load(os.path.join(work, "trt-info.json")),
              "tests": junit(os.path.join(out, "junit-trt.xml"))},
          "bench_files": sorted(os.path.basename(p) for p in glob.glob(os.path.join(work, "bench-*.json"))),
          "passed": not counted}
atomic(os.path.join(out, "report.json"), report)
if report["bench_files"]:
    atomic(os.path.join(out, "bench.json"), bench)
print("\n| stage | status | s | note |\n|---|---|---:|---|")
for s in stages:
    print(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['note'][:160]} |")
t = report["tests"]
if t and "tests" in t:
    print(f"\ngpu tests: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped "
          f"of {t['tests']}")
    for b in t["not_passed"][:20]:
        print(f"  {b['kind']}: {b['test']}: {b['message'][:200]}")
probe = report["tensorrt_rtx"]["probe"]
if probe:
    print("tensorrt-rtx: " + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in probe["steps"].items()))
trt = [s for s in stages if s["stage"] == "trt" and s["status"] != "skipped"]
print(f"\n{'PASSED' if report['passed'] else 'FAILED'}: " + (", ".join(f"{s['stage']} {s['status']}" for s in counted)
      or "every stage that ran passed") + (f" (trt {trt[0]['status']}: a record, not counted)" if trt else "")
      + f" ({report['seconds']} s; files in {out})")
sys.exit(0 if report["passed"] else 1)
EOF
rc=$?
[ -f "$OUTDIR/report.json" ] || { echo "gpu_check.sh: the report could not be written"; rc=1; }
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log is complete before the script returns
exit $rc
