"""`pgolf` command line: the verb table. Each verb lives with its tool and is a few lines over a library call.

User errors (every `pgolf.errors.PgolfError`: bad config keys, corrupt shards or artifacts, missing
files) print one line, `pgolf: error: ...`, and exit non-zero without a traceback (`--traceback`
shows it): 2 for configuration and usage errors, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from pgolf import __version__
from pgolf.config import config_hash, diff, flatten, to_dict
from pgolf.errors import PgolfError
from pgolf.presets import PRESETS, get_preset
from pgolf.tools import bench, budget, stages
from pgolf.tools.args import EXIT_FAIL, add_config_args, add_json, preset_given, resolve_args
from pgolf.tools.audit import add_audit_parser
from pgolf.tools.bundle import add_bundle_parser
from pgolf.tools.data import cli as data_cli
from pgolf.tools.report import add_report_parser


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) if v else "(empty)"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def cmd_config_show(args) -> int:
    cfg, applied = resolve_args(args)
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


def cmd_config_diff(args) -> int:
    cfg, applied = resolve_args(args)
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
    for name, fn in PRESETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name:10s} {doc[0] if doc else ''}")
    return 0


def _add_config_parsers(verbs) -> None:
    c = verbs.add_parser("config", help="show, diff and list configuration presets")
    cs = c.add_subparsers(dest="sub", metavar="SUB", required=True)
    show = cs.add_parser("show", help="print the resolved config tree (preset + env + --set)")
    add_config_args(show)
    add_json(show)
    show.set_defaults(fn=cmd_config_show)
    d = cs.add_parser("diff", help="keys that differ from the preset (or from --against PRESET)")
    add_config_args(d)
    d.add_argument("--against", default=None, help="compare with another preset instead")
    add_json(d)
    d.set_defaults(fn=cmd_config_diff)
    pr = cs.add_parser("presets", help="list presets")
    pr.set_defaults(fn=cmd_config_presets)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf toolkit: data, config, and the V20 stack.")
    p.add_argument("--version", action="version", version=f"pgolf {__version__}")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks for user errors")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    _add_config_parsers(verbs)
    data_cli.add_parsers(verbs)
    stages.add_parsers(verbs)
    add_bundle_parser(verbs)
    add_audit_parser(verbs)
    add_report_parser(verbs)
    budget.add_parser(verbs)
    bench.add_parsers(verbs, stages.add_eval_args)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.preset_given = preset_given(raw)
    fn: Callable = args.fn
    try:
        return int(fn(args) or 0)
    except BrokenPipeError:  # e.g. `pgolf config show | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("pgolf: interrupted", file=sys.stderr)
        return 130
    except (PgolfError, FileNotFoundError) as exc:
        if args.traceback:
            raise
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_FAIL)


if __name__ == "__main__":
    raise SystemExit(main())
