"""`pgolf bench ...`: benchmarks that print figures (speed targets live here, not in tests)."""

from __future__ import annotations

import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from pgolf.config import SCORE_MODES, ConfigError, RunConfig, SlotConfig, apply_overrides
from pgolf.config.score import SLOT_SETTINGS, slot_setting
from pgolf.model.build import build_gpt
from pgolf.model.roles import roles_by_name
from pgolf.presets import get_preset
from pgolf.quant.artifact import load_artifact, save_model_artifact
from pgolf.quant.calib import self_generated_batches
from pgolf.quant.codecs import available_compressors, compress
from pgolf.quant.container import build_payload
from pgolf.quant.schemes import entropy_bytes, quantize_model
from pgolf.quant.stage import calibration_hessians
from pgolf.rundir import RunLogger, load_config, load_final_weights
from pgolf.runtime import DistEnv, resolve_precision, score_precision, session, sync
from pgolf.scoring.evaluate import evaluate, load_eval_data, mode_plan
from pgolf.tools.args import add_config_args, add_device, add_json, add_sets, prefixed_sets, resolve_args
from pgolf.tools.estimate import record_estimates
from pgolf.tools.evaltool import eval_model, eval_source, parse_modes
from pgolf.train.loop import Trainer


def replace_quant(cfg: RunConfig, **changes) -> RunConfig:
    """cfg with quant fields changed (the benchmarks compare methods on one run)."""
    return dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, **changes))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_train(cfg: RunConfig, env: DistEnv, steps: int = 10) -> dict:
    """Time `steps` optimizer steps after the configured warm-up (compile), on the configured data."""
    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as tmp:
        tr = Trainer(cfg, env, tmp, progress=False, echo=False)
        tr.setup()
        if tr.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(tr.device)
        t_w = time.perf_counter()
        for _ in range(max(cfg.train.warmup_steps, 1)):
            tr.train_step(1.0, cfg.optim.muon_momentum)
        sync(tr.device)
        warm = time.perf_counter() - t_w
        t0 = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = tr.train_step(1.0, cfg.optim.muon_momentum)
        sync(tr.device)
        dt = time.perf_counter() - t0
        out = {
            "preset": cfg.preset,
            "device": str(tr.device),
            "world_size": env.world_size,
            "grad_accum": tr.accum,
            "attention": tr.attn_name,
            "compile": tr.compile,
            "precision": tr.precision.name,
            "precision_reason": tr.precision.reason,
            "params": tr.raw_model.num_params(),
            "batch_tokens": cfg.train.batch_tokens,
            "steps_timed": steps,
            "warmup_seconds": round(warm, 2),
            "ms_per_step": round(1000 * dt / steps, 2),
            "tokens_per_second_global": round(cfg.train.batch_tokens * steps / dt, 1),
            "tokens_per_second_per_rank": round(cfg.train.batch_tokens * steps / dt / env.world_size, 1),
            "last_loss": round(float(loss), 4) if loss is not None else None,
        }
        if tr.device.type == "cuda":
            out["peak_mem_allocated_mib"] = torch.cuda.max_memory_allocated(tr.device) // 2**20
            out["peak_mem_reserved_mib"] = torch.cuda.max_memory_reserved(tr.device) // 2**20
        else:
            out["peak_rss_mib"] = round(_peak_rss_mib(), 1)
            out["torch_threads"] = torch.get_num_threads()
        return out


def bench_quant(run_dir, env: DistEnv, *, modes: tuple[str, ...] = ("plain",), max_val_tokens: int = 0,
                progress: bool = False, sets: tuple = ()) -> dict:
    """For a trained run: validation BPB of the float weights, RTN and GPTQ at the run's bit widths (each
    scored from an artifact written to and read back from disk), compressed bytes of every compressor
    and layout for the GPTQ tensors beside their order-0 entropy bound, and the time of each stage."""
    run_dir = Path(run_dir)
    cfg = apply_overrides(load_config(run_dir), list(sets))  # quant.* overrides (calibration, clip, ...)
    cfg = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, modes=tuple(modes)))
    amp = score_precision(cfg, env).dtype
    amp_calib, _ = resolve_precision(cfg, env)
    model = load_final_weights(run_dir, cfg, env.device).float()
    out: dict = {"run_dir": str(run_dir), "modes": list(modes), "max_val_tokens": max_val_tokens,
                 "matrix_bits": cfg.quant.matrix_bits, "embed_bits": cfg.quant.embed_bits, "device": str(env.device),
                 "quant": dataclasses.asdict(cfg.quant), "score_precision": "bf16-autocast" if amp else "fp32"}

    def score(m) -> dict:
        r = evaluate(m, cfg, env, modes=modes, max_val_tokens=max_val_tokens, autocast_dtype=amp, progress=progress)
        return {k: v["val_bpb"] for k, v in r.items()}

    t = time.perf_counter()
    out["float_bpb"] = score(model)
    out["score_seconds"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        log = RunLogger(tmp, env.is_main, echo=False)
        t = time.perf_counter()
        H, calib = calibration_hessians(model, replace_quant(cfg, method="gptq"), env, run_dir, autocast_dtype=amp_calib,
                                        log=log, progress=progress)
        out["calibration"] = {**calib, "seconds": time.perf_counter() - t}
        tensors = {}
        for method in ("rtn", "gptq"):
            q = replace_quant(cfg, method=method).quant
            t = time.perf_counter()
            tensors[method] = quantize_model(model, q, H if method == "gptq" else None)
            out[f"{method}_quantize_seconds"] = time.perf_counter() - t
            path = Path(tmp) / f"{method}.pgolf"
            t = time.perf_counter()
            out[f"{method}_artifact_bytes"] = save_model_artifact(path, model, tensors[method], q)
            out[f"{method}_serialize_seconds"] = time.perf_counter() - t
            out[f"{method}_bpb"] = score(load_artifact(path, env.device))
    roles = roles_by_name(model)
    sizes = {}
    for layout in ("int8", "int6p"):
        _, raw = build_payload(tensors["gptq"], layout, roles)
        for c in available_compressors():
            t = time.perf_counter()
            sizes[f"{layout}+{c}"] = {"bytes": len(compress(raw, c)), "seconds": time.perf_counter() - t}
    ent = entropy_bytes(tensors["gptq"])
    best = min(sizes, key=lambda k: sizes[k]["bytes"])
    out.update(compressed=sizes, entropy_bytes=ent, best=best,
               best_over_entropy=sizes[best]["bytes"] / ent["total"])
    out["penalty"] = {m: {"rtn": out["rtn_bpb"][m] - out["float_bpb"][m], "gptq": out["gptq_bpb"][m] - out["float_bpb"][m]}
                      for m in modes}
    return out


def bench_calib(cfg: RunConfig, env: DistEnv, *, run_dir=None,
                samplers: tuple[str, ...] = ("cache", "nocache")) -> dict:
    """Self-generated calibration text: seconds and tokens/s of quant.calib_seqs x calib_seq_len with the KV
    cache and with PR #1019's full re-forward, on this rank's share (the run's trained weights with
    run_dir, else a fresh model of the config), and whether the two samplers drew the same tokens."""
    if run_dir is not None:
        cfg = dataclasses.replace(load_config(run_dir), quant=cfg.quant)
        model = load_final_weights(run_dir, cfg, env.device).float()
    else:
        model = build_gpt(cfg.model, cfg.seed, env.device)
    amp, _ = resolve_precision(cfg, env)
    q = cfg.quant
    out: dict = {"preset": cfg.preset, "device": str(env.device), "world_size": env.world_size,
                 "weights": "trained" if run_dir is not None else "fresh init", "seqs": q.calib_seqs,
                 "seq_len": q.calib_seq_len, "batch": q.calib_batch, "rope_ref_len": cfg.model.rope_ref_len,
                 "autocast": str(amp) if amp else "fp32"}
    seqs = {}
    for name in samplers:
        qc = dataclasses.replace(q, calib_kv_cache=(name == "cache"))
        sync(env.device)
        t = time.perf_counter()
        seqs[name] = self_generated_batches(model, qc, vocab_size=cfg.model.vocab_size, seed=cfg.seed, env=env,
                                            autocast_dtype=amp)
        sync(env.device)
        dt = time.perf_counter() - t
        n_tok = sum(int(x.numel()) for x in seqs[name])
        out[name] = {"seconds": round(dt, 3), "tokens_per_second": round(n_tok / dt, 1), "tokens": n_tok}
    if "cache" in seqs and "nocache" in seqs:
        out["speedup"] = round(out["nocache"]["seconds"] / out["cache"]["seconds"], 2)
        out["same_tokens"] = all(torch.equal(a, b) for a, b in zip(seqs["cache"], seqs["nocache"], strict=True))
    return out


SLOT_SINGLE_PHASE = {"phase_iters": (25,), "phase_history": (20,), "phase_alpha": (0.0,)}
"""The earlier entry's one L-BFGS call per batch (PR #1350): 25 iterations, history 20."""


SLOT_BENCH_SETTINGS = ("config", "guarded", "seed", "seed_guarded")
"""SLOT settings `pgolf bench eval` compares with sliding: config = the resolved score.slot, any other name a
config.score.SLOT_SETTINGS entry applied on top of it."""


def parse_slot_settings(text: str | None) -> tuple[str, ...]:
    """'config,seed' -> ('config', 'seed'); None -> SLOT_BENCH_SETTINGS; '' -> none."""
    names = SLOT_BENCH_SETTINGS if text is None else tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n != "config" and n not in SLOT_SETTINGS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"--slot-settings: each of config, {', '.join(SLOT_SETTINGS)} at most once, got {list(names)}")
    return names


def slot_vs_sliding(model, cfg: RunConfig, env: DistEnv, res: dict, kw: dict, names: tuple[str, ...]) -> dict:
    """BPB, seconds and the guard's kept fraction of each named SLOT setting beside sliding on the same
    windows (the modes' own sliding and config-slot results are reused when they were run)."""
    replace = dataclasses.replace
    sl = res["sliding"] if "sliding" in res else evaluate(model, cfg, env, modes=("sliding",), **kw)["sliding"]
    out: dict = {"windows": sl["windows"], "sliding": {"val_bpb": sl["val_bpb"], "seconds": sl["seconds"]},
                 "settings": {}}
    for name in names:
        sc = cfg.score.slot if name == "config" else slot_setting(name, cfg.score.slot)
        if name == "config" and "slot" in res:
            r = res["slot"]
        else:
            r = evaluate(model, replace(cfg, score=replace(cfg.score, slot=sc)), env, modes=("slot",), **kw)["slot"]
        if r["windows"] != sl["windows"]:
            raise RuntimeError(f"slot setting {name}: {r['windows']} windows, sliding has {sl['windows']}")
        d = r["slot"]
        out["settings"][name] = {
            "guard": sc.guard, "clamp": sc.clamp, "l2": sc.l2, "focal": sc.focal, "space": sc.space,
            "val_bpb": r["val_bpb"], "seconds": r["seconds"], "bpb_vs_sliding": r["val_bpb"] - sl["val_bpb"],
            "seconds_vs_sliding": r["seconds"] / sl["seconds"] if sl["seconds"] > 0 else float("inf"),
            "kept_fraction": d["kept_fraction"], "windows_kept": d["windows_kept"],
            "windows_adapted": d["windows_adapted"], "compliant": r["compliant"]}
    return out


def bench_eval(model, cfg: RunConfig, env: DistEnv, *, modes: tuple[str, ...] = (), max_val_tokens: int = 0,
               autocast_dtype: torch.dtype | None = None, weights: str = "", progress: bool = False,
               slot_settings: tuple[str, ...] = SLOT_BENCH_SETTINGS) -> dict:
    """Seconds and windows/s of each eval mode, then single-phase vs cascaded SLOT on the same windows, then
    each of `slot_settings` beside sliding (`slot_vs_sliding`).

    The cascade is the SlotConfig default phases ((5, 18) iterations, histories (10, 20), uniform loss);
    single-phase is SLOT_SINGLE_PHASE; every other score.slot setting is the config's. The comparison runs
    after the modes (kernels warm), single-phase first; time_ratio = cascaded / single-phase seconds.
    """
    replace = dataclasses.replace
    data = load_eval_data(cfg, env.device, max_val_tokens)
    kw = dict(data=data, autocast_dtype=autocast_dtype, weights=weights, progress=progress)
    res = evaluate(model, cfg, env, modes=modes or SCORE_MODES, **kw)
    first = next(iter(res.values()))
    out: dict = {"device": str(env.device), "world_size": env.world_size, "weights": weights,
                 "val_targets": len(data.stream) - 1, "seq_len": cfg.score.seq_len,
                 "stride": cfg.score.sliding.stride, "batch_windows": cfg.score.sliding.batch_windows,
                 "modes": {m: _bench_mode(r) for m, r in res.items()},
                 "eval_seconds_total": first["eval_seconds_total"], "eval_seconds_limit": first["eval_seconds_limit"],
                 "eval_over_budget": first["eval_over_budget"]}
    default = SlotConfig()
    variants = {"single": replace(cfg.score.slot, **SLOT_SINGLE_PHASE),
                "cascaded": replace(cfg.score.slot, phase_iters=default.phase_iters,
                                    phase_history=default.phase_history, phase_alpha=default.phase_alpha)}
    cmp: dict = {}
    for name, slot_cfg in variants.items():
        c = replace(cfg, score=replace(cfg.score, slot=slot_cfg))
        r = evaluate(model, c, env, modes=("slot",), **kw)["slot"]
        cmp[name] = {"phase_iters": list(slot_cfg.phase_iters), "phase_history": list(slot_cfg.phase_history),
                     "seconds": r["seconds"], "windows_per_s": r["windows_per_s"], "val_bpb": r["val_bpb"],
                     "val_loss": r["val_loss"], "iters_mean": r["slot"]["iters_mean"],
                     "evals_mean": r["slot"]["evals_mean"], "compliant": r["compliant"]}
    s, c = cmp["single"], cmp["cascaded"]
    cmp.update(windows=mode_plan("slot", len(data.stream), cfg).num_windows, time_ratio=c["seconds"] / s["seconds"],
               speedup_pct=100.0 * (1.0 - c["seconds"] / s["seconds"]), bpb_delta=c["val_bpb"] - s["val_bpb"],
               evals_ratio=sum(c["evals_mean"]) / max(sum(s["evals_mean"]), 1e-12))
    out["slot_phases"] = cmp
    if slot_settings:
        out["slot_settings"] = slot_vs_sliding(model, cfg, env, res, kw, slot_settings)
    rec = get_preset("record")
    # the record's geometry (windows, stride) with this run's method settings (LoRA, TTT, SLOT)
    rec_score = replace(cfg.score, seq_len=rec.score.seq_len, sliding=rec.score.sliding,
                        lora=replace(cfg.score.lora, context=0))
    out["record_estimate"] = record_estimates(replace(rec, score=rec_score), list(res),
                                              {m: r["seconds"] for m, r in res.items()})
    return out


def _bench_mode(r: dict) -> dict:
    keys = ("windows", "seconds", "windows_per_s", "val_bpb", "compliant", "label", "seconds_phases", "precision")
    return {k: r[k] for k in keys if k in r}


def format_bench_eval(r: dict) -> str:
    lines = [f"bench eval on {r['device']} x{r['world_size']}: {r['val_targets']:,} targets, T={r['seq_len']} "
             f"S={r['stride']}, {r['batch_windows']} windows/batch; weights: {r['weights'] or 'in-memory model'}"]
    for m, v in r["modes"].items():
        ph = "".join(f" {k} {s:.2f}s" for k, s in v.get("seconds_phases", {}).items())
        tag = "" if v["compliant"] else f"  [{v['label']}]"
        lines.append(f"  {m:9s} {v['windows']:>8,} windows {v['seconds']:9.2f}s {v['windows_per_s']:10.1f} win/s "
                     f"bpb {v['val_bpb']:.5f}{ph}{tag}")
    over = "  OVER BUDGET" if r["eval_over_budget"] else ""
    lines.append(f"  total {r['eval_seconds_total']:.2f}s (budget {r['eval_seconds_limit']:g}s){over}")
    c = r["slot_phases"]
    lines.append(f"SLOT single-phase vs cascaded on the same {c['windows']:,} windows:")
    for name in ("single", "cascaded"):
        v = c[name]
        lines.append(f"  {name:9s} iters {v['phase_iters']} hist {v['phase_history']}: {v['seconds']:.2f}s "
                     f"({v['windows_per_s']:.1f} win/s) bpb {v['val_bpb']:.5f}; closure evals/window "
                     f"{sum(v['evals_mean']):.1f}, iterations/window {sum(v['iters_mean']):.1f}")
    lines.append(f"  cascaded/single time ratio {c['time_ratio']:.3f} ({c['speedup_pct']:+.1f}% faster), "
                 f"evals ratio {c['evals_ratio']:.3f}, bpb delta {c['bpb_delta']:+.5f} (cascaded - single)")
    if "slot_settings" in r:
        v = r["slot_settings"]
        lines.append(f"SLOT settings vs sliding on the same {v['windows']:,} windows (sliding bpb "
                     f"{v['sliding']['val_bpb']:.5f} in {v['sliding']['seconds']:.2f}s):")
        for name, e in v["settings"].items():
            tag = "" if e["compliant"] else "  [NON-COMPLIANT]"
            lines.append(f"  {name:9s} guard {e['guard']} clamp {e['clamp']:g} l2 {e['l2']:g} {e['space']}: "
                         f"bpb {e['val_bpb']:.5f} ({e['bpb_vs_sliding']:+.5f} vs sliding) {e['seconds']:.2f}s "
                         f"({e['seconds_vs_sliding']:.2f}x); kept {100 * e['kept_fraction']:.1f}% of "
                         f"{e['windows_adapted']:,} adapted windows{tag}")
    lines.append("record shape on 8xH100, estimated from FLOP counts and the measured H100 training throughput "
                 "(pgolf.tools.estimate):")
    for m, e in r["record_estimate"].items():
        w = e["work"]
        lines.append(f"  {m:9s} {e['seconds']:8.1f}s of {e['budget_seconds']:g}s "
                     f"({'within' if e['within_budget'] else 'OVER'}); forward {w['forward'] / 1e9:.2f}G tokens, "
                     f"backward {(w['backward_acts'] + w['backward_weights']) / 1e9:.2f}G  [{e['method']}]")
    return "\n".join(lines)


def format_bench_quant(r: dict) -> str:
    lines = [f"run {r['run_dir']} ({r['device']}), int{r['matrix_bits']} matrices / int{r['embed_bits']} tables"]
    for m in r["modes"]:
        lines.append(f"{m:8s} float {r['float_bpb'][m]:.5f}  rtn {r['rtn_bpb'][m]:.5f} "
                     f"({r['penalty'][m]['rtn']:+.5f})  gptq {r['gptq_bpb'][m]:.5f} ({r['penalty'][m]['gptq']:+.5f})")
    c = r["calibration"]
    lines.append(f"calibration {c.get('source')}: {c['seconds']:.1f}s; quantize rtn {r['rtn_quantize_seconds']:.1f}s, "
                 f"gptq {r['gptq_quantize_seconds']:.1f}s")
    e = r["entropy_bytes"]
    lines.append(f"entropy bound {e['total']:,.0f} bytes (symbols {e['symbols']:,.0f} + scales {e['scales']:,.0f} "
                 f"+ fp16 {e['passthrough']:,.0f})")
    for k, v in sorted(r["compressed"].items(), key=lambda kv: kv[1]["bytes"]):
        lines.append(f"  {k:14s} {v['bytes']:>12,} bytes  {v['bytes'] / e['total']:.3f}x entropy  {v['seconds']:.1f}s")
    lines.append(f"artifact bytes: rtn {r['rtn_artifact_bytes']:,}, gptq {r['gptq_artifact_bytes']:,}")
    return "\n".join(lines)


def _print(env, res: dict, as_json: bool, text: str | None = None) -> None:
    if env.is_main:
        print(json.dumps(res, indent=2, default=str) if as_json else
              (text if text is not None else "\n".join(f"{k}: {v}" for k, v in res.items())))


def cmd_bench_train(args) -> int:
    cfg, _ = resolve_args(args)
    with session(args.device) as env:
        _print(env, bench_train(cfg, env, steps=args.steps), args.json)
    return 0


def cmd_bench_quant(args) -> int:
    sets = prefixed_sets(args.sets, "bench quant", ("quant.",))
    modes = tuple(m.strip() for m in args.mode.split(","))
    with session(args.device) as env:
        res = bench_quant(args.run_dir, env, modes=modes, max_val_tokens=args.max_val_tokens,
                          progress=not args.json, sets=tuple(sets))
        _print(env, res, args.json, None if args.json else format_bench_quant(res))
    return 0


def cmd_bench_calib(args) -> int:
    cfg, _ = resolve_args(args)
    samplers = ("cache",) if args.cache_only else ("cache", "nocache")
    with session(args.device) as env:
        _print(env, bench_calib(cfg, env, run_dir=args.run_dir, samplers=samplers), args.json)
    return 0


def cmd_bench_eval(args) -> int:
    cfg, source = eval_source(args)
    modes = parse_modes(args.mode, SCORE_MODES)
    slot_settings = parse_slot_settings(args.slot_settings)
    with session(args.device) as env:
        model, cfg, amp = eval_model(source, cfg, env)
        res = bench_eval(model, cfg, env, modes=modes, max_val_tokens=args.max_val_tokens, autocast_dtype=amp,
                         weights=source.label, progress=not args.json, slot_settings=slot_settings)
        _print(env, res, args.json, None if args.json else format_bench_eval(res))
    return 0


def add_parsers(verbs, add_eval_args) -> None:
    be = verbs.add_parser("bench", help="benchmarks that print figures")
    bs = be.add_subparsers(dest="sub", metavar="SUB", required=True)
    bt = bs.add_parser("train", help="training throughput (tokens/s) and peak memory")
    add_config_args(bt)
    bt.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    add_device(bt)
    add_json(bt)
    bt.set_defaults(fn=cmd_bench_train)
    bev = bs.add_parser("eval", help="eval windows/s and seconds per mode; single-phase vs cascaded SLOT")
    add_eval_args(bev, "comma-separated modes to time (default: all five)")
    bev.add_argument("--slot-settings", default=None, metavar="NAMES",
                     help=f"SLOT settings to compare with sliding: config (score.slot) and/or "
                          f"{', '.join(SLOT_SETTINGS)} (default {','.join(SLOT_BENCH_SETTINGS)}; '' = none)")
    bev.set_defaults(fn=cmd_bench_eval)
    bc = bs.add_parser("calib", help="self-generated calibration: KV-cached vs re-forward sampling speed")
    add_config_args(bc)
    bc.add_argument("--run-dir", default=None, help="use this run's trained weights (default: fresh init)")
    bc.add_argument("--cache-only", action="store_true", help="skip the slow re-forward sampler")
    add_device(bc)
    add_json(bc)
    bc.set_defaults(fn=cmd_bench_calib)
    bq = bs.add_parser("quant", help="float vs RTN vs GPTQ BPB, compressor sizes vs entropy, quantization time")
    bq.add_argument("--run-dir", required=True)
    bq.add_argument("--mode", default="plain", help="scoring modes for the BPB comparison (default plain)")
    bq.add_argument("--max-val-tokens", type=int, default=0)
    add_sets(bq, "override quant.* keys (calibration size, clip rule, bits, ...)")
    add_device(bq)
    add_json(bq)
    bq.set_defaults(fn=cmd_bench_quant)
