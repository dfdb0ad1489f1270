"""What `pgolf eval` and `pgolf bench eval` need around `scoring.evaluate`: which weights to score and
with which config (an artifact, or a run's float weights labelled as such), the --mode list, the human
form of the results and the --save-nll files.

Weights: `eval_config` + `load_eval_model` find what to score: an artifact (`--artifact`, or a run
directory's artifact.pgolf), else a run's float weights model_final.pt, labelled FLOAT_WEIGHTS_LABEL so
that a float score is never mistaken for the artifact's. `save_nll` writes per-target NLL arrays for
`pgolf eval --save-nll FILE.npy` (several modes: FILE.<mode>.npy). A run directory's artifact is checked
against the model_final.pt it was made from (a stale one is refused), and the arguments before any work
(--max-val-tokens 0 or >= 2, --save-nll a writable file: `check_max_val_tokens`, `check_nll_path`), and the
tokenizer against the weights' vocabulary (`eval_model`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.config import SCORE_MODES, ConfigError, RunConfig, apply_overrides, parse_set
from pgolf.data.tokenizer import check_vocab, load_tokenizer
from pgolf.files import atomic_open
from pgolf.presets import resolve
from pgolf.quant.artifact import load_artifact
from pgolf.quant.stage import check_run_artifact
from pgolf.rundir import ARTIFACT, MODEL_FINAL, Run, load_config, load_final_weights
from pgolf.runtime import score_precision
from pgolf.tools.args import usage
from pgolf.tools.data.verify import find_layout

FLOAT_WEIGHTS_LABEL = "float weights (not the artifact)"


def parse_modes(text: str | None, default: Iterable[str]) -> tuple[str, ...]:
    """'plain,slot' -> ('plain', 'slot'); None or '' -> default. Unknown or repeated modes are errors."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip()) if text else tuple(default)
    bad = [m for m in modes if m not in SCORE_MODES]
    if bad:
        raise ConfigError(f"--mode: unknown mode(s) {bad}; choose from {', '.join(SCORE_MODES)}")
    if len(set(modes)) != len(modes) or not modes:
        raise ConfigError(f"--mode: give each mode once, got {list(modes)}")
    return modes


def format_results(res: Mapping[str, Mapping]) -> str:
    """The human form of an evaluate() result: one key:value line per mode, then the budget line."""
    lines = []
    for mode, r in res.items():
        extra = f" [{r['weights']}]" if r.get("weights") == FLOAT_WEIGHTS_LABEL else ""
        phases = "".join(f" {k}_time:{v * 1000:.0f}ms" for k, v in r.get("seconds_phases", {}).items())
        audit = "" if "audit" not in r or r["audit"]["ok"] else f" ledger_audit:FAILED({r['audit']['n_problems']})"
        nll = f" nll_file:{r['nll_file']}" if "nll_file" in r else ""
        lines.append(f"{mode} val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f} targets:{r['targets']} "
                     f"bytes:{r['bytes']} eval_time:{r['seconds'] * 1000:.0f}ms{phases}{audit}{nll} "
                     f"[{r['label']}]{extra}")
    if res:
        r = next(iter(res.values()))
        over = " OVER BUDGET" if r["eval_over_budget"] else ""
        lines.append(f"eval_time_total:{r['eval_seconds_total']:.1f}s budget:{r['eval_seconds_limit']:g}s{over} "
                     f"weights:{r['weights'] or 'in-memory model'}")
    return "\n".join(lines)


def nll_paths(path: str | Path, modes: Iterable[str]) -> dict[str, Path]:
    """Where --save-nll writes: the file itself for one mode; for several, the mode name inserted
    before the suffix (nll.npy -> nll.plain.npy, nll.slot.npy, nll.ttt+slot.npy, ...)."""
    p = Path(path)
    modes = list(modes)
    if len(modes) == 1:
        return {modes[0]: p}
    return {m: p.with_name(f"{p.stem}.{m}{p.suffix}") for m in modes}


def save_nll(path: str | Path, nll: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Write each mode's per-target NLL (float64 .npy, stream order) to nll_paths(); -> {mode: file}."""
    out = {}
    for mode, p in nll_paths(path, nll).items():
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(p) as fh:  # exact name: np.save(str) would append .npy to other suffixes
            np.save(fh, np.asarray(nll[mode], dtype=np.float64))
        out[mode] = str(p)
    return out


def check_max_val_tokens(n: int) -> None:
    if n and n < 2:
        raise usage(f"--max-val-tokens must be 0 (the whole stream) or >= 2 (n tokens hold n - 1 targets), got {n}")


def check_nll_path(save_nll_path: str, modes: Iterable[str]) -> None:
    """Refuse, before any scoring, NLL files that could not be written (a directory, an unwritable place)."""
    if not save_nll_path or save_nll_path.endswith(("/", os.sep)):
        raise usage(f"--save-nll {save_nll_path!r}: give a file name (FILE.npy), not a directory")
    for p in nll_paths(save_nll_path, modes).values():
        parent = next((d for d in p.parents if d.exists()), Path("."))
        if p.is_dir():
            raise usage(f"--save-nll {p}: is a directory; give a file name (FILE.npy)")
        if p.exists() and not os.access(p, os.W_OK):
            raise usage(f"--save-nll {p}: the file is not writable")
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise usage(f"--save-nll {p}: cannot create it ({parent} is not a writable directory)")


# ------------------------------------------------------------------------------------------------ weights


@dataclass(frozen=True)
class EvalSource:
    """What `pgolf eval` scores: an artifact (kind "artifact") or a run's float weights (kind "float")."""

    kind: str
    path: Path

    @property
    def label(self) -> str:
        return f"artifact {self.path}" if self.kind == "artifact" else FLOAT_WEIGHTS_LABEL


def eval_config(*, run_dir: str | Path | None = None, artifact: str | Path | None = None,
                data: str | Path | None = None, tokenizer: str | Path | None = None, preset: str = "record",
                sets: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> tuple[RunConfig, EvalSource]:
    """The config and the weights for an evaluation (the model section comes from the weights later).

    run_dir: the run's config.json; its RUN_ARTIFACT if present, else model_final.pt (float weights).
    artifact: the preset (+ PGOLF_ environ + sets) for everything but the model; needs data and a
    tokenizer (argument or --set data.tokenizer_path). data: a dataset dir (validation shards) and
    tokenizer: a SentencePiece model; both override data.* when given. sets: score.* and data.* only.
    """
    sets = list(sets)
    parsed = parse_set(sets)
    bad = [o.key for o in parsed if not o.key.startswith(("score.", "data."))]
    if bad:
        raise ConfigError(f"eval accepts --set for score.* and data.* keys only, got {', '.join(bad)}")
    if (run_dir is None) == (artifact is None):
        raise ConfigError("eval needs exactly one of --run-dir DIR or --artifact FILE")
    if run_dir is not None:
        cfg = apply_overrides(load_config(run_dir), parsed)
        art = Path(run_dir) / ARTIFACT
        if art.is_file():
            check_run_artifact(Run(run_dir))  # refuses an artifact made from other weights than model_final.pt
        source = EvalSource("artifact", art) if art.is_file() else EvalSource("float", Path(run_dir) / MODEL_FINAL)
    else:
        if data is None:
            raise ConfigError("--artifact needs --data DIR (the dataset with the validation shards)")
        if tokenizer is None and not any(o.key == "data.tokenizer_path" for o in parsed):
            raise ConfigError(f"--tokenizer MODEL is required with --artifact (none found beside {data})")
        if not Path(artifact).is_file():
            raise FileNotFoundError(f"{artifact}: no such artifact")
        cfg, _ = resolve(preset, sets, environ if environ is not None else {})
        source = EvalSource("artifact", Path(artifact))
    d = cfg.data
    if data is not None:
        d = dataclasses.replace(d, path=str(data))
    if tokenizer is not None:
        d = dataclasses.replace(d, tokenizer_path=str(tokenizer))
    return dataclasses.replace(cfg, data=d), source


def load_eval_model(source: EvalSource, cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module, RunConfig]:
    """-> (model in eval mode on device, cfg with the model section the weights were built from)."""
    if source.kind == "artifact":
        model = load_artifact(source.path, device)
        return model, dataclasses.replace(cfg, model=model.cfg)
    return load_final_weights(source.path.parent, cfg, device).eval(), cfg


def eval_source(args):
    """eval / bench eval: --run-dir or --artifact (+ --data, --tokenizer, --preset, --set) -> (cfg, source)."""
    if args.run_dir and args.preset_given:
        raise usage("--preset applies to --artifact only (a run directory has its own config.json)")
    check_max_val_tokens(args.max_val_tokens)
    data, tok = args.data, args.tokenizer
    if data is not None:  # a dataset dir or a prepared root; the tokenizer is derived from its layout if possible
        layout = find_layout(data, tok)
        explicit = any(s.startswith("data.tokenizer_path=") for s in args.sets)
        data, tok = layout.dataset_dir, (tok if explicit else layout.tokenizer_path)
    return eval_config(run_dir=args.run_dir, artifact=args.artifact, data=data, tokenizer=tok, preset=args.preset,
                       sets=args.sets, environ=os.environ)


def eval_model(source, cfg, env):
    """-> (model, cfg with the weights' model section, autocast dtype); warns when scoring float weights."""
    model, cfg = load_eval_model(source, cfg, env.device)  # first: weights that cannot be read are the error
    # A tokenizer with more pieces than the model has logits is another tokenizer: its byte tables would
    # score the model's tokens with other pieces' bytes (a silently wrong BPB).
    check_vocab(load_tokenizer(cfg.data.tokenizer_path), cfg.data.tokenizer_path, cfg.model.vocab_size)
    if source.kind == "float" and env.is_main:
        print(f"pgolf eval: WARNING: no artifact in {source.path.parent}; scoring {source.path.name}: "
              f"{source.label}", file=sys.stderr)
    prec = score_precision(cfg, env)  # score.precision, decided on this machine
    return model, cfg, prec.dtype
