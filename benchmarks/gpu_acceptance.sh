#!/usr/bin/env bash
# The GPU acceptance run: one command on one H100/H200-class GPU, from the repository root.
#
#   benchmarks/gpu_acceptance.sh [--dry-run] [RESULTS_DIR]
#
# It runs, in this order, each part under a time limit inside one overall budget (9 minutes
# on a GPU: KIT_GPU_BUDGET_S=510 by default; a part past its time gets
# 15 s to stop, and the summary takes about a second):
#   1. tests     pytest -m gpu tests/test_gpu_acceptance.py          -> junit.xml, measurements/
#   2. bench-0.5b  python -m kit bench-gpu --config configs/qwen2.5-0.5b.json --no-qlora   (bf16 rows)
#   3. bench-7b    python -m kit bench-gpu --config configs/qwen2.5-7b.json  (bf16 and 4-bit QLoRA rows;
#                  500 rows to predict, the per-row loop on 50, to stay inside the budget)
#   4. benchmarks/gpu_summary.py: merges them into summary.json and summary.md, and prints the latter.
# Each part's output is also kept in RESULTS_DIR/<part>.log. Exit status: 0 when every part
# finished and no test failed, else 1.
#
# RESULTS_DIR: the argument, else $KIT_GPU_OUT, else runs/gpu-acceptance.
# --dry-run (or KIT_GPU_DRY_RUN=1): the same steps on the CPU with configs/tiny-qwen2.json and tiny
# sizes, CUDA hidden, so the gpu tests are collected and each skips; tests/test_gpu_acceptance.py
# runs this in every test run. Its figures say nothing about a GPU.
# Other settings: KIT_PYTHON (default .venv/bin/python when present, else python), KIT_GPU_BUDGET_S,
# KIT_GPU_BENCH_7B_ARGS (extra bench-7b options, replacing "--rows 500 --loop-rows 50"; empty: bench-gpu's own).
set -euo pipefail

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

dry_run=${KIT_GPU_DRY_RUN:-0}
out=${KIT_GPU_OUT:-runs/gpu-acceptance}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done
[ "$dry_run" = 0 ] || [ "$dry_run" = 1 ] || { echo "error: KIT_GPU_DRY_RUN must be 0 or 1" >&2; exit 2; }

mkdir -p "$out"
out=$(cd "$out" && pwd)                 # relative to where it was called from
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

py=${KIT_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python; fi
fi

# this script's own files from an earlier run; nothing else in the folder is touched
rm -rf "$out/measurements" "$out/pytest-tmp"
rm -f "$out"/{parts.tsv,notes.txt,device.txt,junit.xml,bench-0.5b.json,bench-7b.json,summary.json,summary.md}
rm -f "$out"/{tests,bench-0.5b,bench-7b}.log
: > "$out/parts.tsv"
: > "$out/notes.txt"

if [ "$dry_run" = 1 ]; then
    mode=dry-run
    export CUDA_VISIBLE_DEVICES=""      # the gpu tests skip even on a machine with a GPU
    small=configs/tiny-qwen2.json
    big=configs/tiny-qwen2.json
    device=(--device cpu --steps 2 --batch-size 2 --rows 4 --max-length 64 --peak-tflops 0.1)
    read -r -a big_extra <<< "${KIT_GPU_BENCH_7B_ARGS:-}"
    budget=${KIT_GPU_BUDGET_S:-300}
    limits=(120 120 120)
    echo "dry run on the CPU: configs/tiny-qwen2.json stands in for both Qwen2.5 configs" >> "$out/notes.txt"
else
    mode=gpu
    small=configs/qwen2.5-0.5b.json
    big=configs/qwen2.5-7b.json
    device=(--device cuda)
    read -r -a big_extra <<< "${KIT_GPU_BENCH_7B_ARGS---rows 500 --loop-rows 50}"
    budget=${KIT_GPU_BUDGET_S:-510}
    limits=(240 120 300)
    if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "error: torch sees no CUDA GPU here; benchmarks/gpu_acceptance.sh --dry-run rehearses on the CPU" >&2
        exit 2
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 \
            > "$out/device.txt" || true
    fi
fi

qlora=()
if ! "$py" -c "import bitsandbytes" >/dev/null 2>&1; then
    qlora=(--no-qlora)
    echo "bitsandbytes does not import: bench-gpu runs with --no-qlora (no 4-bit rows)" >> "$out/notes.txt"
fi

started=$(date +%s.%N)
deadline=$(( ${started%.*} + budget ))

# part NAME LIMIT_S SIGNAL COMMAND...: runs COMMAND under min(LIMIT_S, what is left of the budget),
# sent SIGNAL when the time is up (INT for pytest: it stops and still writes its junit file), its
# output to the terminal and NAME.log; appends a line to parts.tsv (exit 124: out of time)
part() {
    local name=$1 limit=$2 signal=$3 left t0 t1 rc seconds
    shift 3
    left=$(( deadline - $(date +%s) ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -le 0 ]; then
        printf '%s\tnot run\t0\t0\t%s\n' "$name" "$*" >> "$out/parts.tsv"
        echo "== $name: not run, the ${budget} s budget is spent"
        return 0
    fi
    echo "== $name (at most ${limit} s): $*"
    t0=$(date +%s.%N)
    set +e
    timeout -s "$signal" -k 15 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    t1=$(date +%s.%N)
    seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" != 0 ] && awk -v s="$seconds" -v l="$limit" 'BEGIN { exit !(s >= l) }'; then rc=124; fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$seconds" "$limit" "$*" >> "$out/parts.tsv"
    echo "== $name: exit $rc"
}

part tests "${limits[0]}" INT \
    env KIT_GPU_ACCEPTANCE_OUT="$out" "$py" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml "$out/junit.xml" --basetemp "$out/pytest-tmp" \
    tests/test_gpu_acceptance.py
rm -rf "$out/pytest-tmp"
part bench-0.5b "${limits[1]}" TERM \
    "$py" -m kit bench-gpu --config "$small" --no-qlora "${device[@]}" --out "$out/bench-0.5b.json"
part bench-7b "${limits[2]}" TERM \
    "$py" -m kit bench-gpu --config "$big" "${qlora[@]}" "${device[@]}" "${big_extra[@]}" --out "$out/bench-7b.json"

wall=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo
"$py" benchmarks/gpu_summary.py --out "$out" --mode "$mode" --wall-s "$wall" --budget-s "$budget"
