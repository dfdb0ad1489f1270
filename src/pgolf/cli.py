"""`pgolf` command line: a verb table mapping to library calls. No logic lives here.

User errors (bad config keys, corrupt shards, missing files) print one line, `pgolf: error: ...`,
and exit non-zero without a traceback (`--traceback` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from pgolf import __version__

# Exit codes: 0 ok, 1 a check failed or a run failed, 2 usage / configuration error.
EXIT_FAIL = 1
EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from pgolf.config import ConfigError
    from pgolf.data.docs import DocsError
    from pgolf.data.prepare import PrepareError
    from pgolf.data.shards import ShardError
    from pgolf.data.tokenizer import TokenizerError
    from pgolf.data.verify import VerifyError

    errs: list[type[BaseException]] = [ConfigError, DocsError, PrepareError, ShardError, TokenizerError,
                                       VerifyError, FileNotFoundError]
    from pgolf.data.fineweb import FinewebError
    from pgolf.quant.artifact import ArtifactError
    from pgolf.quant.run import QuantizeError
    from pgolf.train.loop import NonFiniteLossError

    errs += [FinewebError, NonFiniteLossError, ArtifactError, QuantizeError]
    return tuple(errs)


# ------------------------------------------------------------------------------------------------ config


def _add_config_args(p: argparse.ArgumentParser, preset_default: str = "record") -> None:
    p.add_argument("--preset", default=preset_default, help=f"preset name (default {preset_default})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.iterations=100 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="shortcut for --set seed=N")


def _resolve(args):
    from pgolf.config import resolve

    return resolve(args.preset, args.sets, os.environ, seed=args.seed)


def cmd_config_show(args) -> int:
    from pgolf.config import config_hash, flatten, to_dict

    cfg, applied = _resolve(args)
    if args.json:
        print(json.dumps({"config": to_dict(cfg), "config_hash": config_hash(cfg),
                          "overrides": [{"key": o.key, "value": str(o.value), "source": o.source} for o in applied]},
                         indent=2))
        return 0
    sources = {o.key: o.source for o in applied}
    print(f"# preset {cfg.preset}  config_hash {config_hash(cfg)[:16]}")
    section = None
    for key, value in flatten(cfg).items():
        head, _, leaf = key.rpartition(".")
        if head != section:
            section = head
            if head:
                print(f"[{head}]")
        note = f"   # {sources[key]}" if key in sources else ""
        print(f"{'  ' if head else ''}{leaf} = {_fmt(value)}{note}")
    return 0


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) if v else "(empty)"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def cmd_config_diff(args) -> int:
    from pgolf.config import diff
    from pgolf.presets import get_preset

    cfg, applied = _resolve(args)
    base = get_preset(args.against or args.preset)
    d = diff(cfg, base)
    if args.json:
        print(json.dumps({k: {"base": a, "value": b} for k, (a, b) in d.items()}, indent=2, default=list))
        return 0
    label = args.against or args.preset
    if not d:
        print(f"# no difference from preset {label}")
    sources = {o.key: o.source for o in applied}
    for k, (a, b) in d.items():
        src = f"   # {sources[k]}" if k in sources else ""
        print(f"{k}: {_fmt(a)} -> {_fmt(b)}{src}")
    return 0


def cmd_config_presets(args) -> int:
    from pgolf.presets import PRESETS

    for name, fn in PRESETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name:10s} {doc[0] if doc else ''}")
    return 0


# ------------------------------------------------------------------------------------------------ data


def cmd_data_prepare(args) -> int:
    from pgolf.data.prepare import prepare

    prepare(args.docs, args.out, val_docs=args.val_docs, vocab_size=args.vocab_size, name=args.name,
            tag=args.tag, shard_tokens=args.shard_tokens, tokenizer=args.tokenizer, force=args.force,
            threads=args.threads, progress=True)
    return 0


def cmd_data_verify(args) -> int:
    from pgolf.data.verify import format_report, verify

    rep = verify(args.data, args.tokenizer, vocab_size=args.vocab_size, check_sha=not args.no_sha,
                 progress=not args.json, threads=args.threads)
    print(json.dumps(rep.to_json(), indent=2) if args.json else format_report(rep))
    return 0 if rep.ok else EXIT_FAIL


def cmd_data_fineweb(args) -> int:
    from pgolf.data.fineweb import defaults_from_env, download_fineweb

    env = defaults_from_env(os.environ)
    summary = download_fineweb(args.out, variant=args.variant, train_shards=args.train_shards,
                               repo_id=args.repo_id or env["repo_id"],
                               remote_root=args.remote_root if args.remote_root is not None else env["remote_root"],
                               revision=args.revision, progress=True)
    print(json.dumps(summary, indent=2, default=str))
    return 0


# ------------------------------------------------------------------------------------------------ train


def cmd_train(args) -> int:
    from pgolf import runtime
    from pgolf.train.loop import default_run_dir, load_run_config, train

    env = runtime.init(args.device)
    try:
        if args.resume:
            if args.sets or args.seed is not None or args.preset_given:
                raise _usage("--resume continues a run with its own config.json; drop --preset/--set/--seed")
            cfg = load_run_config(args.resume)
            run_dir = args.resume
        else:
            cfg, _ = _resolve(args)
            run_dir = args.run_dir or default_run_dir(cfg, env)
        res = train(cfg, env, run_dir, resume=bool(args.resume), progress=not args.no_progress)
        if env.is_main:
            v = res.val or {}
            print(f"train: {res.steps} steps in {res.train_seconds:.1f}s ({res.stopped_by}); "
                  f"val_bpb {v.get('val_bpb', float('nan')):.4f} (pre-quantization); run dir {res.run_dir}")
        return 0
    finally:
        runtime.shutdown(env)


def cmd_budget(args) -> int:
    from pgolf.budget import format_budget, format_run_budget, model_budget, run_budget

    if args.run_dir:
        b = run_budget(args.run_dir, code_bytes=_code_bytes(args, args.run_dir))
        print(json.dumps(b, indent=2) if args.json else format_run_budget(b))
        return 0 if b["valid"] else EXIT_FAIL
    cfg, _ = _resolve(args)
    b = model_budget(cfg)
    print(json.dumps(b, indent=2) if args.json else format_budget(b))
    return 0


def _code_bytes(args, run_dir) -> int:
    """--code-bytes, else the size of the train_gpt.py that `pgolf bundle` would emit for this run."""
    if args.code_bytes is not None:
        return args.code_bytes
    from pgolf.bundle import run_code_bytes

    return run_code_bytes(run_dir)


def cmd_quantize(args) -> int:
    from pgolf import runtime
    from pgolf.config import apply_overrides
    from pgolf.quant.run import quantize_run
    from pgolf.train.loop import load_run_config

    cfg = apply_overrides(load_run_config(args.run_dir), _quant_sets(args.sets, "quantize"))
    env = runtime.init(args.device)
    try:
        s = quantize_run(args.run_dir, env, code_bytes=_code_bytes(args, args.run_dir), progress=not args.json,
                         echo=not args.json, cfg=cfg)
        if env.is_main and args.json:
            print(json.dumps(s, indent=2, default=str))
        return 0 if s["within_limit"] else EXIT_FAIL
    finally:
        runtime.shutdown(env)


def _quant_sets(raw: list[str], verb: str) -> list:
    from pgolf.config import parse_set

    sets = parse_set(raw)
    bad = [o.key for o in sets if not o.key.startswith("quant.")]
    if bad:
        raise _usage(f"{verb} accepts --set for quant.* keys only, got {', '.join(bad)}")
    return sets


def cmd_run(args) -> int:
    import dataclasses
    from pathlib import Path

    from pgolf import runtime
    from pgolf.pipeline import run_record
    from pgolf.train.loop import default_run_dir

    cfg, _ = _resolve(args)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else []
    if seeds and args.run_dir:
        raise _usage("--seeds writes one run directory per seed under --out; drop --run-dir")
    env = runtime.init(args.device)
    try:
        if args.code_bytes is not None:
            code = args.code_bytes
        else:
            from pgolf.bundle import config_code_bytes

            code = config_code_bytes(cfg)
        jobs = ([(dataclasses.replace(cfg, seed=s), Path(args.out or f"runs/{cfg.preset}_seeds") / f"seed_{s}")
                 for s in seeds] if seeds else [(cfg, Path(args.run_dir or default_run_dir(cfg, env)))])
        ok = True
        for c, run_dir in jobs:
            res = run_record(c, env, run_dir, code_bytes=code, progress=not args.no_progress,
                             resume=bool(seeds) or args.resume)
            ok &= bool(res["within_limit"])
            if seeds and env.is_main and not (run_dir / "audit.json").is_file():
                from pgolf.audit.checks import audit, format_table  # tooling, rank 0, after the run

                rep = audit(run_dir)
                print(format_table(rep))
                ok &= rep["status"] != "FAIL"
            if env.is_main:
                for mode, r in res["modes"].items():
                    print(f"seed {c.seed} {mode}: val_bpb {r['val_bpb']:.6f} [{r['label']}]")
                print(f"seed {c.seed}: artifact {res['artifact_bytes']:,} + code {res['code_bytes']:,} = "
                      f"{res['total_bytes']:,} bytes ({'within' if res['within_limit'] else 'OVER'} the limit); "
                      f"run dir {run_dir}")
        if seeds and env.is_main:
            print(f"next: pgolf report {' '.join(str(d) for _, d in jobs)}")
        return 0 if ok else EXIT_FAIL
    finally:
        runtime.shutdown(env)


def cmd_bench_quant(args) -> int:
    from pgolf import runtime
    from pgolf.bench import bench_quant

    env = runtime.init(args.device)
    try:
        sets = _quant_sets(args.sets, "bench quant")
        modes = tuple(m.strip() for m in args.mode.split(","))
        res = bench_quant(args.run_dir, env, modes=modes, max_val_tokens=args.max_val_tokens,
                          progress=not args.json, sets=tuple(sets))
        if env.is_main:
            print(json.dumps(res, indent=2, default=str) if args.json else _format_bench_quant(res))
        return 0
    finally:
        runtime.shutdown(env)


def _format_bench_quant(r: dict) -> str:
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


def cmd_bench_train(args) -> int:
    from pgolf import runtime
    from pgolf.bench import bench_train

    cfg, _ = _resolve(args)
    env = runtime.init(args.device)
    try:
        res = bench_train(cfg, env, steps=args.steps)
        if env.is_main:
            print(json.dumps(res, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
        return 0
    finally:
        runtime.shutdown(env)


def cmd_bench_calib(args) -> int:
    from pgolf import runtime
    from pgolf.bench import bench_calib

    cfg, _ = _resolve(args)
    samplers = ("cache",) if args.cache_only else ("cache", "nocache")
    env = runtime.init(args.device)
    try:
        res = bench_calib(cfg, env, run_dir=args.run_dir, samplers=samplers)
        if env.is_main:
            print(json.dumps(res, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
        return 0
    finally:
        runtime.shutdown(env)


def cmd_eval(args) -> int:
    from pgolf import runtime
    from pgolf.scoring.evaluate import evaluate, format_results, parse_modes, save_nll

    cfg, source = _eval_config(args)
    modes = parse_modes(args.mode, cfg.score.modes)
    env = runtime.init(args.device)
    try:
        model, cfg, amp = _eval_model(source, cfg, env)
        nll = {} if args.save_nll else None
        res = evaluate(model, cfg, env, modes=modes, max_val_tokens=args.max_val_tokens, autocast_dtype=amp,
                       progress=not args.json, nll_out=nll, weights=source.label)
        if env.is_main:
            for mode, path in (save_nll(args.save_nll, nll) if nll is not None else {}).items():
                res[mode]["nll_file"] = path
            print(json.dumps(res, indent=2) if args.json else format_results(res))
        return 0
    finally:
        runtime.shutdown(env)


def cmd_bench_eval(args) -> int:
    from pgolf import runtime
    from pgolf.bench import bench_eval, format_bench_eval
    from pgolf.config import SCORE_MODES
    from pgolf.scoring.evaluate import parse_modes

    cfg, source = _eval_config(args)
    modes = parse_modes(args.mode, SCORE_MODES)
    env = runtime.init(args.device)
    try:
        model, cfg, amp = _eval_model(source, cfg, env)
        res = bench_eval(model, cfg, env, modes=modes, max_val_tokens=args.max_val_tokens, autocast_dtype=amp,
                         weights=source.label, progress=not args.json)
        if env.is_main:
            print(json.dumps(res, indent=2) if args.json else format_bench_eval(res))
        return 0
    finally:
        runtime.shutdown(env)


def _eval_config(args):
    """eval / bench eval: --run-dir or --artifact (+ --data, --tokenizer, --preset, --set) -> (cfg, source)."""
    from pgolf.scoring.evaluate import eval_config

    if args.run_dir and args.preset_given:
        raise _usage("--preset applies to --artifact only (a run directory has its own config.json)")
    data, tok = args.data, args.tokenizer
    if data is not None:  # a dataset dir or a prepared root; the tokenizer is derived from its layout if possible
        from pgolf.data.verify import find_layout

        layout = find_layout(data, tok)
        explicit = any(s.startswith("data.tokenizer_path=") for s in args.sets)
        data, tok = layout.dataset_dir, (tok if explicit else layout.tokenizer_path)
    return eval_config(run_dir=args.run_dir, artifact=args.artifact, data=data, tokenizer=tok, preset=args.preset,
                       sets=args.sets, environ=os.environ)


def _eval_model(source, cfg, env):
    """-> (model, cfg with the weights' model section, autocast dtype); warns when scoring float weights."""
    from pgolf.scoring.evaluate import load_eval_model
    from pgolf.train.loop import resolve_precision

    if source.kind == "float" and env.is_main:
        print(f"pgolf eval: WARNING: no artifact in {source.path.parent}; scoring {source.path.name}: "
              f"{source.label}", file=sys.stderr)
    model, cfg = load_eval_model(source, cfg, env.device)
    amp, _ = resolve_precision(cfg, env.device)  # the config's precision (bf16 autocast on GPU by default)
    return model, cfg, amp


def _add_eval_args(p: argparse.ArgumentParser, mode_help: str) -> None:
    p.add_argument("--run-dir", default=None,
                   help="a run directory: scores its artifact.pgolf, else its float weights (labelled as such)")
    p.add_argument("--artifact", default=None, metavar="FILE", help="an artifact (the model is rebuilt from it)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset dir with the val shards, or a prepared root (required with --artifact)")
    p.add_argument("--tokenizer", default=None, metavar="MODEL",
                   help="SentencePiece model (with --artifact: required unless found beside --data)")
    p.add_argument("--preset", default="record", help="with --artifact: the config preset (default record)")
    p.add_argument("--mode", default=None, help=mode_help)
    p.add_argument("--max-val-tokens", type=int, default=0, help="score only a prefix of the val stream")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override score.* / data.* keys (repeatable)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")


def _usage(msg: str):
    from pgolf.config import ConfigError

    return ConfigError(msg)


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf toolkit: data, config, and the V20 stack.")
    p.add_argument("--version", action="version", version=f"pgolf {__version__}")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks for user errors")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    # config
    c = verbs.add_parser("config", help="show, diff and list configuration presets")
    cs = c.add_subparsers(dest="sub", metavar="SUB", required=True)
    show = cs.add_parser("show", help="print the resolved config tree (preset + env + --set)")
    _add_config_args(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(fn=cmd_config_show)
    d = cs.add_parser("diff", help="keys that differ from the preset (or from --against PRESET)")
    _add_config_args(d)
    d.add_argument("--against", default=None, help="compare with another preset instead")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_config_diff)
    pr = cs.add_parser("presets", help="list presets")
    pr.set_defaults(fn=cmd_config_presets)

    # data
    dp = verbs.add_parser("data", help="prepare, download and verify challenge-format data")
    ds = dp.add_subparsers(dest="sub", metavar="SUB", required=True)
    prep = ds.add_parser("prepare", help="documents (JSONL) -> tokenizer + shards + manifest")
    prep.add_argument("--docs", action="append", required=True, metavar="FILE",
                      help="JSONL documents with a 'text' field (.xz/.gz ok); repeat to concatenate in order; "
                           "'default' = the embedded corpus (first 143 docs = validation)")
    prep.add_argument("--val-docs", type=int, required=True, help="the first N documents are the validation split")
    prep.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary to train")
    prep.add_argument("--out", required=True, help="output root (datasets/, tokenizers/, manifest.json)")
    prep.add_argument("--name", default="fineweb", help="name prefix (default 'fineweb', the challenge's)")
    prep.add_argument("--tag", default="10B", help="dataset tag: datasets/{name}{tag}_sp{V} (default '10B')")
    prep.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 1e8)")
    prep.add_argument("--tokenizer", default=None, metavar="MODEL", help="reuse this SentencePiece model")
    prep.add_argument("--threads", type=int, default=None)
    prep.add_argument("--force", action="store_true", help="replace existing shards / tokenizer in --out")
    prep.set_defaults(fn=cmd_data_prepare)

    ver = ds.add_parser("verify", help="check shards, sha256 and exact byte accounting of the val stream")
    ver.add_argument("--data", required=True, help="dataset dir (with shards) or a root with datasets/<name>/")
    ver.add_argument("--tokenizer", default=None, metavar="MODEL")
    ver.add_argument("--vocab-size", type=int, default=None, help="model vocab for the token range check")
    ver.add_argument("--no-sha", action="store_true", help="skip sha256 hashing")
    ver.add_argument("--threads", type=int, default=1)
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(fn=cmd_data_verify)

    fw = ds.add_parser("fineweb", help="download the challenge's published FineWeb shards (huggingface_hub)")
    fw.add_argument("--variant", default="sp1024")
    fw.add_argument("--train-shards", type=int, default=80)
    fw.add_argument("--out", required=True)
    fw.add_argument("--repo-id", default=None, help="default willdepueoai/parameter-golf or MATCHED_FINEWEB_REPO_ID")
    fw.add_argument("--remote-root", default=None, help="default 'datasets' or MATCHED_FINEWEB_REMOTE_ROOT_PREFIX")
    fw.add_argument("--revision", default=None, help="pin a repo revision (commit sha)")
    fw.set_defaults(fn=cmd_data_fineweb)

    # train
    tr = verbs.add_parser("train", help="train a model (torchrun for several processes)")
    _add_config_args(tr, preset_default="record")
    tr.add_argument("--run-dir", default=None, help="run directory (default runs/<run_id>)")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its checkpoint")
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    tr.set_defaults(fn=cmd_train)

    # eval
    ev = verbs.add_parser("eval", help="score an artifact (or a run) on the validation stream, any modes")
    _add_eval_args(ev, "comma-separated modes: plain, sliding, slot, ttt, ttt+slot (default: score.modes)")
    ev.add_argument("--save-nll", default=None, metavar="FILE.npy",
                    help="write per-target NLL (float64, stream order); with several modes one file each, "
                         "the mode inserted before the suffix: FILE.plain.npy, FILE.slot.npy, ...")
    ev.set_defaults(fn=cmd_eval)

    from pgolf.audit.checks import add_audit_parser
    from pgolf.bundle import add_bundle_parser
    from pgolf.report import add_report_parser

    add_bundle_parser(verbs)
    add_audit_parser(verbs)
    add_report_parser(verbs)

    # quantize / run
    def code_and_device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--code-bytes", type=int, default=None,
                       help="code bytes counted with the artifact (default: the size of the bundled train_gpt.py)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    qu = verbs.add_parser("quantize", help="a trained run -> the compressed artifact (GPTQ, pruning to the budget)")
    qu.add_argument("--run-dir", required=True, help="a finished training run directory")
    qu.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override quant.* keys of the run's config (calibration size, damping, bits, ...)")
    code_and_device(qu)
    qu.add_argument("--json", action="store_true")
    qu.set_defaults(fn=cmd_quantize)
    ru = verbs.add_parser("run", help="the record path in one process: train -> quantize -> score the artifact")
    _add_config_args(ru, preset_default="record")
    ru.add_argument("--run-dir", default=None, help="run directory (default runs/<run_id>)")
    ru.add_argument("--seeds", default=None, metavar="S1,S2,...",
                    help="one run per seed under --out, each audited (resumable: finished stages are not redone)")
    ru.add_argument("--out", default=None, help="with --seeds: parent directory (default runs/<preset>_seeds)")
    ru.add_argument("--resume", action="store_true", help="skip the stages --run-dir already finished")
    code_and_device(ru)
    ru.add_argument("--no-progress", action="store_true")
    ru.set_defaults(fn=cmd_run)

    # budget
    bu = verbs.add_parser("budget", help="parameter budget of a config, or code + artifact bytes of a run")
    _add_config_args(bu)
    bu.add_argument("--run-dir", default=None, help="measure this run's artifact + code against the limit")
    bu.add_argument("--code-bytes", type=int, default=None, help="with --run-dir: code bytes (default: bundle size)")
    bu.add_argument("--json", action="store_true")
    bu.set_defaults(fn=cmd_budget)

    # bench
    be = verbs.add_parser("bench", help="benchmarks that print figures")
    bs = be.add_subparsers(dest="sub", metavar="SUB", required=True)
    bt = bs.add_parser("train", help="training throughput (tokens/s) and peak memory")
    _add_config_args(bt)
    bt.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    bt.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(fn=cmd_bench_train)
    bev = bs.add_parser("eval", help="eval windows/s and seconds per mode; single-phase vs cascaded SLOT")
    _add_eval_args(bev, "comma-separated modes to time (default: all five)")
    bev.set_defaults(fn=cmd_bench_eval)
    bc = bs.add_parser("calib", help="self-generated calibration: KV-cached vs re-forward sampling speed")
    _add_config_args(bc)
    bc.add_argument("--run-dir", default=None, help="use this run's trained weights (default: fresh init)")
    bc.add_argument("--cache-only", action="store_true", help="skip the slow re-forward sampler")
    bc.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bc.add_argument("--json", action="store_true")
    bc.set_defaults(fn=cmd_bench_calib)
    bq = bs.add_parser("quant", help="float vs RTN vs GPTQ BPB, compressor sizes vs entropy, quantization time")
    bq.add_argument("--run-dir", required=True)
    bq.add_argument("--mode", default="plain", help="scoring modes for the BPB comparison (default plain)")
    bq.add_argument("--max-val-tokens", type=int, default=0)
    bq.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override quant.* keys (calibration size, clip rule, bits, ...)")
    bq.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bq.add_argument("--json", action="store_true")
    bq.set_defaults(fn=cmd_bench_quant)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.preset_given = "--preset" in raw
    fn: Callable = args.fn
    try:
        return int(fn(args) or 0)
    except BrokenPipeError:  # e.g. `pgolf config show | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("pgolf: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if args.traceback:
            raise
        from pgolf.config import ConfigError

        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
