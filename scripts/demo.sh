#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded corpus, offline, on CPU, in under 10 minutes on 2 cores:
# prepare -> verify -> train -> quantize -> score the artifact -> doc/LoRA/SLOT/TTT on a prefix -> bundle ->
# audit -> report. Prints each stage with the time so far (long stages print progress lines with an
# ETA), then the final BPB, the artifact bytes, the audit table and the report.
set -euo pipefail
OUT=${PGOLF_DEMO_OUT:-runs/demo}
TRAIN_SECONDS=${PGOLF_DEMO_TRAIN_SECONDS:-90}
STRIDE=${PGOLF_DEMO_STRIDE:-128}
T0=$(date +%s)
stage() { echo "== $1 (demo time so far: $(( $(date +%s) - T0 ))s)"; }
mkdir -p "$OUT"
echo "== pgolf demo: output in $OUT; training ${TRAIN_SECONDS}s; the whole demo takes about 6-9 minutes on 2 cores"
DATA_SETS=(--set "data.path=$OUT/data/datasets/fineweb10B_sp1024"
           --set "data.tokenizer_path=$OUT/data/tokenizers/fineweb_1024_bpe.model")

stage "1/8 prepare data (embedded corpus: 143 validation + 1,400 training documents, SP1024 tokenizer)"
pgolf data prepare --docs default --val-docs 143 --vocab-size 1024 --out "$OUT/data" \
  --shard-tokens 1000000 --force

stage "2/8 verify shards and byte accounting"
pgolf data verify --data "$OUT/data"

stage "3/8 run: train (cpu preset, ${TRAIN_SECONDS}s, eager, precision auto) -> quantize (self-generated calibration,
        GPTQ int6, compressor choice, budget) -> score the artifact read back from disk on the whole validation
        stream (sliding windows 512/${STRIDE})"
rm -rf "$OUT/run"
pgolf run --preset cpu "${DATA_SETS[@]}" \
  --set "train.max_wallclock_seconds=$TRAIN_SECONDS" --set train.compile=off \
  --set train.ema_decay=0.9 --set "score.sliding.stride=$STRIDE" \
  --run-dir "$OUT/run"

stage "4/8 the other evaluation modes on an 8k-token validation prefix (document-isolated windows, per-document
        LoRA TTT, legal causal SLOT with its guard, score-first TTT)"
pgolf eval --run-dir "$OUT/run" --mode sliding,doc,lora,slot,ttt --max-val-tokens 8192 --set score.ttt.chunk_tokens=2048

stage "5/8 bundle the record folder (single-file train_gpt.py + submission skeleton)"
pgolf bundle --run-dir "$OUT/run" --out "$OUT/record" --force

stage "6/8 budget of what ships"
pgolf budget --run-dir "$OUT/run" --code-bytes "$(stat -c %s "$OUT/record/train_gpt.py")"

stage "7/8 audit: causality probes, TTT ledger, normalization, coverage, budgets, data split, reference modes"
pgolf audit "$OUT/run"

stage "8/8 report (one seed here; pgolf run --seeds 1337,42,999 makes a multi-seed one)"
pgolf report "$OUT/run" --out "$OUT/report"

python - "$OUT/run" "$(( $(date +%s) - T0 ))" <<'PYEOF'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
r = json.loads((run / "results.json").read_text())
env = json.loads((run / "env.json").read_text())
tp = env.get("train_precision", {})
for mode, m in r["modes"].items():
    print(f"== demo result: {mode} val_bpb {m['val_bpb']:.4f} (val_loss {m['val_loss']:.4f} nats) on all "
          f"{m['targets']:,} validation targets, a {r['steps']}-step model [{m['label']}]")
print(f"== precision: trained in {tp.get('precision', '?')}, scored in {m.get('precision', '?')} "
      f"({tp.get('reason', '')})")
print(f"== artifact {r['artifact_bytes']:,} bytes + code {r['code_bytes']:,} = {r['total_bytes']:,} "
      f"({'within' if r['within_limit'] else 'OVER'} the 16,000,000 limit); run dir {run}")
print(f"== demo wall time {sys.argv[2]}s")
PYEOF
