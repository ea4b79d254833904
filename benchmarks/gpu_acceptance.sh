#!/usr/bin/env bash
# gpu_acceptance.sh: prove gpucnn's GPU path on a fresh GPU machine in at most 8 minutes, with one command.
#
# Needs on that machine: python3 with numpy, cupy (the wheel of its CUDA major version), PyTorch with CUDA and
# pytest; g++ for the device-op count (the emulated device); no network, no install of gpucnn (the tree is
# used in place through PYTHONPATH).
#
# Data travels inside the tree: Fashion-MNIST's four .gz files (31 MB) in benchmarks/data/fashion-mnist, a
# git-ignored folder. Put them there BEFORE copying the tree to the GPU machine, e.g. on Debian/Ubuntu:
#     sudo apt-get install dataset-fashion-mnist
#     mkdir -p benchmarks/data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz benchmarks/data/fashion-mnist/
# (a copy tool that skips git-ignored files must be told to carry benchmarks/data).
#
# Run from anywhere:   bash benchmarks/gpu_acceptance.sh
# Stages, each under its own `timeout` so that one failure or hang hides nothing of the others:
#   env      GPU, driver, versions; `gpucnn info` (compiles every kernel, prints each compile time)
#   pytest   pytest -m gpu: the CUDA variants of the kernel, layer, gradient, network, optimizer and
#            checkpoint tests, and the emulator-strictness tests run against real CuPy
#   train    LeNet-5, 3 epochs of Fashion-MNIST on the GPU, test accuracy >= 87%; then --resume to epoch 4
#   bench    images/s of a training step, LeNet-5 b128 and the AlexNet-style net b32 and b256: gpucnn on the GPU
#            in each of PRECISIONS (fp32, tf32, bf16: `gpucnn bench --precision`), gpucnn on the CPU (fp32),
#            PyTorch on the same GPU in the same precisions (benchmarks/torch_bench.py --precision: TF32 flags,
#            bf16 autocast)
#   ops      device ops per training step (`gpucnn bench --device emulated --count-ops`)
# then a summary (benchmarks/acceptance_summary.py) a person reads in ten seconds; logs and summary.txt in
# $OUT. Exit code 0 when every stage passed, 1 otherwise.
#
# Settings (environment; the defaults are the acceptance run): PYTHON (python3), DEVICE (cuda), TORCH_DEVICE
# (cuda), OUT (benchmarks/acceptance-out), DATA (benchmarks/data/fashion-mnist), STAGES ("env pytest train
# bench ops"), time limits in seconds T_ENV T_PYTEST T_TRAIN T_BENCH_GPU T_BENCH_CPU T_BENCH_TORCH T_OPS (sum
# 475 s: bench-gpu and bench-torch have 70 and 40 s for 3 cases x 3 precisions, 9 gpucnn processes and 3
# torch ones, taken from pytest, 150, and train, 100), PYTEST_ARGS (tests), TRAIN_ARGS (extra train options), MIN_ACC (0.87), BENCH_CASES ("lenet5:128
# alexnet_style:32 alexnet_style:256"), PRECISIONS ("fp32 tf32 bf16"), BENCH_STEPS (20), CPU_STEPS (3),
# OPS_ARGS. tests/test_gpu_acceptance.py
# dry-runs everything but CUDA with DEVICE=emulated TORCH_DEVICE=cpu and small limits.
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PYTHON=${PYTHON:-python3}
export DEVICE=${DEVICE:-cuda} TORCH_DEVICE=${TORCH_DEVICE:-cuda}
export OUT=${OUT:-$ROOT/benchmarks/acceptance-out}
export DATA=${DATA:-$ROOT/benchmarks/data/fashion-mnist}
STAGES=${STAGES:-env pytest train bench ops}
T_ENV=${T_ENV:-40} T_PYTEST=${T_PYTEST:-150} T_TRAIN=${T_TRAIN:-100}
T_BENCH_GPU=${T_BENCH_GPU:-70} T_BENCH_CPU=${T_BENCH_CPU:-45} T_BENCH_TORCH=${T_BENCH_TORCH:-40} T_OPS=${T_OPS:-30}
export PYTEST_ARGS=${PYTEST_ARGS:-tests} TRAIN_ARGS=${TRAIN_ARGS:-} MIN_ACC=${MIN_ACC:-0.87}
export BENCH_CASES=${BENCH_CASES:-lenet5:128 alexnet_style:32 alexnet_style:256}
export PRECISIONS=${PRECISIONS:-fp32 tf32 bf16}
export BENCH_STEPS=${BENCH_STEPS:-20} CPU_STEPS=${CPU_STEPS:-3} OPS_ARGS=${OPS_ARGS:-}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset GPUCNN_DEVICE GPUCNN_DEBUG
mkdir -p "$OUT"
: > "$OUT/results.tsv"

stage_env() {
    echo "# machine"; uname -srm; echo "cores: $(nproc)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
    else
        echo "nvidia-smi: not found"
    fi
    "$PYTHON" - <<'PY'
import platform, importlib
print(f"python {platform.python_version()}")
for name in ("numpy", "cupy", "torch", "pytest"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:
        print(f"{name} unavailable ({type(e).__name__}: {e})")
try:
    import cupy
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"cupy sees {rt.getDeviceCount()} GPU(s); 0: {name}, compute {props['major']}.{props['minor']}; "
          f"CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}")
except Exception as e:
    print(f"cupy GPU query failed ({type(e).__name__}: {e})")
try:
    import torch
    print(f"torch CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
except Exception:
    pass
PY
    local info
    info=$("$PYTHON" -m gpucnn info 2>&1) || { echo "$info"; return 1; }
    echo "$info"
    if [ "$DEVICE" = cuda ]; then
        grep -q "^CUDA: usable" <<<"$info" || { echo "CHECK: CUDA is not usable"; return 1; }
    fi
    ! grep -q "FAILED" <<<"$info" || { echo "CHECK: a kernel failed to compile"; return 1; }
}

stage_pytest() {
    # shellcheck disable=SC2086
    "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -rfE --durations=10 $PYTEST_ARGS
}

last_metrics() {  # $OUT/lenet5/metrics.jsonl as "epochs last-accuracy last-accuracy-in-percent"
    "$PYTHON" -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; \
print(','.join(str(r['epoch']) for r in rows), rows[-1]['test_acc'], f\"{100 * rows[-1]['test_acc']:.2f}%\")" \
        "$OUT/lenet5/metrics.jsonl"
}

stage_train() {
    rm -rf "$OUT/lenet5"
    # shellcheck disable=SC2086
    "$PYTHON" -m gpucnn train --model lenet5 --dataset fashion-mnist --data-dir "$DATA" --no-download \
        --device "$DEVICE" --epochs 3 --seed 0 --out "$OUT/lenet5" --log-every 30 $TRAIN_ARGS || return 1
    read -r epochs acc pct <<<"$(last_metrics)"
    echo "CHECK: LeNet-5 test accuracy $pct after 3 epochs (needs >= $MIN_ACC)"
    "$PYTHON" -c "import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)" "$acc" "$MIN_ACC" \
        || { echo "CHECK: accuracy below $MIN_ACC"; return 1; }
    "$PYTHON" -m gpucnn train --resume --out "$OUT/lenet5" --epochs 4 --device "$DEVICE" --data-dir "$DATA" \
        --no-download --log-every 30 || return 1
    read -r epochs acc pct <<<"$(last_metrics)"
    echo "CHECK: $pct after --resume to epoch 4 (epochs in metrics.jsonl: $epochs)"
    [ "$epochs" = "1,2,3,4" ] || { echo "CHECK: --resume did not continue to epoch 4"; return 1; }
}

bench_cases() {  # bench_cases COMMAND...: run COMMAND --model M --batch-size B for each case of BENCH_CASES
    local case status=0
    for case in $BENCH_CASES; do
        "$@" --model "${case%%:*}" --batch-size "${case##*:}" || status=1
    done
    return $status
}

bench_precisions() {  # bench_precisions COMMAND...: bench_cases COMMAND --precision P for each of PRECISIONS
    local precision status=0
    for precision in $PRECISIONS; do
        bench_cases "$@" --precision "$precision" || status=1
    done
    return $status
}

stage_bench_gpu() {
    bench_precisions "$PYTHON" -m gpucnn bench --device "$DEVICE" --steps "$BENCH_STEPS" --warmup 3
}

stage_bench_cpu() {
    bench_cases "$PYTHON" -m gpucnn bench --device cpu --steps "$CPU_STEPS" --warmup 1
}

stage_bench_torch() {
    # shellcheck disable=SC2086
    bench_cases "$PYTHON" benchmarks/torch_bench.py --device "$TORCH_DEVICE" --steps "$BENCH_STEPS" --warmup 3 \
        --precision $PRECISIONS
}

stage_ops() {
    # shellcheck disable=SC2086
    "$PYTHON" -m gpucnn bench --device emulated --count-ops $OPS_ARGS
}

export -f stage_env stage_pytest last_metrics stage_train bench_cases bench_precisions stage_bench_gpu stage_bench_cpu \
    stage_bench_torch stage_ops

run_stage() {  # run_stage NAME LIMIT FUNCTION: run FUNCTION under `timeout`, log it, record its outcome
    local name=$1 limit=$2 fn=$3 start rc status
    echo "== $name (limit ${limit} s) ..."
    start=$(date +%s)
    timeout --kill-after=5 "$limit" bash -c "$fn" >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=PASS ;;
        124|137) status=TIMEOUT ;;
        *) status=FAIL ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" "$limit" >>"$OUT/results.tsv"
    echo "== $name: $status ($(( $(date +%s) - start )) s; log $OUT/$name.log)"
    if [ "$status" != PASS ]; then tail -n 12 "$OUT/$name.log" | sed 's/^/   | /'; fi
}

for stage in $STAGES; do
    case $stage in
        env) run_stage env "$T_ENV" stage_env ;;
        pytest) run_stage pytest "$T_PYTEST" stage_pytest ;;
        train) run_stage train "$T_TRAIN" stage_train ;;
        bench) run_stage bench-gpu "$T_BENCH_GPU" stage_bench_gpu
               run_stage bench-cpu "$T_BENCH_CPU" stage_bench_cpu
               run_stage bench-torch "$T_BENCH_TORCH" stage_bench_torch ;;
        ops) run_stage ops "$T_OPS" stage_ops ;;
        *) echo "unknown stage $stage (expected env pytest train bench ops)"; exit 2 ;;
    esac
done

"$PYTHON" benchmarks/acceptance_summary.py "$OUT" | tee "$OUT/summary.txt"
! grep -qv "	PASS	" "$OUT/results.tsv"
