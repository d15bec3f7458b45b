"""A split-computing plan as a picture: predicted latency per cut for each encoding, the best marked.

:func:`write_plan_report` writes ``index.html`` and ``plan.png`` (matplotlib, Agg).
"""

from __future__ import annotations

import html
from pathlib import Path

from .planner import ModelProfile, Plan
from .report import BAD, GOOD, MUTED, _pyplot


def plot_plan(plan: Plan, path: Path) -> Path:
    """Predicted latency per cut (log scale), one line per encoding; refused candidates hollow, the best starred."""
    plt = _pyplot()
    count = len(plan.block_names)
    cuts = ["all far", *(f"after {name}" for name in plan.block_names[:-1]), "all near"]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(cuts) + 2), 4.2))
    for encoding in dict.fromkeys(e.encoding for e in plan.estimates):
        points = sorted((e for e in plan.estimates if e.encoding == encoding), key=lambda e: e.cut)
        line = ax.plot([e.cut for e in points], [e.seconds * 1e3 for e in points], marker="o", label=encoding)[0]
        refused = [e for e in points if e.refused]
        ax.scatter([e.cut for e in refused], [e.seconds * 1e3 for e in refused], s=80, facecolors="white",
                   edgecolors=line.get_color(), zorder=3)
    best = plan.best
    ax.scatter([best.cut], [best.seconds * 1e3], marker="*", s=320, color=GOOD, zorder=4,
               label=f"best: {plan.describe(best)}, {best.seconds * 1e3:.1f} ms")
    ax.set_xticks(range(count + 1), cuts, rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("predicted latency (ms)")
    ax.grid(True, which="both", color="#eeeeee")
    ax.legend(fontsize=8)
    ax.set_title(f"{plan.model}: predicted end-to-end latency per cut over {plan.link} "
                 f"({plan.rows} row(s) per request; hollow: refused for accuracy)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plan_report(plan: Plan, profile: ModelProfile, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` with the plot and every candidate's numbers; returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picture = plot_plan(plan, out_dir / "plan.png").name
    rows = ["<tr><th>cut</th><th>encoding</th><th>link bytes</th><th>near ms</th><th>link ms</th><th>far ms</th>"
            "<th>predicted ms</th><th>agreement</th><th>note</th></tr>"]
    for e in plan.estimates:
        note = "best" if e is plan.best else (e.refused or "")
        color = GOOD if e is plan.best else (BAD if e.refused else MUTED)
        agreement = "&mdash;" if e.agreement is None else f"{e.agreement:.1%}"
        rows.append(
            f"<tr><td>{html.escape(plan.describe(e))}</td><td>{e.encoding}</td><td>{e.link_bytes:,}</td>"
            f"<td>{e.near_seconds * 1e3:.2f}</td><td>{e.link_seconds * 1e3:.2f}</td><td>{e.far_seconds * 1e3:.2f}</td>"
            f"<td>{e.seconds * 1e3:.2f}</td><td>{agreement}</td><td style='color:{color}'>{html.escape(note)}</td></tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>layerserve plan {html.escape(plan.model)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(plan.model)}: where to cut between {html.escape(plan.near)} and {html.escape(plan.far)}</h1>
<p>Link {html.escape(str(plan.link))}; objective {html.escape(plan.objective)}; best: <b>{html.escape(plan.describe(plan.best))}</b>,
predicted {plan.best.seconds * 1e3:.2f} ms. Agreement measured on {profile.samples} samples.</p>
<figure><img src="{picture}" alt="predicted latency per cut"><figcaption>Predicted end-to-end latency of every
candidate; the table splits it into near (compute and RPC), link and far (compute, RPC, encoding).</figcaption></figure>
<table>{"".join(rows)}</table>
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page)
    return index
