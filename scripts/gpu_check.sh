#!/usr/bin/env bash
# The prepared device check. On one H100, in about 5 minutes:
#   1. `pgolf run --preset record` capped at 60 s of training (ms/step, tokens/s, peak memory), then
#      quantization (self-generated calibration, GPTQ int6, compressor choice) and sliding-window scoring
#      of the artifact read back from disk,
#   1b. `pgolf bench calib`: KV-cached vs re-forward calibration sampling on the trained weights,
#   2. the GPU-marked tests,
#   3. `pgolf bench eval` on a val prefix: every mode's seconds (doc and lora with a global phase included),
#      SLOT single-phase vs cascaded, and the record-shape 8xH100 estimate of each mode,
#   4. `pgolf bench train` of the record preset with document-isolated attention (FlexAttention),
# with a JSON of what it measured in $OUT/gpu_check.json (compare per-GPU throughput with the original's
# 86.7 ms/step on 8xH100 for 786,432 tokens/step = 1.134M tokens/s per GPU).
# The device has no network: data comes from the embedded corpus. Runs from the repo root, no install:
#   PYTHONPATH=src python3 -m pgolf ...
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DATA=/tmp/pgolf_gpu_data
RUN=/tmp/pgolf_gpu_run
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
# The device image (Python 3.12, torch 2.11) lacks brotli: put matching wheels (brotli, sentencepiece,
# pytest + pluggy, iniconfig, packaging) in build/wheels (git-ignored) and carry that path with the run.
if ! $PY -c "import brotli, sentencepiece, pytest" 2>/dev/null && ls build/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/pgolf_pydeps build/wheels/*.whl 2>&1 | tail -2
  export PYTHONPATH="$PYTHONPATH:/tmp/pgolf_pydeps"
fi
$PY - <<'PYEOF' | tee "$OUT/env.txt"
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PYEOF
$PY -m pgolf data prepare --docs default --val-docs 143 --vocab-size 1024 --out "$DATA" \
  --shard-tokens 1000000 --force > "$OUT/prepare.log" 2>&1 || { echo "prepare failed"; cat "$OUT/prepare.log"; exit 1; }
SETS=(--set "data.path=$DATA/datasets/fineweb10B_sp1024" --set "data.tokenizer_path=$DATA/tokenizers/fineweb_1024_bpe.model")

stamp "== 1. pgolf run: record preset, 45 s of training, quantize, score the artifact (sliding)"
# Shortened for the device budget: 16 x 2048 self-generated calibration tokens in one KV-cached batch
# (the record default is 64 x 2048 in batches of 8, split across 8 GPUs) and no pruning search (prune
# target raised; the total is still measured and reported against the 16,000,000 limit).
rm -rf "$RUN"
timeout 240 $PY -m pgolf run --preset record "${SETS[@]}" --set train.max_wallclock_seconds=45 \
  --set train.val_every=0 --set train.val_max_tokens=131072 --set train.log_every=50 \
  --set quant.calib_seqs=16 --set quant.calib_batch=16 --set quant.calib_seq_len=2048 \
  --set quant.prune_target_bytes=40000000 --set quant.compressor=lzma --set score.modes=sliding \
  --run-dir "$RUN" --no-progress > "$OUT/record_run.log" 2>&1
tail -25 "$OUT/record_run.log"
for f in log.txt train_summary.json quant_summary.json results.json timings.json; do
  cp "$RUN/$f" "$OUT/record_$f" 2>/dev/null || true
done

stamp "== 1b. bench calib: KV cache vs full re-forward (record shape, trained weights, 8 x 512)"
timeout 60 $PY -m pgolf bench calib --preset record --run-dir "$RUN" --set quant.calib_seqs=8 \
  --set quant.calib_batch=8 --set quant.calib_seq_len=512 --json > "$OUT/bench_calib.json" 2> "$OUT/bench_calib.err" \
  || tail -5 "$OUT/bench_calib.err"

stamp "== 2. GPU tests"
timeout 100 $PY -m pytest tests/gpu -m gpu -p no:cacheprovider -q > "$OUT/gpu_tests.log" 2>&1
tests_rc=$?
tail -15 "$OUT/gpu_tests.log"

stamp "== 3. bench eval (val prefix 32768 tokens): every mode, doc and lora (+ 1 global phase) included"
timeout 150 $PY -m pgolf bench eval --run-dir "$RUN" --max-val-tokens 32768 \
  --mode plain,sliding,slot,ttt,ttt+slot,doc,lora --set score.lora.phase_docs=4 --json \
  > "$OUT/bench_eval.json" 2> "$OUT/bench_eval.err" || tail -5 "$OUT/bench_eval.err"

stamp "== 4. document-isolated training: record preset, FlexAttention document masks, 5 timed steps"
timeout 150 $PY -m pgolf bench train --preset record "${SETS[@]}" --set model.doc_isolation=true --steps 5 \
  --json > "$OUT/bench_train_doc.json" 2> "$OUT/bench_train_doc.err" || tail -5 "$OUT/bench_train_doc.err"

stamp "== summary"
$PY - "$OUT" "$RUN" "$tests_rc" "$t0" <<'PYEOF'
import json, sys, time, pathlib
out, run, rc, t0 = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
res = {"gpu_tests_exit": rc, "wall_seconds": round(time.time() - t0, 1)}
for key, name in [("train", "train_summary.json"), ("quant", "quant_summary.json"), ("results", "results.json"),
                  ("timings", "timings.json")]:
    try:
        res[key] = json.loads((run / name).read_text())
    except Exception as e:
        res[key + "_error"] = repr(e)
for key, name in [("bench_eval", "bench_eval.json"), ("bench_calib", "bench_calib.json"),
                  ("bench_train_doc", "bench_train_doc.json")]:
    try:
        res[key] = json.loads((out / name).read_text())
    except Exception as e:
        res[key + "_error"] = repr(e)
if "train" in res:
    per_gpu_ref = 786432 / 0.0867 / 8
    tps = res["train"]["tokens_per_second"]
    res["original_per_gpu_tokens_per_s"] = round(per_gpu_ref)
    res["ours_per_gpu_tokens_per_s"] = round(tps)
    res["ratio_vs_original_per_gpu"] = round(tps / per_gpu_ref, 3)
    res["equivalent_8gpu_ms_per_step"] = round(786432 / (8 * tps) * 1000, 1)
(out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str))
short = {k: res.get(k) for k in ("gpu_tests_exit", "wall_seconds", "ours_per_gpu_tokens_per_s",
                                 "ratio_vs_original_per_gpu", "equivalent_8gpu_ms_per_step")}
if "results" in res:
    short["sliding_bpb"] = res["results"]["modes"].get("sliding", {}).get("val_bpb")
    short["artifact_bytes"] = res["results"]["artifact_bytes"]
if "timings" in res:
    short["timings"] = {k: round(v, 1) for k, v in res["timings"].items()}
if "bench_eval" in res:
    short["eval_seconds"] = {m: round(v["seconds"], 2) for m, v in res["bench_eval"]["modes"].items()}
    short["eval_bpb"] = {m: round(v["val_bpb"], 5) for m, v in res["bench_eval"]["modes"].items()}
if "bench_train_doc" in res:
    short["doc_isolation_tokens_per_s"] = res["bench_train_doc"].get("tokens_per_second_global")
    short["doc_isolation_attention"] = res["bench_train_doc"].get("attention")
print(json.dumps(short, indent=2))
PYEOF
