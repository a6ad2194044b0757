"""PNG plots of an eval report (`drafttrain.evaluation.report`), each also linked from report.md:

- `speedup.png`: each method's speedup over `ar` with its 95% interval, fastest first, lossy runs
  (speculative cascades with alpha > 0) told apart from lossless ones;
- `acceptance-by-depth.png`: per draft level, the acceptance rate at each draft depth given that
  the parent was accepted, one line per engine method (`RunStats.*_by_level_depth`);
- `tokens-per-prompt.png`: tokens/s on every prompt, one line per method, prompts by ar's speed;
- `lossy-curve.png`, when speculative cascades ran: their quality/speed curve.

`plot_files(report)` names the plots `write_plots(report, out_dir)` writes, with their captions.
"""

from __future__ import annotations

import math
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


def _title(report: dict, device: bool = False) -> str:
    title = (f"{Path(report['target']).name}: {report['prompts']} prompts, "
             f"{report['max_new_tokens']} new tokens, T={report['temperature']}")
    return f"{title}\n{report['device']}" if device and report.get("device") else title


MARKERS = "osD^vP*X"
MIN_REACHED = 5  # an acceptance-by-depth point needs this many judged parents (fewer is noise)
SPEEDUP_CAPTION = ("speedup over ar (ratio of tokens/s) per method, fastest on top, with its 95% bootstrap "
                   "interval over prompts; dashed line: 1.0x; hatched: lossy runs")
ACCEPTANCE_CAPTION = (f"per draft level, P(the token drafted at depth d is accepted | its parent was), "
                      f"i.e. accepted at d / reached d, one line per method; points with fewer than "
                      f"{MIN_REACHED} reached are left out")
PER_PROMPT_CAPTION = "tokens/s on each prompt (new tokens / seconds), one line per method, prompts by ar's tokens/s"
LOSSY_CAPTION = ("speculative cascades: quality against speedup, one line per deferral rule over alpha, "
                 "ar and the lossless methods as reference points")
CATEGORY_STYLES = {  # category -> (label, bar color, hatch)
    "ar": ("ar (the baseline)", "#333333", ""),
    "lossless": ("lossless (same tokens as ar)", "#4c72b0", ""),
    "unchecked": ("not checked (sampling)", "#4c72b0", ""),
    "lossy": ("lossy (deferral, alpha > 0)", "#dd8452", "//"),
    "broken": ("differs from ar (a bug)", "#c44e52", "xx"),
    "bound": ("oracle (a bound, not a decoder)", "#bbbbbb", ".."),
}


def plot_files(report: dict) -> list[tuple[str, str]]:
    """(file name, one-line caption) of every plot `write_plots` writes for this report."""
    files = [("speedup.png", SPEEDUP_CAPTION if _use_speedup(report) else "tokens/s per method")]
    if _level_curves(report):
        files.append(("acceptance-by-depth.png", ACCEPTANCE_CAPTION))
    if _per_prompt_speeds(report):
        files.append(("tokens-per-prompt.png", PER_PROMPT_CAPTION))
    if _curves(report) and _quality_panels(report):
        files.append(("lossy-curve.png", LOSSY_CAPTION))
    return files


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """Write every plot of `plot_files(report)` into `out_dir`; their paths, in that order."""
    out_dir = Path(out_dir)
    paths = [write_speedup(report, out_dir)]
    for writer in (write_acceptance_by_depth, write_tokens_per_prompt, write_lossy_curve):
        path = writer(report, out_dir)
        if path is not None:
            paths.append(path)
    return paths


def _use_speedup(report: dict) -> bool:
    return all(entry.get("speedup_vs_ar") is not None for entry in report["methods"].values())


def _category(name: str, entry: dict) -> str:
    if name == "ar":
        return "ar"
    if name == "oracle":
        return "bound"
    if (entry.get("deferral") or {}).get("alpha", 0) > 0:
        return "lossy"
    if entry.get("lossless") is False:
        return "broken"
    return "lossless" if entry.get("lossless") else "unchecked"


def speedup_rows(report: dict) -> list[tuple[float, float, float, str, str]]:
    """(speedup, interval low, interval high, method, category) per method, fastest first (ties
    in report order); tokens/s and no interval when some method has no speedup over ar."""
    use_speedup = _use_speedup(report)
    rows = []
    for name, entry in report["methods"].items():
        value = entry["speedup_vs_ar"] if use_speedup else entry["tokens_per_s"]
        low, high = (entry.get("speedup_ci95") or [value, value]) if use_speedup else (value, value)
        rows.append((value, low, high, name, _category(name, entry)))
    return sorted(rows, key=lambda row: -row[0])


def write_speedup(report: dict, out_dir: Path) -> Path:
    """Horizontal bars, fastest on top: speedup over ar with its 95% interval (tokens/s when ar
    did not run), colored by whether the method is lossless."""
    plt = _pyplot()
    use_speedup = _use_speedup(report)
    rows = speedup_rows(report)[::-1]  # matplotlib draws bottom-up: the fastest on top
    figure, axes = plt.subplots(figsize=(7.5, 1.4 + 0.32 * len(rows)))
    seen = set()
    for y, (value, low, high, name, category) in enumerate(rows):
        label, color, hatch = CATEGORY_STYLES[category]
        axes.barh(y, value, color=color, hatch=hatch, edgecolor="white" if not hatch else "black",
                  linewidth=0.5, height=0.7, label=None if category in seen else label)
        seen.add(category)
        if high > low:
            axes.errorbar(value, y, xerr=[[value - low], [high - value]], color="black", capsize=3, linewidth=1)
        axes.annotate(f"{value:.2f}x" if use_speedup else f"{value:.0f}", (max(value, high), y),
                      textcoords="offset points", xytext=(4, 0), va="center", fontsize=7)
    axes.set_yticks(range(len(rows)), [row[3] for row in rows], fontsize=8)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.margins(x=0.12)
    axes.set_xlim(left=0)
    if use_speedup:
        axes.axvline(1.0, color="gray", linewidth=1, linestyle="--", zorder=0)
        axes.set_xlabel("speedup over ar (tokens/s ratio), bars: 95% bootstrap interval over prompts", fontsize=8)
    else:
        axes.set_xlabel("tokens/s (ar did not run: no speedup)", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    axes.set_title(_title(report, device=True), fontsize=9)
    figure.tight_layout()
    path = _save(figure, out_dir / "speedup.png")
    plt.close(figure)
    return path


def _level_order(level: str) -> tuple[int, str]:
    """draft levels first, then self-draft levels, then the rest (n-gram last)."""
    rank = next((i for i, prefix in enumerate(("draft", "self")) if level.startswith(prefix)), 2 + (level == "ngram"))
    return rank, level


def _level_curves(report: dict) -> dict[str, dict[str, tuple[list[int], list[float], list[int]]]]:
    """level -> method -> (depths, acceptance rate given the parent was accepted, reached counts),
    keeping the depths reached at least MIN_REACHED times; levels and methods without any such
    depth are left out (and so are methods without engine stats)."""
    curves: dict[str, dict[str, tuple[list[int], list[float], list[int]]]] = {}
    for name, entry in report["methods"].items():
        stats = entry.get("stats") or {}
        reached_table = stats.get("reached_by_level_depth") or {}
        accepted_table = stats.get("accepted_by_level_depth") or {}
        for level, reached in reached_table.items():
            accepted = accepted_table.get(level, [])
            points = [(depth, accepted[depth - 1] / count, count) for depth, count in enumerate(reached, start=1)
                      if count >= MIN_REACHED and depth <= len(accepted)]
            if points:
                depths, rates, counts = (list(column) for column in zip(*points))
                curves.setdefault(level, {})[name] = (depths, rates, counts)
    return {level: curves[level] for level in sorted(curves, key=_level_order)}


def method_colors(report: dict) -> dict[str, str]:
    """One color per method, the same in every plot: ar black, the rest in report order."""
    plt = _pyplot()
    others = [name for name in report["methods"] if name != "ar"]
    palette = plt.get_cmap("tab10" if len(others) <= 10 else "tab20").colors
    colors = {name: palette[index % len(palette)] for index, name in enumerate(others)}
    colors["ar"] = "black"
    return colors


def _line_style(report: dict, name: str) -> str:
    return "--" if _category(name, report["methods"][name]) == "lossy" else "-"


def write_acceptance_by_depth(report: dict, out_dir: Path) -> Path | None:
    """One panel per draft level: acceptance rate by depth given the parent was accepted, one line
    per method that drafted with that level. None when no method has enough per-level counts."""
    curves = _level_curves(report)
    if not curves:
        return None
    plt = _pyplot()
    colors = method_colors(report)
    columns = min(len(curves), 3)
    rows = math.ceil(len(curves) / columns)
    figure, axes_grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows + 0.9), squeeze=False,
                                     sharey=True)
    markers = {name: MARKERS[index % len(MARKERS)] for index, name in enumerate(report["methods"])}
    handles = {}
    for axes, (level, methods) in zip(axes_grid.flat, curves.items()):
        for index, (name, (depths, rates, counts)) in enumerate(methods.items()):
            dodge = (index - (len(methods) - 1) / 2) * 0.06  # coinciding lines (sd-draft, cascade@0) stay visible
            (line,) = axes.plot([depth + dodge for depth in depths], rates, marker=markers[name], markersize=4,
                                color=colors[name], linestyle=_line_style(report, name), linewidth=1.2, label=name)
            handles.setdefault(name, line)
        deepest = max(max(depths) for depths, _, _ in methods.values())
        axes.set_title(f"level {level}", fontsize=9)
        axes.set_ylim(0, 1.05)
        axes.set_xlim(0.5, max(deepest, 4) + 0.5)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.set_xlabel("draft depth d", fontsize=8)
    for axes in axes_grid[:, 0]:
        axes.set_ylabel("P(accepted at d | parent accepted)", fontsize=8)
    for axes in list(axes_grid.flat)[len(curves):]:
        axes.set_visible(False)
    names = [name for name in report["methods"] if name in handles]
    figure.legend([handles[name] for name in names], names, loc="lower center", ncol=min(len(names), 6),
                  fontsize=8, frameon=False)
    figure.suptitle(f"acceptance by draft depth, per level ({_title(report)}); "
                    f"points with < {MIN_REACHED} reached left out", fontsize=9)
    figure.tight_layout(rect=(0, 0.06 + 0.02 * (len(names) > 6), 1, 1))
    path = _save(figure, out_dir / "acceptance-by-depth.png")
    plt.close(figure)
    return path


def _per_prompt_speeds(report: dict) -> dict[str, list[tuple[str, float]]]:
    """method -> [(prompt label, tokens/s)] in prompt order, when every method has per-prompt rows
    for the same prompts (else empty)."""
    speeds = {}
    for name, entry in report["methods"].items():
        rows = entry.get("per_prompt")
        if not rows:
            return {}
        speeds[name] = [(row["id"] if row.get("id") is not None else f"#{index}",
                         row["tokens"] / row["seconds"] if row["seconds"] > 0 else float("nan"))
                        for index, row in enumerate(rows)]
    labels = {tuple(label for label, _ in rows) for rows in speeds.values()}
    return speeds if len(labels) == 1 else {}


def write_tokens_per_prompt(report: dict, out_dir: Path) -> Path | None:
    """tokens/s on each prompt, one line per method over the prompts sorted by ar's tokens/s (in
    prompt order without ar). None when the report has no per-prompt rows."""
    speeds = _per_prompt_speeds(report)
    if not speeds:
        return None
    plt = _pyplot()
    colors = method_colors(report)
    labels = [label for label, _ in next(iter(speeds.values()))]
    order = list(range(len(labels)))
    if "ar" in speeds:
        order.sort(key=lambda index: speeds["ar"][index][1])
    figure, axes = plt.subplots(figsize=(min(max(6.0, 0.28 * len(labels) + 4.5), 16.0), 4.2))
    for name, rows in speeds.items():
        reference = name == "ar"
        axes.plot(range(len(order)), [rows[index][1] for index in order], marker="o", markersize=4 if reference else 3,
                  color=colors[name], linestyle=_line_style(report, name), linewidth=2.2 if reference else 1.0,
                  alpha=1.0 if reference else 0.8, label=name, zorder=3 if reference else 2)
    step = max(1, math.ceil(len(labels) / 40))  # at most ~40 prompt labels
    axes.set_xticks(range(0, len(order), step), [labels[order[i]] for i in range(0, len(order), step)],
                    rotation=60, ha="right", fontsize=7)
    axes.set_xlabel("prompt (by ar's tokens/s)" if "ar" in speeds else "prompt", fontsize=8)
    axes.set_ylabel("tokens/s (new tokens / seconds)", fontsize=8)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.set_title(f"tokens/s per prompt ({_title(report)})", fontsize=9)
    figure.tight_layout()
    path = _save(figure, out_dir / "tokens-per-prompt.png")
    plt.close(figure)
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
    """ar and the lossless methods as labelled gray points; labels of points close together are
    stacked downwards so that they do not overlap."""
    points = sorted((_speed(entry, use_speedup), entry[key], name) for name, entry in report["methods"].items()
                    if not entry.get("deferral") and entry.get(key) is not None)
    entries = [entry for entry in report["methods"].values() if entry.get(key) is not None]
    xs, ys = [_speed(entry, use_speedup) for entry in entries], [entry[key] for entry in entries]
    near_x, near_y = 0.12 * (max(xs) - min(xs) or 1.0), 0.05 * (max(ys) - min(ys) or 1.0)
    stack, last = 0, None
    for x, y, name in points:
        stack = stack + 1 if last is not None and x - last[0] < near_x and abs(y - last[1]) < near_y else 0
        last = (x, y) if stack == 0 else last
        axes.scatter([x], [y], marker="s" if name == "ar" else "^", color="black" if name == "ar" else "gray",
                     zorder=3)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10 - 9 * stack), fontsize=7,
                      color="dimgray")
