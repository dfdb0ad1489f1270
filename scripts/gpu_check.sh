#!/usr/bin/env bash
# The prepared device check (issue 3). On one H100 in under 8 minutes:
#   1. the GPU-marked tests,
#   2. `pgolf bench train --preset record` (ms/step, tokens/s, peak memory),
#   3. ~60 s of the record preset through the real trainer,
# and a JSON of what it measured in $OUT/gpu_check.json (compare per-GPU throughput with the original's
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
$PY - <<'PYEOF' | tee "$OUT/env.txt"
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PYEOF
$PY -m pgolf data prepare --docs default --val-docs 143 --vocab-size 1024 --out "$DATA" \
  --shard-tokens 1000000 --force > "$OUT/prepare.log" 2>&1 || { echo "prepare failed"; cat "$OUT/prepare.log"; exit 1; }
SETS=(--set "data.path=$DATA/datasets/fineweb10B_sp1024" --set "data.tokenizer_path=$DATA/tokenizers/fineweb_1024_bpe.model")

echo "== 1. GPU tests"
timeout 240 $PY -m pytest tests/gpu -m gpu -p no:cacheprovider -q 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== 2. bench train (record preset, 1 GPU)"
timeout 200 $PY -m pgolf bench train --preset record "${SETS[@]}" --steps 8 --json 2>"$OUT/bench.err" \
  | tee "$OUT/bench_record.json"

echo "== 3. 60 s of the record preset"
rm -rf "$RUN"
timeout 300 $PY -m pgolf train --preset record "${SETS[@]}" --set train.max_wallclock_seconds=60 \
  --set train.val_every=0 --set train.val_max_tokens=131072 --set train.log_every=20 \
  --run-dir "$RUN" --no-progress 2>&1 | tail -40 | tee "$OUT/record_train.log"
cp "$RUN/log.txt" "$OUT/record_log.txt" 2>/dev/null || true

$PY - "$OUT" "$RUN" "$tests_rc" "$t0" <<'PYEOF'
import json, sys, time, pathlib
out, run, rc, t0 = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
res = {"gpu_tests_exit": rc, "wall_seconds": round(time.time() - t0, 1)}
try:
    res["bench_record"] = json.loads((out / "bench_record.json").read_text())
except Exception as e:
    res["bench_record_error"] = repr(e)
try:
    s = json.loads((run / "train_summary.json").read_text())
    res["record_60s"] = s
    per_gpu_ref = 786432 / 0.0867 / 8
    res["original_per_gpu_tokens_per_s"] = round(per_gpu_ref)
    res["ours_per_gpu_tokens_per_s"] = round(s["tokens_per_second"])
    res["ratio_vs_original_per_gpu"] = round(s["tokens_per_second"] / per_gpu_ref, 3)
    res["equivalent_8gpu_ms_per_step"] = round(786432 / (8 * s["tokens_per_second"]) * 1000, 1)
except Exception as e:
    res["record_60s_error"] = repr(e)
(out / "gpu_check.json").write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
PYEOF
