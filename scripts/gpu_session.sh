#!/usr/bin/env bash
# One GPU session, in one call, on an air-gapped CUDA node (made for an H100 with Python 3.12,
# torch 2.11 + CUDA 13, Triton 3.6): install structmt, run the CUDA tests and the GPU benchmarks,
# and leave every result and a log in $OUT.
#
#   OUT=results/gpu scripts/gpu_session.sh            (from the checkout's root or anywhere)
#
# The call is bounded by SESSION_SECONDS (570 s, for a 10-minute call) and each step by its own
# *_SECONDS. Compiling (fairseq, FlexAttention, the Triton kernels) takes much of that: when the time
# is up the session stops and names the STEPS left; run those at once on the same, still warm,
# machine (the install is then skipped, compiled kernels are cached), e.g.
#   STEPS=install,test,attention scripts/gpu_session.sh;  then  STEPS=train,decode scripts/gpu_session.sh
#
# Seen on an H200 with 16 cores (2026-12-04, results/gpu/README.md): install 178 s (fairseq compiled
# there); the attention step measured 2 of its 4 lengths in its 180 s (compilation in the warm-ups),
# and a second call reached only T=16384 and part of T=32768 in 215 s: give it a call of its own.
#
# Steps, in order (STEPS picks some, comma-separated; default all):
#   install    scripts/install_offline.sh $WHEELHOUSE --python $PYTHON --tests (skipped when $PYTHON
#              already imports fairseq and this checkout's structmt; REINSTALL=1 forces it)
#   test       pytest -m cuda (the tests that need a GPU), stopping at the first failure
#   attention  structmt-bench attention --device cuda --dtype bfloat16  -> $OUT/bench_attention_cuda.json;
#              then, where `ncu` exists, an Nsight Compute profile of the Triton kernels alone at
#              T=16384 (achieved DRAM throughput and bytes)  -> $OUT/ncu_triton_T16384.csv
#              (a failing profile is reported, not fatal: counters may be locked on the node)
#   train      structmt-bench train --device cuda --bf16   -> $OUT/bench_train.json
#   decode     structmt-bench decode --device cuda         -> $OUT/bench_decode.json, with the
#              checkpoints DENSE_CKPT and STRUCT_CKPT (data-bin DECODE_DATA) or, without them, two
#              checkpoints trained here for DECODE_TRAIN_UPDATES updates (speed only: not translators)
# Everything printed also goes to $OUT/session.log. The session stops at the first failing step
# (or when its time is up) with a line saying which step, why, and how to go on; whatever was
# written stays. Then, back on the development machine: copy $OUT's files to results/gpu/ and run
# `structmt-bench report` (BENCHMARKS.md gets its GPU section).
#
# Environment (defaults in brackets):
#   OUT [results/gpu]  WHEELHOUSE [wheelhouse]  PYTHON [python3: the interpreter that has the node's torch]
#   GPU_VENV [unset: install into PYTHON's environment; set: a venv made from PYTHON (install_offline.sh
#     --venv); a venv made from a venv's python does not see that venv's torch: leave it unset there]
#   STEPS [install,test,attention,train,decode]  REINSTALL [0]
#   MULTI30K [$STRUCTMT_MULTI30K, else ../shared/data/multi30k or shared/data/multi30k]: the
#     Multi30k .gz files for train and decode (the node cannot download them)
#   time: SESSION_SECONDS [570] for the whole call; per step at most INSTALL_SECONDS [240],
#     TEST_SECONDS [150], ATTENTION_SECONDS [300], NCU_SECONDS [90], TRAIN_SECONDS [180], DECODE_SECONDS [150]
#   sizes: ATTN_LENGTHS [128,1024,16384,32768: the goals' lengths] ATTN_TOKENS [32768] ATTN_REPEATS [10]
#     ATTN_WARMUP [2] ATTN_IMPLS [all]; TRAIN_ARGS [--updates 100 --rounds 1 --doc-tokens 2048
#     --cross-window -1]; DECODE_ARGS [--repeats 1]; DECODE_TRAIN_UPDATES [150]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

OUT=${OUT:-results/gpu}
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
PYTHON=${PYTHON:-python3}
GPU_VENV=${GPU_VENV:-}
STEPS=${STEPS:-install,test,attention,train,decode}
REINSTALL=${REINSTALL:-0}
SESSION_SECONDS=${SESSION_SECONDS:-570}
INSTALL_SECONDS=${INSTALL_SECONDS:-240}
TEST_SECONDS=${TEST_SECONDS:-150}
ATTENTION_SECONDS=${ATTENTION_SECONDS:-300}
NCU_SECONDS=${NCU_SECONDS:-90}
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
DECODE_SECONDS=${DECODE_SECONDS:-150}
ATTN_LENGTHS=${ATTN_LENGTHS:-128,1024,16384,32768}
ATTN_TOKENS=${ATTN_TOKENS:-32768}
ATTN_REPEATS=${ATTN_REPEATS:-10}
ATTN_WARMUP=${ATTN_WARMUP:-2}
ATTN_IMPLS=${ATTN_IMPLS:-sdpa_flash,flex,triton,triton_kernel,gather}
TRAIN_ARGS=${TRAIN_ARGS:---updates 100 --rounds 1 --doc-tokens 2048 --cross-window -1}
DECODE_ARGS=${DECODE_ARGS:---repeats 1}
DECODE_TRAIN_UPDATES=${DECODE_TRAIN_UPDATES:-150}
WORK=$REPO/runs/gpu_session
START=$SECONDS
for step in ${STEPS//,/ }; do  # a misspelt step would be skipped in silence
    [[ $step =~ ^(install|test|attention|train|decode)$ ]] \
        || { echo "gpu_session: error: STEPS: unknown step '$step'; the steps: install,test,attention,train,decode" >&2; exit 2; }
done
STEPS=$(echo "$STEPS" | tr -d ' ')

mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/session.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

say() { echo "gpu_session: $*"; }
wants() { [[ ,$STEPS, == *",$1,"* ]]; }
summary() {
    say "written to $OUT:"
    find "$OUT" -maxdepth 1 -type f -printf '  %10s bytes  %f\n' | sort -k3
}
fail() {
    say "FAILED: $*"
    summary
    exit 1
}

# run NAME SECONDS COMMAND...: the command under a time limit (the smaller of SECONDS and the
# session's time left), stopping the session when it fails or runs out of time
run() {
    local name=$1 limit=$2 left rc
    shift 2
    left=$((SESSION_SECONDS - (SECONDS - START)))
    ((limit < left)) || limit=$left
    ((limit >= 20)) || fail "$name: less than 20s of its time are left (${left}s of the session's ${SESSION_SECONDS}s); go on in a new call with STEPS=$(remaining "$name")"
    say "== $name (at most ${limit}s): $*"
    set +e
    timeout --kill-after=15 "$limit" "$@"
    rc=$?
    set -e
    if ((rc == 124 || rc == 137)); then
        fail "$name ran out of its ${limit}s; raise its *_SECONDS or lower its sizes, then go on with STEPS=$(remaining "$name")"
    elif ((rc != 0)); then
        fail "$name exited with status $rc (its output is above, and in $LOG)"
    fi
    say "== $name done after $((SECONDS - START))s of the session"
}

# the steps from NAME's on (to go on after a failure)
remaining() {
    local all=(install test attention train decode) out="" on=0 s
    for s in "${all[@]}"; do
        [[ $1 == "$s"* ]] && on=1
        ((on)) && wants "$s" && out+=${out:+,}$s
    done
    echo "${out:-$1}"
}

commit=$(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo unknown)
[[ -z $(git -C "$REPO" status --porcelain --untracked-files=no 2> /dev/null) ]] || commit+="+dirty"
say "started $(date -u +%Y-%m-%dT%H:%M:%SZ) in $REPO at commit $commit; steps $STEPS; output $OUT"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || say "WARNING: nvidia-smi failed"
fi

# --- the Multi30k files train and decode need (this node cannot download them) ----------------------
if wants train || { wants decode && [[ -z ${DENSE_CKPT:-} ]]; }; then
    for dir in "${MULTI30K:-}" "${STRUCTMT_MULTI30K:-}" "$REPO/../shared/data/multi30k" "$REPO/shared/data/multi30k"; do
        if [[ -n $dir && -f $dir/train.en.gz ]]; then
            export STRUCTMT_MULTI30K=$dir
            break
        fi
    done
    [[ -n ${STRUCTMT_MULTI30K:-} && -f $STRUCTMT_MULTI30K/train.en.gz ]] \
        || fail "train/decode need the Multi30k .gz files (train.en.gz, ...): set MULTI30K to their folder, or put them in shared/data/multi30k"
    say "Multi30k from $STRUCTMT_MULTI30K"
fi

# --- install -------------------------------------------------------------------------------------
if [[ -n $GPU_VENV ]]; then
    PY=$GPU_VENV/bin/python
    INSTALL_ARGS=(--venv "$GPU_VENV" --python "$PYTHON")
else
    PY=$(command -v "$PYTHON") || fail "no interpreter '$PYTHON' (set PYTHON to the one with the node's torch)"
    PY=$(realpath -s "$PY")  # absolute, symbolic links kept (a venv's python is one)
    INSTALL_ARGS=(--python "$PY")
fi
installed() {
    [[ -x $PY ]] && "$PY" - "$REPO" << 'EOF' 2> /dev/null
import sys, fairseq, structmt
from pathlib import Path
sys.exit(0 if Path(structmt.__file__).resolve().parents[1] == Path(sys.argv[1]).resolve() else 1)
EOF
}
if wants install; then
    if installed && [[ $REINSTALL != 1 ]]; then
        say "install: $PY already has fairseq and this checkout's structmt (REINSTALL=1 reinstalls)"
    else
        [[ -d $WHEELHOUSE ]] \
            || fail "install: no wheelhouse '$WHEELHOUSE': make one with 'make wheelhouse PY=3.12' where pip works, copy it here, set WHEELHOUSE"
        [[ -x scripts/install_offline.sh ]] || fail "install: scripts/install_offline.sh is missing or not executable"
        # CUDA_HOME unset: fairseq's setup.py would compile CUDA extensions that nothing here uses;
        # STRUCTMT_NO_EXTENSION=1: structmt's C++ kernel serves CPU tensors only
        run install "$INSTALL_SECONDS" env -u CUDA_HOME STRUCTMT_NO_EXTENSION="${STRUCTMT_NO_EXTENSION:-1}" \
            scripts/install_offline.sh "$WHEELHOUSE" "${INSTALL_ARGS[@]}" --tests
    fi
fi
installed || fail "structmt is not installed in $PY (run with STEPS including install, and a WHEELHOUSE)"
"$PY" -c 'import torch' || fail "torch does not import in $PY (the error above)"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || fail "torch in $PY sees no CUDA device (nvidia-smi above?)"
"$PY" - << 'EOF'
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "not installed"
print(f"gpu_session: {torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}")
EOF

# --- the CUDA tests --------------------------------------------------------------------------------
if wants test; then
    run test "$TEST_SECONDS" "$PY" -m pytest -q -m cuda -x -p no:cacheprovider tests
fi

# --- the attention benchmark, and the Triton kernel's DRAM throughput -------------------------------
if wants attention; then
    run attention "$ATTENTION_SECONDS" "$PY" -m structmt.bench attention --device cuda --dtype bfloat16 \
        --lengths "$ATTN_LENGTHS" --tokens "$ATTN_TOKENS" --repeats "$ATTN_REPEATS" --warmup "$ATTN_WARMUP" \
        --impls "$ATTN_IMPLS" --out "$OUT/bench_attention_cuda.json"
    if command -v ncu > /dev/null; then
        # the custom op alone (no structure bookkeeping) at T=16384: 2 forward and 2 backward launches
        # are profiled; each line of the CSV is one kernel launch
        say "== ncu: Triton kernels at T=16384"
        set +e
        timeout --kill-after=15 "$NCU_SECONDS" ncu --csv --clock-control none --target-processes all -k 'regex:^_(fwd|bwd)_kernel' -c 6 \
            --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__bytes.sum.per_second,dram__throughput.avg.pct_of_peak_sustained_elapsed \
            "$PY" -m structmt.bench attention --device cuda --dtype bfloat16 --lengths 16384 --tokens "$ATTN_TOKENS" \
            --impls triton_kernel --repeats 1 --warmup 1 --no-memory --copy-mb 64 --out "$WORK/ncu_attention.json" \
            > "$OUT/ncu_triton_T16384.csv" 2> "$WORK/ncu.stderr"
        rc=$?
        set -e
        if ((rc != 0)); then
            say "WARNING: the ncu profile failed (exit $rc; not fatal); its last words:"
            tail -5 "$WORK/ncu.stderr" "$OUT/ncu_triton_T16384.csv"
        else
            grep -E '"(gpu__time_duration|dram__)' "$OUT/ncu_triton_T16384.csv" | cut -d, -f5,12- | head -20 || true
        fi
    else
        say "no ncu here: no DRAM-throughput profile"
    fi
fi

# --- training throughput ---------------------------------------------------------------------------
if wants train; then
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
    run train "$TRAIN_SECONDS" "$PY" -m structmt.bench train --device cuda --bf16 $TRAIN_ARGS \
        --work "$WORK/bench_train" --out "$OUT/bench_train.json"
fi

# --- beam-search decoding --------------------------------------------------------------------------
if wants decode; then
    if [[ -n ${DENSE_CKPT:-} || -n ${STRUCT_CKPT:-} ]]; then
        [[ -f ${DENSE_CKPT:-} && -f ${STRUCT_CKPT:-} && -d ${DECODE_DATA:-} ]] \
            || fail "decode: DENSE_CKPT and STRUCT_CKPT must be checkpoint files and DECODE_DATA their data-bin"
        DECODE_STEP_ARGS=(--dense "$DENSE_CKPT" --structured "$STRUCT_CKPT" --data-bin "$DECODE_DATA")
    else
        # two short-trained checkpoints, only to time decoding (fairseq-train resumes finished ones at once)
        cat > "$WORK/decode_checkpoints.sh" << EOF
set -euo pipefail
bin=\$("$PY" -c 'from structmt.data.prepare import prepare_multi30k; from structmt.paths import REPO_ROOT; print(prepare_multi30k(REPO_ROOT / "runs" / "data" / "multi30k_en_de"))' | tail -1)
for arch in transformer_multi30k structured_transformer_multi30k; do
    "$PY" -m fairseq_cli.train "\$bin" --user-dir "$REPO/structmt" --arch "\$arch" --save-dir "$WORK/decode/\$arch" \
        --optimizer adam --lr 0.0005 --max-tokens 8192 --max-update "$DECODE_TRAIN_UPDATES" --criterion label_smoothed_cross_entropy \
        --label-smoothing 0.1 --seed 1 --num-workers 0 --disable-validation --no-epoch-checkpoints --log-format simple \
        --log-interval 50 --required-batch-size-multiple 1 > "$WORK/decode_\$arch.log" 2>&1 \
        || { tail -20 "$WORK/decode_\$arch.log"; exit 1; }
    echo "checkpoint: $WORK/decode/\$arch/checkpoint_last.pt"
done
echo "\$bin" > "$WORK/decode/data_bin"
EOF
        mkdir -p "$WORK/decode"
        decode_start=$SECONDS
        run decode-checkpoints "$DECODE_SECONDS" bash "$WORK/decode_checkpoints.sh"
        DECODE_SECONDS=$((DECODE_SECONDS - (SECONDS - decode_start)))
        DECODE_STEP_ARGS=(--dense "$WORK/decode/transformer_multi30k/checkpoint_last.pt"
            --structured "$WORK/decode/structured_transformer_multi30k/checkpoint_last.pt"
            --data-bin "$(cat "$WORK/decode/data_bin")")
    fi
    # shellcheck disable=SC2086  # DECODE_ARGS is a list of options
    run decode "$DECODE_SECONDS" "$PY" -m structmt.bench decode --device cuda $DECODE_ARGS "${DECODE_STEP_ARGS[@]}" \
        --out "$OUT/bench_decode.json"
fi

say "all steps done ($STEPS) in $((SECONDS - START))s"
summary
