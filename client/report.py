"""The experiment as pictures: an HTML page and PNGs drawn with matplotlib's Agg backend.

:func:`write_report` writes ``index.html`` and ``paths.png`` (accuracy per path),
``samples.png`` (digits with every path's prediction), ``skip_curve.png``,
``skip_matrix.png``, ``activations.png`` (what each block outputs for one
image) and ``encodings.png`` (each wire encoding's agreement with FP32 and its bytes
at each cut), each only when the report holds its data. matplotlib is imported here
only, with the Agg backend forced, so no display is ever needed.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from layerserve.proto.pictures import sample_layout

from .compression import EncodingCosts
from .experiment import CompareReport, most_common_answer

GOOD, BAD, MUTED = "#2e7d32", "#c62828", "#757575"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _short(name: str) -> str:
    return name.replace("final only, ", "").replace(" graph", "").replace(" chain", "").replace(" image", "")


def plot_paths(report: CompareReport, path: Path) -> Path:
    """Horizontal bars: accuracy of each path, the refused one marked, chance as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(report.paths) + 1.4))
    names = [p.name for p in report.paths][::-1]
    for row, result in enumerate(report.paths[::-1]):
        if result.error is not None:
            ax.barh(row, 1.0, color="#eeeeee", hatch="//", edgecolor="#bdbdbd")
            ax.text(0.02, row, f"refused: {result.error.split(':')[0]}", va="center", color=BAD, fontsize=8)
            continue
        color = GOOD if result.accuracy >= 0.5 else BAD
        ax.barh(row, result.accuracy, color=color)
        ax.text(min(result.accuracy + 0.01, 0.9), row, f"{result.accuracy:.1%}", va="center", fontsize=8)
    ax.axvline(report.chance, color=MUTED, linestyle="--", linewidth=1)
    ax.text(report.chance, len(names) - 0.4, " chance", color=MUTED, fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"accuracy on {report.samples} {report.samples_label}{report.scored_on()}")
    ax.set_title(f"{report.model}: every block in order, or only {report.start_block} onwards?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _grey(sample: np.ndarray) -> np.ndarray:
    """One sample's first channel as a picture to draw, read by its layout (proto/pictures.py: ``[C, H, W]``,
    channels-last ``[H, W, C]``, grey ``[H, W]``); anything else as its last two axes."""
    sample = np.asarray(sample)
    layout = sample_layout(sample.shape)
    if layout is not None and layout.channels_last:
        return sample[..., 0]
    if layout is not None and not layout.channel_axis:
        return sample
    return sample.reshape(-1, *sample.shape[-2:])[0]


def plot_samples(report: CompareReport, images: np.ndarray, labels: np.ndarray, path: Path, count: int = 10) -> Path:
    """The first ``count`` samples, each with every path's prediction (green right, red wrong)."""
    plt = _pyplot()
    count = min(count, len(images))
    fig, axes = plt.subplots(1, count, figsize=(1.3 * count, 1.6 + 0.2 * len(report.paths)), squeeze=False)
    for k, ax in enumerate(axes[0]):
        ax.imshow(_grey(images[k]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"label {report.class_names[int(labels[k])]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for row, result in enumerate(report.paths):
            if result.predictions is None:
                text, color = f"{_short(result.name)}: refused", MUTED
            else:
                guess = int(result.predictions[k])
                text = f"{_short(result.name)}: {report.class_names[guess]}"
                color = GOOD if guess == int(labels[k]) else BAD
            ax.text(0.5, -0.08 - 0.13 * row, text, transform=ax.transAxes, ha="center", va="top", color=color, fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.12 * len(report.paths) / 2, wspace=0.15)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_skip_curve(report: CompareReport, path: Path) -> Path:
    """Accuracy against the number of leading blocks skipped, one line per fit adapter."""
    plt = _pyplot()
    curve = report.skip_curve
    assert curve is not None
    fig, ax = plt.subplots(figsize=(8, 4))
    for method, values in curve.accuracy.items():
        ax.plot(curve.skipped, values, marker="o", label=f"image fitted by {method}")
    ax.axhline(report.chance, color=MUTED, linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(curve.skipped, [f"{k}\n(from {b})" for k, b in zip(curve.skipped, curve.start_blocks, strict=True)])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("leading blocks skipped")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{report.model}: skip the first blocks, feed the image in later")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_skip_matrix(report: CompareReport, path: Path) -> Path:
    """Heat map of the skip matrix, each cell annotated with its accuracy."""
    plt = _pyplot()
    matrix = report.skip_matrix
    assert matrix is not None
    values = np.ma.masked_invalid(matrix.accuracy)
    fig, ax = plt.subplots(figsize=(1.1 * len(matrix.targets) + 2.5, 0.8 * len(matrix.sources) + 1.6))
    shown = ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix.accuracy):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(matrix.targets)), matrix.targets, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix.sources)), matrix.sources)
    ax.set_xlabel("fed into block (then on to the head)")
    ax.set_ylabel("source")
    ax.set_title(f"accuracy; off the diagonal the source is fitted by {matrix.fit}", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_activations(
    image: np.ndarray, activations: dict[str, np.ndarray], class_names: list[str], path: Path, channels: int = 8
) -> Path:
    """One image, then each block's output: up to ``channels`` feature maps per block, or the class probabilities."""
    plt = _pyplot()
    from matplotlib.gridspec import GridSpec

    rows = 1 + len(activations)
    fig = plt.figure(figsize=(1.2 * channels + 1.5, 1.25 * rows))
    grid = GridSpec(rows, channels + 1, figure=fig, width_ratios=[1.4] + [1] * channels)
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(_grey(image[0]), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    fig.add_subplot(grid[0, 0]).text(0.5, 0.5, "input\n" + "x".join(map(str, image.shape[1:])), ha="center", va="center", fontsize=8)
    fig.axes[-1].set_axis_off()
    for row, (name, value) in enumerate(activations.items(), start=1):
        sample = np.asarray(value)[0]
        label = fig.add_subplot(grid[row, 0])
        label.text(0.5, 0.5, f"{name.split('/')[0]}\n{'x'.join(map(str, sample.shape))}", ha="center", va="center", fontsize=8)
        label.set_axis_off()
        if sample.ndim == 3:
            # The most active channels say the most about what this block responds to.
            order = np.argsort(sample.reshape(len(sample), -1).mean(axis=1))[::-1][:channels]
            for col, channel in enumerate(order, start=1):
                ax = fig.add_subplot(grid[row, col])
                ax.imshow(sample[channel], cmap="magma")
                ax.set_title(f"ch {channel}", fontsize=6, pad=1)
                ax.set_axis_off()
        else:
            flat = sample.reshape(-1)
            ax = fig.add_subplot(grid[row, 1:])
            if len(flat) == len(class_names):
                shifted = np.exp(flat - flat.max())
                ax.bar(class_names, shifted / shifted.sum(), color=GOOD)
                ax.set_ylim(0, 1)
                ax.set_ylabel("p", fontsize=7)
            else:
                ax.bar(range(len(flat)), flat, color=MUTED)
            ax.tick_params(labelsize=7)
    fig.suptitle("what each block outputs for one image (most active channels)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_encodings(costs: EncodingCosts, path: Path) -> Path:
    """Per cut: bytes per request of each encoding (bars) and its agreement with FP32 (line, right axis)."""
    plt = _pyplot()
    cuts = costs.cut_names()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cuts) + 2), 3.8))
    names = ["fp32", *costs.encodings]
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        xs = [cut + (offset - (len(names) - 1) / 2) * width for cut in range(len(cuts))]
        ax.bar(xs, costs.bytes_per_request[name], width, label=f"{name} bytes", alpha=0.8)
    ax.set_yscale("log")
    ax.set_ylabel(f"bytes per request ({costs.rows} row(s))")
    ax.set_xticks(range(len(cuts)), cuts, rotation=20, fontsize=8)
    right = ax.twinx()
    for name in costs.encodings:
        right.plot(range(len(cuts)), costs.agreement[name], marker="o", label=f"{name} agreement")
    right.set_ylim(min(0.9, *(min(v) for v in costs.agreement.values())) - 0.01, 1.005)
    right.set_ylabel("agreement with fp32")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower left")
    ax.set_title(f"{costs.model}: what each encoding saves and costs at each cut ({costs.samples} samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _encodings_table(costs: EncodingCosts) -> str:
    head = "<tr><th>cut (tensor sent)</th>" + "".join(
        f"<th>{html.escape(e)} bytes</th><th>{html.escape(e)} agreement</th><th>{html.escape(e)} accuracy</th>"
        for e in costs.encodings) + "<th>fp32 bytes</th></tr>"
    rows = [head]
    for cut, name in enumerate(costs.cut_names()):
        cells = "".join(
            f"<td>{costs.bytes_per_request[e][cut]:,}</td><td>{costs.agreement[e][cut]:.1%}</td>"
            + ("<td>&mdash;</td>" if costs.accuracy[e][cut] is None else f"<td>{costs.accuracy[e][cut]:.1%}</td>")
            for e in costs.encodings)
        rows.append(f"<tr><td>{cut}: {html.escape(name)}</td>{cells}<td>{costs.bytes_per_request['fp32'][cut]:,}</td></tr>")
    fp32 = "" if costs.fp32_accuracy is None else f"; fp32 accuracy {costs.fp32_accuracy:.1%}"
    return (f"<h2>Wire encodings</h2><p>{costs.samples} samples, {costs.rows} row(s) per request{fp32}.</p>"
            "<table>" + "\n".join(rows) + "</table>")


def _table(report: CompareReport) -> str:
    head = "<tr><th>path</th><th>blocks</th><th>accuracy</th><th>agreement</th><th>KL(full&#8214;path)</th><th>top-1 conf.</th><th>result</th></tr>"
    rows = [head]
    for p in report.paths:
        if p.error is not None:
            cells = f"<td colspan=4>&mdash;</td><td class=err>{html.escape(p.error)}</td>"
        else:
            result = (
                f"max |&Delta;output| vs full {p.max_abs_diff:.1e}"
                if p.fit is None
                else html.escape(most_common_answer(p.predictions, report.class_names))
            )
            cells = (
                f"<td>{p.accuracy:.1%}</td><td>{p.agreement:.1%}</td><td>{p.kl:.3f}</td>"
                f"<td>{p.confidence:.1%}</td><td>{result}</td>"
            )
        rows.append(f"<tr><td>{html.escape(p.name)}</td><td>{html.escape(p.blocks)}</td>{cells}</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def write_report(
    report: CompareReport,
    out_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    activations: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and its PNGs; returns the HTML path.

    ``images``/``labels`` are the samples the report was measured on (the first
    few are drawn); ``activations`` the kept outputs of every block for
    ``images[:1]`` (see :func:`layerserve.client.experiment.activations`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = [
        (plot_paths(report, out_dir / "paths.png").name, f"Accuracy of each path on the {report.samples_label}."),
        (
            plot_samples(report, images, labels, out_dir / "samples.png").name,
            "Sample digits and what each path predicts (green: right, red: wrong).",
        ),
    ]
    if report.skip_curve is not None:
        figures.append((plot_skip_curve(report, out_dir / "skip_curve.png").name, "Skipping leading blocks."))
    if report.skip_matrix is not None:
        figures.append(
            (plot_skip_matrix(report, out_dir / "skip_matrix.png").name, "Each source fitted into each later block.")
        )
    if activations:
        figures.append(
            (
                plot_activations(images[:1], activations, report.class_names, out_dir / "activations.png").name,
                "What each block outputs for one image: the next block's input, and nothing like a raw image.",
            )
        )
    if report.encodings is not None:
        figures.append((plot_encodings(report.encodings, out_dir / "encodings.png").name,
                        "Bytes per request and agreement with FP32 of each wire encoding at each cut."))
    body = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for name, caption in figures
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>layerserve compare {html.escape(report.model)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.err{{color:{BAD};font-family:monospace}}
figure{{margin:2em 0}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(report.model)}: why run an image through every layer?</h1>
<p>{report.samples} {html.escape(report.samples_label)}; the final-only paths start at block {html.escape(report.start_block)};
chance is {report.chance:.0%}.</p>
{_table(report)}
{_encodings_table(report.encodings) if report.encodings is not None else ""}
{body}
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page)
    return index
