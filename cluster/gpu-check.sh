#!/usr/bin/env bash
# A GPU node's acceptance run (issue 18): is ark-dist correct there, and how fast is it.
#
#   bash cluster/gpu-check.sh OUT [PARTS...]      PARTS: tests step data memory (default: all four)
#
# Each part writes OUT/<part>.log (and the benches OUT/<part>*.json); the parts are separate so a
# short lease can run them in turns. PY picks the interpreter (default: .venv/bin/python if there,
# else python3); the environment must already hold requirements-dev.txt's packages.
#   tests    the gpu-marked tests: NCCL rank, bf16/fp16 training, nvJPEG decode, render, export  (~4 min)
#   step     the Ark step, Swin-B at 224 in bf16: ark-dist on a Ray Train rank against a plain
#            autocast loop, then both compiled; FLOPs and the share of the bf16 peak  (~4 min)
#   data     the rank's intake with 2 loader processes: JPEG decode in the loader against on the
#            GPU, img/s and CPU-seconds per image; the loader per process count  (~2 min)
#   memory   the largest micro-batch per GPU, ZeRO 0 and 2, with and without activation
#            checkpointing: Swin-B at 224 and Ark+'s Swin-L at 768  (~4 min)
set -uo pipefail
out=${1:?usage: gpu-check.sh OUT [tests|step|data|memory ...]}
shift
parts=${*:-tests step data memory}
for part in $parts; do
  case $part in tests|step|data|memory) ;; *) echo "error: unknown part $part (tests, step, data, memory)" >&2; exit 2 ;; esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."  # the checkout's root: launch.py, tests/, .venv
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1
status=0
run() {  # run NAME CMD...: the command's output in OUT/NAME.log, its exit status remembered
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$out/$name.log"
  "$@" 2>&1 | tee -a "$out/$name.log"
  local code=${PIPESTATUS[0]}
  [ "$code" = 0 ] || { echo "== $name failed with exit status $code" | tee -a "$out/$name.log"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true
for part in $parts; do
  case $part in
    tests)
      run tests "$PY" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider --durations=15 -q ;;
    step)
      run step "$PY" launch.py bench step --precision bf16 --batch 128 --json "$out/step.json"
      run step "$PY" launch.py bench step --precision bf16 --batch 128 --compile --json "$out/step-compiled.json" ;;
    data)
      run data "$PY" launch.py bench data --workers 0,2 --decode loader,device --load-sizes 256 --batch 64 \
        --batches 20 --images 256 --json "$out/data.json" ;;
    memory)
      run memory "$PY" launch.py bench memory --probes 32,64,128 --json "$out/memory-swin-b.json"
      run memory "$PY" launch.py bench memory --backbone swin_large_patch4_window12_384 \
        --backbone-kwargs '{"img_size": 768}' --image-size 768 --probes 2,4,8 --json "$out/memory-swin-l-768.json" ;;
  esac
done
exit $status
