#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded corpus, offline. Stages are added as they land.
set -euo pipefail
OUT=${PGOLF_DEMO_OUT:-runs/demo}
mkdir -p "$OUT"
echo "== pgolf demo: output in $OUT"

echo "== 1/6 prepare data (embedded corpus: 143 validation + 1,400 training documents, SP1024 tokenizer)"
pgolf data prepare --docs default --val-docs 143 --vocab-size 1024 --out "$OUT/data" \
  --shard-tokens 1000000 --force

echo "== 2/6 verify shards and byte accounting"
pgolf data verify --data "$OUT/data"

echo "== not built yet: train, quantize, evaluate, audit, report (issues #3-#6)"
