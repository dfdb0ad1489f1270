#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded corpus, offline, on CPU (a few minutes on 2 cores):
# prepare -> verify -> train -> quantize -> score the artifact -> SLOT/TTT on a prefix -> bundle ->
# audit -> report. Prints the final BPB, the artifact bytes, the audit table and the report.
set -euo pipefail
OUT=${PGOLF_DEMO_OUT:-runs/demo}
TRAIN_SECONDS=${PGOLF_DEMO_TRAIN_SECONDS:-90}
mkdir -p "$OUT"
echo "== pgolf demo: output in $OUT"
DATA_SETS=(--set "data.path=$OUT/data/datasets/fineweb10B_sp1024"
           --set "data.tokenizer_path=$OUT/data/tokenizers/fineweb_1024_bpe.model")

echo "== 1/8 prepare data (embedded corpus: 143 validation + 1,400 training documents, SP1024 tokenizer)"
pgolf data prepare --docs default --val-docs 143 --vocab-size 1024 --out "$OUT/data" \
  --shard-tokens 1000000 --force

echo "== 2/8 verify shards and byte accounting"
pgolf data verify --data "$OUT/data"

echo "== 3/8 run: train (cpu preset, ${TRAIN_SECONDS}s, eager bf16) -> quantize (self-generated calibration,"
echo "        GPTQ int6, compressor choice, budget) -> score the artifact read back from disk (sliding 512/84)"
rm -rf "$OUT/run"
pgolf run --preset cpu "${DATA_SETS[@]}" \
  --set "train.max_wallclock_seconds=$TRAIN_SECONDS" --set train.compile=off \
  --set train.warmdown_iters=10 --set train.ema_decay=0.9 \
  --run-dir "$OUT/run" --no-progress

echo "== 4/8 the other evaluation modes on an 8k-token validation prefix (legal causal SLOT, score-first TTT)"
pgolf eval --run-dir "$OUT/run" --mode sliding,slot,ttt --max-val-tokens 8192 --set score.slot.clamp=0.1 \
  --set score.ttt.chunk_tokens=2048

echo "== 5/8 bundle the record folder (single-file train_gpt.py + submission skeleton)"
pgolf bundle --run-dir "$OUT/run" --out "$OUT/record" --force

echo "== 6/8 budget of what ships"
pgolf budget --run-dir "$OUT/run" --code-bytes "$(stat -c %s "$OUT/record/train_gpt.py")"

echo "== 7/8 audit: causality probes, TTT ledger, normalization, coverage, budgets, data split, reference modes"
pgolf audit "$OUT/run"

echo "== 8/8 report (one seed here; pgolf run --seeds 1337,42,999 makes a multi-seed one)"
pgolf report "$OUT/run" --out "$OUT/report"

python - "$OUT/run" <<'PYEOF'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
r = json.loads((run / "results.json").read_text())
for mode, m in r["modes"].items():
    print(f"== demo result: {mode} val_bpb {m['val_bpb']:.4f} (val_loss {m['val_loss']:.4f} nats) [{m['label']}]")
print(f"== artifact {r['artifact_bytes']:,} bytes + code {r['code_bytes']:,} = {r['total_bytes']:,} "
      f"({'within' if r['within_limit'] else 'OVER'} the 16,000,000 limit); run dir {run}")
PYEOF
