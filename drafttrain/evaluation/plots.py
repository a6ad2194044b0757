"""PNG plots of an eval report: speedup over `ar` per method with its 95% interval, and, when
speculative cascades ran, their quality/speed curve (`lossy-curve.png`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RULE_COLORS = {"chow": "#4c72b0", "diff": "#dd8452", "opt": "#55a868", "token": "#c44e52"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    """Write the figure atomically (a reader never sees half a PNG)."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    figure.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    return path


def _title(report: dict) -> str:
    return (f"{Path(report['target']).name}: {report['prompts']} prompts, "
            f"{report['max_new_tokens']} new tokens, T={report['temperature']}")


def write_plots(report: dict, out_dir: Path) -> Path:
    plt = _pyplot()
    names = list(report["methods"])
    entries = [report["methods"][name] for name in names]
    speedups = [e["speedup_vs_ar"] or 0.0 for e in entries]
    low = [s - (e["speedup_ci95"] or [s, s])[0] for s, e in zip(speedups, entries)]
    high = [(e["speedup_ci95"] or [s, s])[1] - s for s, e in zip(speedups, entries)]
    slanted = any(entry.get("deferral") for entry in entries)  # many long speccascade-rule@alpha names
    figure, axes = plt.subplots(figsize=((0.45 if slanted else 1.2) * len(names) + 3, 5.0 if slanted else 3.5))
    axes.bar(names, speedups, yerr=[low, high], capsize=4, color="#4c72b0")
    axes.axhline(1.0, color="gray", linewidth=1, linestyle="--")
    axes.set_ylabel("speedup over ar (tokens/s)")
    axes.set_title(_title(report), fontsize=9)
    if slanted:
        plt.setp(axes.get_xticklabels(), rotation=60, ha="right", fontsize=8)
    figure.tight_layout()
    path = _save(figure, out_dir / "speedup.png")
    plt.close(figure)
    write_lossy_curve(report, out_dir)
    return path


def _speed(entry: dict, use_speedup: bool) -> float:
    return entry["speedup_vs_ar"] if use_speedup else entry["tokens_per_s"]


def _curves(report: dict) -> dict[str, list[tuple[float, dict]]]:
    """Each deferral rule's runs as (alpha, entry), by increasing alpha."""
    curves: dict[str, list[tuple[float, dict]]] = {}
    for entry in report["methods"].values():
        if entry.get("deferral"):
            curves.setdefault(entry["deferral"]["rule"], []).append((entry["deferral"]["alpha"], entry))
    return {rule: sorted(points, key=lambda point: point[0]) for rule, points in curves.items()}


def _quality_panels(report: dict) -> list[tuple[str, str]]:
    """(report field, axis label) of each quality panel that has data."""
    panels = [("exact_match_rate", "exact match with ar (fraction of prompts)"),
              ("target_loglik", "target log-likelihood per token")]
    return [(key, label) for key, label in panels
            if any(entry.get(key) is not None for entry in report["methods"].values())]


def write_lossy_curve(report: dict, out_dir: Path) -> Path | None:
    """Quality against speed: one line per deferral rule over alpha (points labelled by alpha),
    with ar and the lossless methods as reference points. None when no speccascade method ran."""
    curves = _curves(report)
    panels = _quality_panels(report)
    if not curves or not panels:
        return None
    plt = _pyplot()
    use_speedup = all(entry["speedup_vs_ar"] is not None for entry in report["methods"].values())
    figure, axes_list = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for axes, (key, label) in zip(axes_list[0], panels):
        _draw_references(axes, report, key, use_speedup)
        for index, (rule, points) in enumerate(curves.items()):
            _draw_curve(axes, rule, points, key, use_speedup, label_offset=4 + 8 * index)
            if key == "exact_match_rate":  # the smoother measure beside it, dashed and unlabelled
                _draw_curve(axes, rule, points, "matching_prefix", use_speedup, label_offset=None)
        if key == "exact_match_rate":
            label += "\n(dashed: mean matching prefix)"
        axes.margins(x=0.08, y=0.15)  # room for the alpha labels above the top points
        axes.set_xlabel("speedup over ar (tokens/s)" if use_speedup else "tokens/s")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    figure.suptitle(f"speculative cascades, quality vs speed ({_title(report)})", fontsize=9)
    figure.tight_layout()
    path = _save(figure, out_dir / "lossy-curve.png")
    plt.close(figure)
    return path


def _draw_curve(axes, rule: str, points: list[tuple[float, dict]], key: str, use_speedup: bool,
                label_offset: int | None) -> None:
    """One rule's runs by increasing alpha; with `label_offset`, a solid line with alpha labels
    (offset per rule so that rules with coinciding points stay readable), else a dashed one."""
    shown = [(alpha, entry) for alpha, entry in points if entry.get(key) is not None]
    xs = [_speed(entry, use_speedup) for _, entry in shown]
    ys = [entry[key] for _, entry in shown]
    color = RULE_COLORS.get(rule, "black")
    if label_offset is None:
        axes.plot(xs, ys, linestyle="--", linewidth=1, marker=".", color=color, alpha=0.6)
        return
    axes.plot(xs, ys, marker="o", color=color, label=f"speccascade-{rule}")
    for (alpha, _), x, y in zip(shown, xs, ys):
        axes.annotate(f"{alpha:g}", (x, y), textcoords="offset points", xytext=(4, label_offset), fontsize=7,
                      color=color)


def _draw_references(axes, report: dict, key: str, use_speedup: bool) -> None:
    """ar and the lossless methods as labelled gray points."""
    for name, entry in report["methods"].items():
        if entry.get("deferral") or entry.get(key) is None:
            continue
        x, y = _speed(entry, use_speedup), entry[key]
        axes.scatter([x], [y], marker="s" if name == "ar" else "^", color="black" if name == "ar" else "gray",
                     zorder=3)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="dimgray")
