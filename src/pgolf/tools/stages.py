"""The stage verbs: `pgolf train`, `quantize`, `run` (train -> quantize -> score, optionally per seed with an
audit) and `eval`. Each is argument handling around one library call."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pgolf.config import SCORE_MODES, apply_overrides
from pgolf.pipeline import run_record
from pgolf.quant.stage import quantize_run
from pgolf.rundir import AUDIT, default_run_dir, load_config
from pgolf.runtime import session
from pgolf.scoring.evaluate import evaluate
from pgolf.tools.args import (
    EXIT_FAIL,
    add_config_args,
    add_device,
    add_json,
    add_sets,
    prefixed_sets,
    resolve_args,
    usage,
)
from pgolf.tools.audit import audit, format_table
from pgolf.tools.bundle import config_code_bytes, run_code_bytes
from pgolf.tools.evaltool import check_nll_path, eval_model, eval_source, format_results, parse_modes, save_nll
from pgolf.train.loop import train


def code_bytes_for(args, run_dir) -> int:
    """--code-bytes, else the size of the train_gpt.py that `pgolf bundle` would emit for this run."""
    return args.code_bytes if args.code_bytes is not None else run_code_bytes(run_dir)


def cmd_train(args) -> int:
    with session(args.device) as env:
        if args.resume:
            if args.sets or args.seed is not None or args.preset_given:
                raise usage("--resume continues a run with its own config.json; drop --preset/--set/--seed")
            cfg = load_config(args.resume)
            run_dir = args.resume
        else:
            cfg, _ = resolve_args(args)
            run_dir = args.run_dir or default_run_dir(cfg, env)
        res = train(cfg, env, run_dir, resume=bool(args.resume), progress=not args.no_progress)
        if env.is_main:
            v = res.val or {}
            print(f"train: {res.steps} steps in {res.train_seconds:.1f}s ({res.stopped_by}); "
                  f"val_bpb {v.get('val_bpb', float('nan')):.4f} (pre-quantization); run dir {res.run_dir}")
    return 0


def cmd_quantize(args) -> int:
    cfg = apply_overrides(load_config(args.run_dir), prefixed_sets(args.sets, "quantize", ("quant.",)))
    with session(args.device) as env:
        s = quantize_run(args.run_dir, env, code_bytes=code_bytes_for(args, args.run_dir), progress=not args.json,
                         echo=not args.json, cfg=cfg)
        if env.is_main and args.json:
            print(json.dumps(s, indent=2, default=str))
    return 0 if s["within_limit"] else EXIT_FAIL


def cmd_run(args) -> int:
    cfg, _ = resolve_args(args)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else []
    if seeds and args.run_dir:
        raise usage("--seeds writes one run directory per seed under --out; drop --run-dir")
    code = args.code_bytes if args.code_bytes is not None else config_code_bytes(cfg)
    ok = True
    with session(args.device) as env:
        jobs = ([(dataclasses.replace(cfg, seed=s), Path(args.out or f"runs/{cfg.preset}_seeds") / f"seed_{s}")
                 for s in seeds] if seeds else [(cfg, Path(args.run_dir or default_run_dir(cfg, env)))])
        for c, run_dir in jobs:
            res = run_record(c, env, run_dir, code_bytes=code, progress=not args.no_progress,
                             resume=bool(seeds) or args.resume)
            ok &= bool(res["within_limit"])
            if seeds and env.is_main and not (run_dir / AUDIT).is_file():
                rep = audit(run_dir)  # tooling, rank 0, after the run
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


def cmd_eval(args) -> int:
    cfg, source = eval_source(args)
    modes = parse_modes(args.mode, cfg.score.modes)
    if args.save_nll is not None:
        check_nll_path(args.save_nll, modes)
    with session(args.device) as env:
        model, cfg, amp = eval_model(source, cfg, env)
        nll = {} if args.save_nll else None
        res = evaluate(model, cfg, env, modes=modes, max_val_tokens=args.max_val_tokens, autocast_dtype=amp,
                       progress=not args.json, nll_out=nll, weights=source.label)
        if env.is_main:
            for mode, path in (save_nll(args.save_nll, nll) if nll is not None else {}).items():
                res[mode]["nll_file"] = path
            print(json.dumps(res, indent=2) if args.json else format_results(res))
    return 0


def add_eval_args(p, mode_help: str) -> None:
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
    add_sets(p, "override score.* / data.* keys (repeatable)")
    add_device(p)
    add_json(p)


def add_parsers(verbs) -> None:
    tr = verbs.add_parser("train", help="train a model (torchrun for several processes)")
    add_config_args(tr, preset_default="record")
    tr.add_argument("--run-dir", default=None, help="run directory (default runs/<run_id>)")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its checkpoint")
    add_device(tr)
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    tr.set_defaults(fn=cmd_train)

    ev = verbs.add_parser("eval", help="score an artifact (or a run) on the validation stream, any modes")
    add_eval_args(ev, f"comma-separated modes: {', '.join(SCORE_MODES)} (default: score.modes)")
    ev.add_argument("--save-nll", default=None, metavar="FILE.npy",
                    help="write per-target NLL (float64, stream order); with several modes one file each, "
                         "the mode inserted before the suffix: FILE.plain.npy, FILE.slot.npy, ...")
    ev.set_defaults(fn=cmd_eval)

    def code_and_device(p) -> None:
        p.add_argument("--code-bytes", type=int, default=None,
                       help="code bytes counted with the artifact (default: the size of the bundled train_gpt.py)")
        add_device(p)

    qu = verbs.add_parser("quantize", help="a trained run -> the compressed artifact (GPTQ, pruning to the budget)")
    qu.add_argument("--run-dir", required=True, help="a finished training run directory")
    add_sets(qu, "override quant.* keys of the run's config (calibration size, damping, bits, ...)")
    code_and_device(qu)
    add_json(qu)
    qu.set_defaults(fn=cmd_quantize)
    ru = verbs.add_parser("run", help="the record path in one process: train -> quantize -> score the artifact")
    add_config_args(ru, preset_default="record")
    ru.add_argument("--run-dir", default=None, help="run directory (default runs/<run_id>)")
    ru.add_argument("--seeds", default=None, metavar="S1,S2,...",
                    help="one run per seed under --out, each audited (resumable: finished stages are not redone)")
    ru.add_argument("--out", default=None, help="with --seeds: parent directory (default runs/<preset>_seeds)")
    ru.add_argument("--resume", action="store_true", help="skip the stages --run-dir already finished")
    code_and_device(ru)
    ru.add_argument("--no-progress", action="store_true")
    ru.set_defaults(fn=cmd_run)
