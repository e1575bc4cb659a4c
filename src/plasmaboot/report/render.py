"""`plasmaboot report`: the figures drawn with matplotlib (Agg, no display, no network) into
PNG files and one static HTML page that links them: open OUTPUT/index.html from disk.
Everything a manifest or the history says is escaped before it reaches the page."""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from typing import Any

# Figure objects, never pyplot: no display, no global state; PNG is drawn by Agg.
from matplotlib.figure import Figure

from plasmaboot.errors import UserError

MIB = 1 << 20
FIGURES_JSON = "report.json"
INDEX = "index.html"


def file_part(label: str) -> str:
    """A label as part of a file name (labels are profile names, but the page trusts nothing)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:80] or "_"


def save(figure: Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    return path.name


def plot_sizes(figures: dict[str, Any], output: Path) -> str | None:
    series = figures["size_over_builds"]
    if not series:
        return None
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    for label, points in sorted(series.items()):
        xs = list(range(1, len(points) + 1))
        axes.plot(xs, [p["total"] / MIB for p in points], marker="o", label=f"{label} total")
        axes.plot(xs, [p["initrd"] / MIB for p in points], linestyle="--", label=f"{label} initrd")
    axes.set_xlabel("build (oldest first, per label)")
    axes.set_ylabel("MiB")
    axes.set_title("Size over builds")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return save(figure, output / "sizes.png")


def plot_steps(label: str, points: list[dict[str, Any]], output: Path) -> str | None:
    names = sorted({name for p in points for name in p["steps"]} - {"customize"})
    if not names:
        return None
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    xs = list(range(1, len(points) + 1))
    for name in names:
        axes.plot(xs, [p["steps"].get(name, 0) for p in points], marker=".", label=name)
    axes.plot(xs, [p["seconds"] for p in points], color="black", linewidth=2, label="whole build")
    axes.set_xlabel("build that was not a cache hit (oldest first)")
    axes.set_ylabel("seconds")
    axes.set_title(f"Seconds per build step: {label}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="x-small", ncol=2)
    return save(figure, output / f"steps-{file_part(label)}.png")


def plot_bytes(label: str, image: dict[str, Any], output: Path) -> str | None:
    packages = list(image["top_packages"])
    modules = list(image["module_trees"])
    if image["other_packages_bytes"]:
        packages.append(["(other packages)", image["other_packages_bytes"]])
    if image["other_module_trees_bytes"]:
        modules.append(["(other trees)", image["other_module_trees_bytes"]])
    panels = [(title, rows) for title, rows in (
        ("largest packages (installed size)", packages),
        ("kernel module trees", modules),
    ) if rows]  # fmt: skip
    if not panels:
        return None
    figure = Figure(figsize=(11, 0.3 * max(len(r) for _, r in panels) + 1.8))
    axes_list = figure.subplots(1, len(panels), squeeze=False)
    for axes, (title, rows) in zip(axes_list[0], panels, strict=True):
        names = [str(name) for name, _ in reversed(rows)]
        axes.barh(names, [size / MIB for _, size in reversed(rows)], color="#4878a8")
        axes.set_xlabel("MiB")
        axes.set_title(title, fontsize="medium")
        axes.tick_params(axis="y", labelsize="small")
    figure.suptitle(f"Where the bytes of {label} go")
    return save(figure, output / f"bytes-{file_part(label)}.png")


def mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
img{max-width:100%;height:auto;border:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.wide{overflow-x:auto}
"""


def page(figures: dict[str, Any], plots: dict[str, Any]) -> str:
    e = escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>plasmaboot report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>plasmaboot report</h1>",
        f"<p>{e(str(figures['builds']))} builds in the history of "
        f"<code>{e(figures['artifacts'])}</code>; made {e(figures['generated_at'])}. "
        f'The figures are also in <a href="{FIGURES_JSON}">{FIGURES_JSON}</a>.</p>',
        "<h2>Size over builds</h2>",
    ]
    if plots.get("sizes"):
        parts.append(f'<img src="{e(plots["sizes"])}" alt="size over builds per label">')
    else:
        parts.append("<p>No builds in the history yet.</p>")
    parts.append("<h2>Where the bytes go</h2>")
    for label, image in sorted(figures["images"].items()):
        parts.append(f"<h3>{e(label)}</h3>")
        files = ", ".join(f"{e(n)} {mib(s)}" for n, s in image["files"].items())
        parts.append(
            f"<p>{e(image['backend'])}, kernel {e(image['kernel_version'])}, "
            f"{image['packages']} packages; {files}.</p>"
        )
        if plots["bytes"].get(label):
            parts.append(f'<img src="{e(plots["bytes"][label])}" alt="bytes of {e(label)}">')
        else:
            parts.append("<p>This set's manifest has no package or module sizes.</p>")
    if not figures["images"]:
        parts.append("<p>No current sets.</p>")
    parts.append("<h2>Seconds per build step</h2>")
    for label, points in sorted(figures["step_seconds_over_builds"].items()):
        parts.append(f"<h3>{e(label)}</h3>")
        if plots["steps"].get(label):
            parts.append(f'<img src="{e(plots["steps"][label])}" alt="steps of {e(label)}">')
        last = points[-1]
        rows = "".join(
            f'<tr><td>{e(name)}</td><td class="n">{seconds:.1f}</td></tr>'
            for name, seconds in sorted(last["steps"].items(), key=lambda item: -item[1])
        )
        parts.append(
            f'<div class="wide"><table><tr><th>step (last build, {e(last["at"])})</th>'
            f"<th>seconds</th></tr>{rows}</table></div>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_report(figures: dict[str, Any], output: Path) -> dict[str, Any]:
    """Write the plots, report.json and index.html into `output`; returns the plots' names."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"--output {output}: cannot create it ({exc.strerror})",
            hint="choose a directory you can write",
        ) from exc
    plots: dict[str, Any] = {
        "sizes": plot_sizes(figures, output),
        "steps": {
            label: plot_steps(label, points, output)
            for label, points in figures["step_seconds_over_builds"].items()
        },
        "bytes": {
            label: plot_bytes(label, image, output) for label, image in figures["images"].items()
        },
    }
    document = {**figures, "plots": plots}
    (output / FIGURES_JSON).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (output / INDEX).write_text(page(figures, plots), encoding="utf-8")
    return document
