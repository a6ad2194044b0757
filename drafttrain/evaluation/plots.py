"""PNG plots of an eval report: speedup over `ar` per method with its 95% interval."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_plots(report: dict, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    entries = [report["methods"][name] for name in names]
    speedups = [e["speedup_vs_ar"] or 0.0 for e in entries]
    low = [s - (e["speedup_ci95"] or [s, s])[0] for s, e in zip(speedups, entries)]
    high = [(e["speedup_ci95"] or [s, s])[1] - s for s, e in zip(speedups, entries)]
    figure, axes = plt.subplots(figsize=(1.2 * len(names) + 3, 3.5))
    axes.bar(names, speedups, yerr=[low, high], capsize=4, color="#4c72b0")
    axes.axhline(1.0, color="gray", linewidth=1, linestyle="--")
    axes.set_ylabel("speedup over ar (tokens/s)")
    axes.set_title(f"{Path(report['target']).name}: {report['prompts']} prompts, "
                   f"{report['max_new_tokens']} new tokens, T={report['temperature']}", fontsize=9)
    figure.tight_layout()
    path = out_dir / "speedup.png"
    handle, tmp = tempfile.mkstemp(dir=out_dir, prefix=".speedup.", suffix=".png")
    os.close(handle)
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, path)
    return path
