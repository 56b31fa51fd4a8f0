#!/usr/bin/env bash
# Every GPU-side check and benchmark, in one call, on a bare GPU machine that has PyTorch and no network.
#
#   bash benchmarks/gpu.sh [extra bench.py flags, e.g. --compile or --quick]
#
# Run from anywhere; it works in the repository root. Nothing is installed: PYTHONPATH=src.
# Data: /tmp/cifar100-train.npz (or $DATA). If that file is missing but the 60 MB parts made by
# `split -b 60m` are in /tmp/cifar100-parts/ or .gpu-data/ (benchmarks/README.md says how to carry them),
# they are put together here and checked against the published sha256. Without data the benchmarks run on
# random images and the time-to-accuracy run is skipped.
# Results go to $OUT (default benchmarks/out): env.txt, gpu-check.{log,json}, bench-gpu.{md,json,log},
# ddp-gpu.{log,json} (torchrun on 1 and, with several GPUs, all of them).
# Exit status: 0 when the checks passed and the benchmark ran, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DATA="${DATA:-/tmp/cifar100-train.npz}"
SHA256=dfa8dc07e273c028f771d5a1fb7fdc784a4fb1bea64c65f7a564621b6081b424
t0=$(date +%s)

# ---- data: reassemble the parts if needed, check the checksum -------------------------------------
if [ ! -f "$DATA" ]; then
    for dir in /tmp/cifar100-parts .gpu-data; do
        if ls "$dir"/cifar100-train.npz.part-* >/dev/null 2>&1; then
            echo "== reassembling $DATA from $(ls "$dir"/cifar100-train.npz.part-* | wc -l) parts in $dir"
            cat $(ls "$dir"/cifar100-train.npz.part-* | sort) > "$DATA"
            break
        fi
    done
fi
DATA_ARGS=()
if [ -f "$DATA" ]; then
    if echo "$SHA256  $DATA" | sha256sum -c --quiet - 2>/dev/null; then
        echo "== data: $DATA (sha256 ok)"
        DATA_ARGS=(--data "$DATA")
    else
        echo "== data: $DATA does not match the published sha256; not used (time-to-accuracy skipped)"
    fi
else
    echo "== data: none at $DATA; random images, time-to-accuracy skipped"
fi

# ---- the machine ----------------------------------------------------------------------------------
{
    nvidia-smi || true
    "$PY" -c "import torch, platform; print('python', platform.python_version(), '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
    echo "cpu cores: $(nproc)"
} > "$OUT/env.txt" 2>&1
tail -n 2 "$OUT/env.txt"

# ---- correctness first ----------------------------------------------------------------------------
echo "== correctness checks (benchmarks/gpu_check.py)"
"$PY" benchmarks/gpu_check.py --device cuda --json "$OUT/gpu-check.json" 2>&1 | tee "$OUT/gpu-check.log"
check_rc=${PIPESTATUS[0]}

# ---- benchmarks -----------------------------------------------------------------------------------
echo "== benchmarks (benchmarks/bench.py --gpu ${DATA_ARGS[*]:-} $*)"
"$PY" benchmarks/bench.py --gpu ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/bench-gpu.json" --markdown "$OUT/bench-gpu.md" \
    "$@" 2>&1 | tee "$OUT/bench-gpu.log"
bench_rc=${PIPESTATUS[0]}

# ---- data parallel: the torchrun/DDP path (NCCL) on every GPU of the machine ----------------------
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
PROCS=1
[ "$NGPU" -gt 1 ] && PROCS="1,$NGPU"
echo "== data parallel (benchmarks/ddp.py --device cuda --procs $PROCS)"
"$PY" benchmarks/ddp.py --device cuda --procs "$PROCS" --model resnet18 --batch-size 512 --images 20480 \
    ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --sync-bn --json "$OUT/ddp-gpu.json" 2>&1 | tee "$OUT/ddp-gpu.log"
ddp_rc=${PIPESTATUS[0]}

echo "== done in $(( $(date +%s) - t0 )) s: checks exit $check_rc, benchmark exit $bench_rc, ddp exit $ddp_rc;" \
     "results in $OUT"
[ "$check_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$ddp_rc" -eq 0 ]
