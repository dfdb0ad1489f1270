#!/usr/bin/env bash
# `make demo`: the pipeline on the embedded corpus, offline, on CPU. Stages are added as they land.
set -euo pipefail
OUT=${PGOLF_DEMO_OUT:-runs/demo}
TRAIN_SECONDS=${PGOLF_DEMO_TRAIN_SECONDS:-90}
mkdir -p "$OUT"
echo "== pgolf demo: output in $OUT"

echo "== 1/6 prepare data (embedded corpus: 143 validation + 1,400 training documents, SP1024 tokenizer)"
pgolf data prepare --docs default --val-docs 143 --vocab-size 1024 --out "$OUT/data" \
  --shard-tokens 1000000 --force

echo "== 2/6 verify shards and byte accounting"
pgolf data verify --data "$OUT/data"

echo "== 3/6 train (cpu preset, ${TRAIN_SECONDS}s of training, eager bf16)"
rm -rf "$OUT/run"
pgolf train --preset cpu \
  --set "data.path=$OUT/data/datasets/fineweb10B_sp1024" \
  --set "data.tokenizer_path=$OUT/data/tokenizers/fineweb_1024_bpe.model" \
  --set "train.max_wallclock_seconds=$TRAIN_SECONDS" --set train.compile=off \
  --set train.warmdown_iters=10 --set train.ema_decay=0.9 \
  --run-dir "$OUT/run"

echo "== 4/6 evaluate the trained weights: sliding windows (512/64) on the whole validation stream"
pgolf eval --run-dir "$OUT/run" --mode sliding

echo "== not built yet: quantize + artifact (issue #4), SLOT/TTT evaluation modes (#5), audit and report (#6)"
echo "== demo done: run directory $OUT/run (log.txt, metrics.jsonl, config.json, timings.json)"
