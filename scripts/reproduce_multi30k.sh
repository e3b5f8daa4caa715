#!/usr/bin/env bash
# The schedule behind the README's headline table: Multi30k en→de, dense
# transformer_multi30k vs structured_transformer_multi30k (default w=3, r=2),
# identical settings except attention, trained side by side (one thread each).
# Usage: scripts/reproduce_multi30k.sh [train|decode|all]   (env: MAX_UPDATE, OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/reproduce}
MAX_UPDATE=${MAX_UPDATE:-3500}
WARMUP=${WARMUP:-1000}
what=${1:-all}
DATA=runs/data/m30k
mkdir -p "$OUT"
"$PY" -m structmt.data.cli "$DATA" >"$OUT/prepare.log" 2>&1
BIN=$DATA/bin

train() {  # $1 = name, $2 = arch
  OMP_NUM_THREADS=1 "$PY" -m fairseq_cli.train "$BIN" --user-dir structmt --arch "$2" \
    --optimizer adam --adam-betas '(0.9,0.98)' --lr 0.005 --lr-scheduler inverse_sqrt \
    --warmup-updates "$WARMUP" --max-tokens 4096 --max-update "$MAX_UPDATE" --dropout 0.3 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --seed 1 --num-workers 0 \
    --save-dir "$OUT/$1/checkpoints" --no-epoch-checkpoints --save-interval-updates 500 \
    --keep-interval-updates 1 --disable-validation --log-interval 50 --log-format simple \
    >"$OUT/$1/train.log" 2>&1
}

if [[ $what == train || $what == all ]]; then
  mkdir -p "$OUT/dense" "$OUT/structured"
  train dense transformer_multi30k &
  train structured structured_transformer_multi30k &
  wait
fi
