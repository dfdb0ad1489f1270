"""`pgolf bundle`: amalgamate pgolf's runtime modules into one self-contained `train_gpt.py`.

The challenge ships a single file, and its bytes count towards the 16,000,000-byte cap. The bundle keeps
the package's module boundaries instead of flattening them: every runtime module's source is embedded in a
dict and served to `import` by a tiny meta-path hook, so `from pgolf.x import y` works unchanged inside
the file and nothing needs rewriting. By default the sources are embedded without their docstrings and
comments, every line kept (so tracebacks name the repository's line numbers); `--keep-docs` embeds them
verbatim. bundle.json records which.

    closure.py   which modules: the import closure of the entry point, computed with ast
    strip.py     docstrings and comments out, line numbers kept, checked to be the same AST
    template.py  the emitted text (header, _SOURCES, importer, main) and its lzma+base85 form
    build.py     Bundle, build_bundle, and the code bytes a config or a run dir counts
    record.py    the record folder (train_gpt.py, bundle.json, requirements.txt, submission.json, README)
    here         the `pgolf bundle` verb
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pgolf.config import ConfigError
from pgolf.presets import resolve
from pgolf.rundir import load_config
from pgolf.tools.bundle.build import (
    Bundle,
    build_bundle,
    bundle_overrides,
    code_bytes,
    config_code_bytes,
    run_code_bytes,
)
from pgolf.tools.bundle.closure import (
    ALLOWED_THIRD_PARTY,
    TOOLING_PREFIX,
    BundleError,
    ModuleInfo,
    module_path,
    runtime_closure,
    scan_imports,
    tooling_in,
)
from pgolf.tools.bundle.record import RECORD_FILES, compliance_label, write_record
from pgolf.tools.bundle.strip import StripError, check_stripped, strip_checked, strip_source, without_docstrings
from pgolf.tools.bundle.template import BUNDLE_FILE, VIRTUAL_ROOT, compress_source, embedded_sources, render

__all__ = [
    "ALLOWED_THIRD_PARTY", "BUNDLE_FILE", "RECORD_FILES", "TOOLING_PREFIX", "VIRTUAL_ROOT",
    "Bundle", "BundleError", "ModuleInfo", "StripError",
    "add_bundle_parser", "build_bundle", "bundle_overrides", "check_stripped", "cmd_bundle", "code_bytes",
    "compliance_label", "compress_source", "config_code_bytes", "embedded_sources", "module_path", "render",
    "run_code_bytes", "runtime_closure", "scan_imports", "strip_checked", "strip_source", "tooling_in",
    "without_docstrings", "write_record",
]


def cmd_bundle(args) -> int:
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None:
        if not run_dir.is_dir():
            raise ConfigError(f"--run-dir {run_dir}: no such directory")
        if args.sets:
            raise ConfigError("--set applies to --preset bundles; a run dir is bundled with its own config.json")
        cfg = load_config(run_dir)
        if args.preset and args.preset != cfg.preset:
            raise ConfigError(f"--preset {args.preset} contradicts the run's preset {cfg.preset!r} ({run_dir})")
    elif args.preset:
        # The bundler's own environment is not baked in: PGOLF_* variables are read when train_gpt.py runs.
        cfg, _ = resolve(args.preset, args.sets, env={})
    else:
        raise ConfigError("give --run-dir RUN_DIR or --preset NAME")
    b = build_bundle(cfg, strip=not args.keep_docs)
    meta = write_record(b, Path(args.out), compress=args.compress, force=args.force, run_dir=run_dir,
                        name=args.name, author=args.author, github_id=args.github_id)
    s = b.sizes
    print(f"bundle: {len(b.modules)} runtime modules ({b.source_form}), preset {b.preset}, "
          f"{len(b.overrides)} override(s), config_hash {meta['config_hash'][:16]}")
    print(f"train_gpt.py: readable {s['readable']:,} bytes, lzma+base85 {s['compressed']:,} bytes -> wrote "
          f"{'compressed' if meta['compressed'] else 'readable'}")
    for t, by in meta["tooling_in_closure"].items():
        print(f"warning: tooling module {t} is in the runtime closure (imported by {by})")
    print(f"code_bytes: {meta['code_bytes']}")
    rc = 0
    if meta["model_bytes"] is not None:
        total, limit = meta["total_bytes"], meta["limit_bytes"]
        verdict = (f"ok, {limit - total:,} to spare" if total <= limit
                   else f"INVALID: over budget by {total - limit:,}")
        print(f"total_bytes: {total} = code {meta['code_bytes']:,} + model {meta['model_bytes']:,} "
              f"(limit {limit:,}: {verdict})")
        rc = 0 if total <= limit else 1
    print(f"record: {args.out} ({', '.join(RECORD_FILES)})")
    return rc


def add_bundle_parser(verbs) -> argparse.ArgumentParser:
    """Add the `bundle` verb to the CLI's subparsers."""
    p = verbs.add_parser("bundle", help="emit a challenge record folder with a single-file train_gpt.py")
    p.add_argument("--run-dir", default=None, help="bundle this run's config (and count its artifact.pgolf)")
    p.add_argument("--preset", default=None, help="bundle a preset (without --run-dir)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="with --preset: override a config key in the bundled defaults (repeatable)")
    p.add_argument("--out", required=True, help="record folder to write")
    p.add_argument("--compress", action=argparse.BooleanOptionalAction, default=None,
                   help="lzma+base85 self-extracting train_gpt.py (default: whichever form is smaller)")
    p.add_argument("--keep-docs", action="store_true",
                   help="embed the modules verbatim (default: without docstrings and comments, line numbers kept)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an existing record folder")
    p.add_argument("--name", default="", help="submission.json name")
    p.add_argument("--author", default="", help="submission.json author")
    p.add_argument("--github-id", default="", help="submission.json github_id")
    p.set_defaults(fn=cmd_bundle)
    return p
