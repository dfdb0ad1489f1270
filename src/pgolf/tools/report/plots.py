"""The report's PNG plots (`PLOT_FILES`): training loss over steps and time, validation BPB over steps and
time, BPB per evaluation mode, submission bytes against the cap. matplotlib is imported when a plot is drawn."""

from __future__ import annotations

import math
import struct
from pathlib import Path

from pgolf.tools.report.fmt import finite, partial_what
from pgolf.tools.report.runs import SeedRun

PLOT_FILES = {
    "train_loss": "train_loss.png",
    "val_bpb": "val_bpb.png",
    "bpb_by_mode": "bpb_by_mode.png",
    "artifact_bytes": "artifact_bytes.png",
}
PLOT_DPI = 110
PLOT_SIZE = {"train_loss": (12.0, 4.8), "val_bpb": (12.0, 4.8), "bpb_by_mode": (8.0, 5.0),
             "artifact_bytes": (12.0, 5.0)}
"""Figure sizes in inches; the PNGs are (w * PLOT_DPI) x (h * PLOT_DPI) pixels."""


def _new_figure(key: str, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE[key], dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_axisbelow(True)
    return fig, axes


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _figure_legend(fig, handles, labels) -> None:
    """One legend for all panels, below them (it never hides a curve); then tight_layout above it."""
    if handles:
        ncol = min(len(handles), 6)
        rows = math.ceil(len(handles) / ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.045 + 0.045 * rows, 1, 1))
    else:
        fig.tight_layout()


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_train_loss(runs: list[SeedRun], path: Path, preset: str) -> None:
    fig, (a1, a2) = _new_figure("train_loss", 2)
    smoothed = False
    for run, c in zip(runs, _colors(len(runs)), strict=True):
        tr = [m for m in run.metrics if m.get("kind") == "train" and finite(m.get("train_loss"))]
        if not tr:
            continue
        steps = [m["step"] for m in tr]
        times = [m.get("train_time_s", math.nan) for m in tr]
        loss = [m["train_loss"] for m in tr]
        if len(tr) > 200:
            smoothed = True
            k = max(2, len(tr) // 50)
            sm = _smooth(loss, k)
            for ax, x in ((a1, steps), (a2, times)):
                ax.plot(x, loss, color=c, alpha=0.2, linewidth=0.6)
                ax.plot(x, sm, color=c, linewidth=1.6, label=f"seed {run.seed}")
        else:
            for ax, x in ((a1, steps), (a2, times)):
                ax.plot(x, loss, color=c, linewidth=1.4, marker="." if len(tr) <= 60 else None,
                        label=f"seed {run.seed}")
    a1.set_xlabel("training step")
    a2.set_xlabel("training time (s, wallclock)")
    for ax, t in ((a1, "by step"), (a2, "by training time")):
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title(f"Training loss {t}")
    note = " (thin: raw, bold: moving average)" if smoothed else ""
    fig.suptitle(f"{preset}: training loss per seed{note}", fontsize=12)
    _figure_legend(fig, *a1.get_legend_handles_labels())
    fig.savefig(path)


def plot_val_bpb(runs: list[SeedRun], path: Path, preset: str) -> None:
    from matplotlib.lines import Line2D

    fig, (a1, a2) = _new_figure("val_bpb", 2)
    any_raw = False
    for run, c in zip(runs, _colors(len(runs)), strict=True):
        vals = [m for m in run.metrics if m.get("kind") == "val" and finite(m.get("val_bpb"))]
        if not vals:
            continue
        has_ema = any(m.get("tag") == "final_ema" for m in vals)
        main = [m for m in vals if not (has_ema and m.get("tag") == "final_raw")]
        raw = [m for m in vals if has_ema and m.get("tag") == "final_raw"]
        any_raw = any_raw or bool(raw)
        for ax, key in ((a1, "step"), (a2, "train_time_s")):
            ax.plot([m.get(key, math.nan) for m in main], [m["val_bpb"] for m in main], color=c, marker="o",
                    markersize=4, linewidth=1.4, label=f"seed {run.seed}")
            if raw:
                ax.plot([m.get(key, math.nan) for m in raw], [m["val_bpb"] for m in raw], color=c, marker="x",
                        linestyle="none", markersize=7)
    a1.set_xlabel("training step")
    a2.set_xlabel("training time (s, wallclock)")
    for ax, t in ((a1, "by step"), (a2, "by training time")):
        ax.set_ylabel("validation BPB (bits/byte)")
        ax.set_title(f"Validation BPB {t}")
    handles, labels = a1.get_legend_handles_labels()
    if any_raw:
        handles.append(Line2D([], [], color="gray", marker="x", linestyle="none", markersize=7))
        labels.append("final weights before EMA (the line ends at the EMA weights)")
    fig.suptitle(f"{preset}: validation BPB during training (float weights, before quantization)", fontsize=12)
    _figure_legend(fig, handles, labels)
    fig.savefig(path)


def plot_bpb_by_mode(rep: dict, path: Path) -> None:
    fig, (ax,) = _new_figure("bpb_by_mode", 1)
    modes = list(rep["modes"])
    facts = rep["runs"]
    colors = _colors(len(facts))
    n = len(facts)
    for j, (f, c) in enumerate(zip(facts, colors, strict=True)):
        off = (j - (n - 1) / 2) * (0.25 / max(n - 1, 1)) if n > 1 else 0.0
        xs = [i + off for i, m in enumerate(modes) if m in f["modes"]]
        ys = [f["modes"][m]["val_bpb"] for m in modes if m in f["modes"]]
        ax.scatter(xs, ys, color=c, s=36, zorder=3, label=f"seed {f['seed']}")
    for i, m in enumerate(modes):
        s = rep["modes"][m]
        sd = s["val_bpb_std"] if math.isfinite(s["val_bpb_std"]) else 0.0
        ax.errorbar([i + 0.3], [s["val_bpb_mean"]], yerr=[sd], fmt="D", color="black", capsize=5, markersize=6,
                    zorder=4, label="mean ± std" if i == 0 else None)
        ax.annotate(f"{s['val_bpb_mean']:.4f}", (i + 0.36, s["val_bpb_mean"]), fontsize=9, va="center")
    base = rep.get("baseline")
    if base and base.get("val_bpb_mean"):
        ax.axhline(base["val_bpb_mean"], color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"baseline mean {base['val_bpb_mean']:.4f}")
    ax.set_xticks(range(len(modes)))
    ax.set_xticklabels([f"{m}\n(primary)" if m == rep["primary_mode"] else m for m in modes])
    ax.set_xlim(-0.6, len(modes) - 0.2)
    ax.set_xlabel("evaluation mode")
    ax.set_ylabel("val BPB of the quantized artifact (bits/byte)")
    title = "Artifact score per evaluation mode"
    if rep["partial"]:
        title += f"\n(partial score, {partial_what(rep['partial'])}: not a challenge score)"
    ax.set_title(title)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def plot_artifact_bytes(rep: dict, path: Path) -> None:
    from matplotlib.ticker import FuncFormatter

    fig, (ax, hx) = _new_figure("artifact_bytes", 2)
    facts = rep["runs"]
    cap = max(f["limit_bytes"] for f in facts)
    xs = list(range(len(facts)))
    model = [f["model_bytes"] or 0 for f in facts]
    code = [f["code_bytes"] or 0 for f in facts]
    totals = [f["total_bytes"] for f in facts]
    seeds = [f"seed {f['seed']}" for f in facts]
    ax.bar(xs, model, color="tab:blue", width=0.6, label="compressed model")
    ax.bar(xs, code, bottom=model, color="tab:orange", width=0.6, label="code (train_gpt.py)")
    ax.axhline(cap, color="tab:red", linestyle="--", linewidth=1.5, label=f"cap {cap:,} bytes")
    for x, t, m, c in zip(xs, totals, model, code, strict=True):
        if t > 0.45 * cap:  # tall bar: the total runs up inside it (the split is in the tables)
            ax.annotate(f"{t:,} bytes", (x, t / 2), ha="center", va="center", rotation=90, fontsize=9,
                        color="white", fontweight="bold" if t > cap else "normal")
        else:
            ax.annotate(f"{t:,} total\nmodel {m:,}\ncode {c:,}", (x, t), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(cap, *totals) * 1.4)
    ax.set_xticks(xs)
    ax.set_xticklabels(seeds)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}"))
    ax.set_ylabel("submission size (million bytes, decimal)")
    ax.set_xlabel("run")
    ax.set_title("Submission size (code + compressed model)")
    ax.legend(fontsize=8.5, loc="upper center", ncol=2)

    room = [cap - t for t in totals]
    hx.bar(xs, room, width=0.6, color=["tab:green" if r >= 0 else "tab:red" for r in room])
    hx.axhline(0, color="black", linewidth=1.0)
    for x, r, t in zip(xs, room, totals, strict=True):
        head = f"{r:,} byte{'' if r == 1 else 's'} left" if r >= 0 else f"OVER by {-r:,} bytes"
        label = f"{head}\n(the submission uses {t / cap:.2%} of the cap)"
        hx.annotate(label, (x, r), xytext=(0, 4 if r >= 0 else -4), textcoords="offset points", ha="center",
                    va="bottom" if r >= 0 else "top", fontsize=8.5, color="black" if r >= 0 else "tab:red")
    lo, hi = min(0, *room), max(0, *room)
    span = (hi - lo) or cap * 0.01
    hx.set_ylim(lo - 0.25 * span * (lo < 0), hi + 0.25 * span)
    hx.set_xticks(xs)
    hx.set_xticklabels(seeds)
    hx.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    hx.set_ylabel("headroom: cap - submission size (bytes)")
    hx.set_xlabel("run")
    over = sum(r < 0 for r in room)
    hx.set_title("Headroom under the cap" + (f": {over} seed(s) OVER" if over else ""))
    fig.suptitle(f"Submission bytes against the {cap:,}-byte cap", fontsize=12)
    fig.tight_layout()
    fig.savefig(path)


def write_plots(rep: dict, runs: list[SeedRun], out: Path) -> dict[str, str]:
    """Every plot of PLOT_FILES into `out`: the curves from the runs' metrics, the rest from the report."""
    out.mkdir(parents=True, exist_ok=True)
    plot_train_loss(runs, out / PLOT_FILES["train_loss"], rep["preset"])
    plot_val_bpb(runs, out / PLOT_FILES["val_bpb"], rep["preset"])
    plot_bpb_by_mode(rep, out / PLOT_FILES["bpb_by_mode"])
    plot_artifact_bytes(rep, out / PLOT_FILES["artifact_bytes"])
    return dict(PLOT_FILES)


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG file from its IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    return struct.unpack(">II", head[16:24])
