"""Draw what benchmarks.metrics_picture asked of Prometheus: one plot per panel.

    /usr/bin/python3 benchmarks/plot_metrics.py DATA.json OUT.png

Run by Debian's python3 with Debian's matplotlib (``python3-matplotlib``),
which the project's virtual environment does not carry.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

UNITS = {"reqps": "per second", "s": "seconds", "short": ""}


def main(data_file: str, out: str) -> None:
    data = json.loads(Path(data_file).read_text())
    panels = data["panels"]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.3 * rows), sharex=True)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for line in sorted(panel["lines"], key=lambda item: item["label"]):
            points = [(t, v) for t, v in line["points"] if not math.isnan(v)]
            if not points or (max(v for _, v in points) == 0 and panel["unit"] != "short"):
                continue  # a series that stayed at zero only crowds the legend
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=line["label"], linewidth=1.4)
        ax.set_title(panel["title"], fontsize=11, loc="left")
        ax.set_ylabel(UNITS.get(panel["unit"], panel["unit"]), fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if panel["unit"] == "s":
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.8)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds since start", fontsize=9)
    fig.suptitle(
        "fwdmilter under a short load, from a private Prometheus "
        "(the queries of contrib/grafana/fwdmilter.json)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
