"""The suite's report: medians and spreads, the goals, a Markdown table and plots, from results.json's dict."""

from __future__ import annotations

import statistics
from pathlib import Path

SWEEP = [1, 4, 16, 64]


def spread(values: list[float]) -> dict[str, float]:
    """Median and min-max of repeated measurements (NaNs dropped)."""
    kept = [v for v in values if v == v]
    if not kept:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept)}


def paired(a: list[dict], b: list[dict], f) -> dict[str, float]:  # noqa: ANN001
    """Spread of ``f(a_i, b_i)`` over repeats measured side by side."""
    return spread([f(x, y) for x, y in zip(a, b, strict=False)])


def fmt(s: dict[str, float], digits: int = 2, scale: float = 1.0) -> str:
    """``median (min-max)``."""
    if s["median"] != s["median"]:
        return "n/a"
    return (f"{s['median'] * scale:.{digits}f} ({s['min'] * scale:.{digits}f}-{s['max'] * scale:.{digits}f})")


def summarize(results: dict) -> dict:
    """Derived numbers per model and the four goals."""
    out: dict = {"models": {}, "goals": []}
    for model, data in results["models"].items():
        cells = data.get("cells", {})
        rows = {}
        for key in cells:
            if key.startswith("served/"):
                _, kind, batch = key.split("/")
                served, inproc = cells[key], cells[f"inprocess/{kind}/{batch}"]
                rows[f"{kind}/{batch}"] = {
                    "inprocess_p50_ms": spread([r["p50_ms"] for r in inproc]),
                    "served_p50_ms": spread([r["p50_ms"] for r in served]),
                    "served_p99_ms": spread([r["p99_ms"] for r in served]),
                    "overhead_us": paired(served, inproc, lambda s, i: (s["p50_ms"] - i["p50_ms"]) * 1e3),
                    "throughput_ratio": paired(served, inproc, lambda s, i: s["throughput"] / i["throughput"]),
                    "client_cpu_us_per_request": spread([r["client_cpu_us_per_request"] for r in served]),
                    "server_cpu_us_per_request": spread([r["server_cpu_us_per_request"] for r in served]),
                    "bytes_moved": served[0]["bytes_moved"],
                }
        summary: dict = {"served_vs_inprocess": rows}
        for batch in ("b1", "b64"):
            full, chain = cells.get(f"served/full/{batch}"), cells.get(f"served/chain/{batch}")
            ifull, ichain = cells.get(f"inprocess/full/{batch}"), cells.get(f"inprocess/chain/{batch}")
            if full and chain:
                summary[f"chain_vs_full/{batch}"] = {
                    "inprocess_p50_ratio": paired(ichain, ifull, lambda c, f: c["p50_ms"] / f["p50_ms"]),
                    "served_p50_ratio": paired(chain, full, lambda c, f: c["p50_ms"] / f["p50_ms"]),
                    "served_throughput_ratio": paired(chain, full, lambda c, f: c["throughput"] / f["throughput"]),
                }
            client = cells.get(f"client_chain/{batch}")
            if client and chain:
                summary[f"client_vs_server_chain/{batch}"] = {
                    "client_p50_ms": spread([r["p50_ms"] for r in client]),
                    "server_p50_ms": spread([r["p50_ms"] for r in chain]),
                    "latency_ratio": paired(client, chain, lambda c, s: c["p50_ms"] / s["p50_ms"]),
                    "client_bytes": client[0]["bytes_moved"],
                    "server_bytes": chain[0]["bytes_moved"],
                }
        summary["sweep"] = {} if not cells else {c: {k: spread([r[k] for r in cells[f"sweep/c{c}"]])
                                for k in ("throughput", "p50_ms", "p95_ms", "p99_ms", "client_cpu_us_per_request",
                                          "client_core_share", "server_cpu_us_per_request")}
                            for c in SWEEP if f"sweep/c{c}" in cells}
        for group in ("batching", "kserve"):
            if group in data:
                summary[group] = {label: {int(c): {k: spread([r[k] for r in records])
                                                   for k in ("throughput", "p50_ms", "p99_ms",
                                                             "client_cpu_us_per_request", "server_cpu_us_per_request")}
                                          for c, records in by_c.items()}
                                  for label, by_c in data[group].items()}
        if "rest" in data:
            summary["rest"] = {label: {key: {k: spread([r[k] for r in records])
                                             for k in ("throughput", "p50_ms", "p99_ms", "client_cpu_us_per_request",
                                                       "server_cpu_us_per_request")}
                                       for key, records in by_key.items()}
                               for label, by_key in data["rest"].items()}
            ours = data["rest"]["layerserve"]
            summary["rest_ratio"] = {peer: {key: paired(ours[key], theirs[key],
                                                        lambda a, b: a["throughput"] / b["throughput"])
                                            for key in ours}
                                     for peer, theirs in data["rest"].items() if peer != "layerserve"}
        if "kserve" in data:
            ours = data["kserve"]["layerserve"]
            for peer in ("KServe as shipped", "KServe tuned"):
                theirs = data["kserve"][peer]
                summary.setdefault("kserve_ratio", {})[peer] = {
                    int(c): paired(ours[c], theirs[c], lambda a, b: a["throughput"] / b["throughput"]) for c in ours}
        out["models"][model] = summary
    out["goals"] = _goals(out["models"])
    return out


def _goal(name: str, value: dict[str, float] | None, target: float, higher: bool, unit: str, what: str) -> dict:
    if value is None:
        return {"goal": name, "what": what, "measured": None, "met": None, "by": None}
    median = value["median"]
    met = median >= target if higher else median <= target
    by = (median - target) / target if target else median
    return {"goal": name, "what": what, "measured": value, "target": target, "unit": unit, "met": met, "by": by}


def _goals(models: dict) -> list[dict]:
    resnet, digits = models.get("resnet18_shaped", {}), models.get("digits_cnn", {})
    compute = resnet or digits
    compute_name = "resnet18_shaped" if resnet else "digits_cnn"
    goals = [
        _goal("served/in-process throughput >= 0.85 at batch 64 (compute-bound model)",
              compute.get("served_vs_inprocess", {}).get("full/b64", {}).get("throughput_ratio"), 0.85, True, "x",
              f"{compute_name}, full graph, c=1"),
    ]
    for model, data in (("digits_cnn", digits), ("resnet18_shaped", resnet)):
        row = data.get("served_vs_inprocess", {}).get("full/b1")
        if row:
            goals.append(_goal("per-request overhead at batch 1 <= 300 us p50", row["overhead_us"], 300, False, "us",
                               f"{model}, full graph, served p50 (c=1) - in-process p50"))
    for peer in ("KServe as shipped", "KServe tuned"):
        ratio = digits.get("kserve_ratio", {}).get(peer, {}).get(16)
        goals.append(_goal(f">= 1.5x KServe ModelServer throughput at concurrency 16 ({peer})", ratio, 1.5, True, "x",
                           "digits_cnn, full graph, batch 1, same load generator"))
    for peer, by_key in digits.get("rest_ratio", {}).items():
        for key, ratio in by_key.items():
            if key.startswith("binary/"):
                _, batch, clients = key.split("/")
                goals.append(_goal(f"REST >= KServe's REST throughput ({peer})", ratio, 1.0, True, "x",
                                   f"digits_cnn, full graph, batch {batch[1:]}, {clients[1:]} clients, binary tensors"))
    for model, data in (("resnet18_shaped", resnet), ("digits_cnn", digits)):
        ratio = data.get("chain_vs_full/b64", {}).get("served_p50_ratio")
        if ratio:
            goals.append(_goal("server chain within 10% of the full graph at batch 64", ratio, 1.10, False, "x",
                               f"{model}, served p50 chain/full, c=1"))
    return goals


def _plots(summary: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    models = [m for m, s in summary["models"].items() if s.get("sweep")]
    if not models:  # a --rest-only run has no sweep to plot
        return written
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sweep = summary["models"][model]["sweep"]
        cs = sorted(sweep)
        for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
            med = [sweep[c][key]["median"] for c in cs]
            lo = [sweep[c][key]["median"] - sweep[c][key]["min"] for c in cs]
            hi = [sweep[c][key]["max"] - sweep[c][key]["median"] for c in cs]
            ax.errorbar(cs, med, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.set(xscale="log", yscale="log", xlabel="concurrency (requests in flight)", ylabel="latency (ms)",
               title=f"{model}: latency vs concurrency (batch 1)")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        data = summary["models"][model]
        cs = sorted(data["sweep"])
        med = [data["sweep"][c]["throughput"]["median"] for c in cs]
        lo = [m - data["sweep"][c]["throughput"]["min"] for m, c in zip(med, cs, strict=True)]
        hi = [data["sweep"][c]["throughput"]["max"] - m for m, c in zip(med, cs, strict=True)]
        ax.errorbar(cs, med, yerr=[lo, hi], marker="o", capsize=3, label="layerserve (batching, 0 us)")
        for group in ("kserve", "batching"):
            for label, by_c in data.get(group, {}).items():
                if label in ("layerserve", "on, 0 us delay"):
                    continue
                points = sorted(by_c)
                ax.plot(points, [by_c[c]["throughput"]["median"] for c in points], marker="s", linestyle="--",
                        label=label if group == "kserve" else f"layerserve, batching {label}")
        ax.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="requests/s",
               title=f"{model}: throughput (batch 1)")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    written.append("throughput.png")
    return written


def _goal_rows(goals: list[dict]) -> list[str]:
    lines = ["| goal | measured: median (min-max) | target | met | by |", "|---|---|---|---|---|"]
    for g in goals:
        if g["measured"] is None:
            lines.append(f"| {g['goal']} ({g['what']}) | not measured | | | |")
            continue
        digits = 0 if g["unit"] == "us" else 2
        by = f"{g['by'] * 100:+.0f} %"
        lines.append(f"| {g['goal']} ({g['what']}) | {fmt(g['measured'], digits)} {g['unit']} | {g['target']:g} "
                     f"{g['unit']} | {'yes' if g['met'] else '**no**'} | {by} |")
    return lines


def markdown(results: dict, summary: dict, plots: list[str]) -> str:
    """The report as Markdown (what docs/bench/results.md holds)."""
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# Benchmark suite results",
        "",
        f"Generated by `python -m bench.run{' --quick' if results['quick'] else ''}` on {m['date']} "
        f"(commit {m['commit']}), {results['wall_s']:.0f} s. **{results['repeats']} repeat(s)** per cell, "
        "interleaved; every number is *median (min-max)* over the repeats.",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB; {m['os']}; Python {m['python']}.",
        f"- Software: {versions}.",
        f"- Load average (1 min) {m['load_average_1m']:.1f} at the start, {m.get('load_average_1m_end', float('nan')):.1f} "
        "at the end (above ~1 means other jobs shared the machine and absolute numbers are noisy); the ratios are "
        "measured side by side (same repeat) and are the ones to read. The hypervisor took "
        f"{m.get('stolen', float('nan')):.0%} of this VM's CPU time over the run (`/proc/stat` steal; the grid "
        "gives it per repeat).",
        f"- Served configuration: `layerserve serve {' '.join(results['served_flags'])}` (dynamic batching on, no "
        "added queue delay; default `--workers auto` = one process per usable core on one port, `--instances auto` = "
        "usable cores / workers, 1 intra-op thread); in-process = the same server endpoints "
        "(`Repository.load(...).endpoint(name).run`), same sessions, one run at a time.",
        "- Load generator: `bench/loadgen.py` (closed loop, pre-serialized requests, grpc.aio) runs **inside the "
        "bench process on the same two cores, not pinned** (pinning one core each would halve the server). It is "
        "accounted for instead: every served cell records the generator's CPU per request and its share of a core "
        "(tables below); the server's own CPU per request (all its processes) is read from /proc. Every coroutine of "
        "the generator has its own connection, as independent clients would (`channels=concurrency`), for every "
        "server compared.",
        "- `resnet18_shaped` has random weights: it is a speed test only, never an accuracy result.",
        "",
        "## Goals",
        "",
        *_goal_rows(summary["goals"]),
        "",
    ]
    for model, s in summary["models"].items():
        data = results["models"][model]
        lines += [f"## {model}", ""]
        if "input" in data:
            lines += [f"Input {data['input']}; blocks {', '.join(data['blocks'])}; the `block` target is "
                      f"`{data['block_target']}`.", ""]
        if data.get("cells"):
            lines += ["### Served (c=1) vs in-process", "",
                      "| endpoint / batch | in-process p50 ms | served p50 ms | served p99 ms | overhead µs (p50 diff) | "
                      "throughput served/in-process | generator CPU µs/req | server CPU µs/req | bytes/request |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for key, row in s["served_vs_inprocess"].items():
                lines.append(
                    f"| {key} | {fmt(row['inprocess_p50_ms'], 3)} | {fmt(row['served_p50_ms'], 3)} | "
                    f"{fmt(row['served_p99_ms'], 3)} | {fmt(row['overhead_us'], 0)} | {fmt(row['throughput_ratio'])} | "
                    f"{fmt(row['client_cpu_us_per_request'], 0)} | {fmt(row['server_cpu_us_per_request'], 0)} | "
                    f"{row['bytes_moved']:,} |")
            lines += ["", "### Chain vs full graph", "",
                      "| batch | in-process chain/full p50 | served chain/full p50 | served chain/full throughput |",
                      "|---|---|---|---|"]
            for batch in ("b1", "b64"):
                row = s.get(f"chain_vs_full/{batch}")
                if row:
                    lines.append(f"| {batch[1:]} | {fmt(row['inprocess_p50_ratio'])} | {fmt(row['served_p50_ratio'])} | "
                                 f"{fmt(row['served_throughput_ratio'])} |")
            lines += ["", "### Client chain vs server chain (c=1)", "",
                      "| batch | client chain p50 ms | server chain p50 ms | client/server latency | bytes moved per "
                      "request: client chain | server chain |", "|---|---|---|---|---|---|"]
            for batch in ("b1", "b64"):
                row = s.get(f"client_vs_server_chain/{batch}")
                if row:
                    lines.append(f"| {batch[1:]} | {fmt(row['client_p50_ms'], 3)} | {fmt(row['server_p50_ms'], 3)} | "
                                 f"{fmt(row['latency_ratio'])} | {row['client_bytes']:,} | {row['server_bytes']:,} |")
            lines += ["", "### Concurrency sweep (full graph, batch 1)", "",
                      "| concurrency | req/s | p50 ms | p95 ms | p99 ms | generator CPU µs/req | generator share of a core "
                      "| server CPU µs/req |", "|---|---|---|---|---|---|---|---|"]
            for c, row in s["sweep"].items():
                lines.append(f"| {c} | {fmt(row['throughput'], 0)} | {fmt(row['p50_ms'])} | {fmt(row['p95_ms'])} | "
                             f"{fmt(row['p99_ms'])} | {fmt(row['client_cpu_us_per_request'], 0)} | "
                             f"{fmt(row['client_core_share'], 0, 100)} % | {fmt(row['server_cpu_us_per_request'], 0)} |")
        for group, title in (("batching", "Dynamic batching (full graph, batch 1)"),
                             ("kserve", "KServe ModelServer vs layerserve (full graph, batch 1, same load generator)")):
            if group not in s:
                continue
            lines += ["", f"### {title}", "",
                      "| server | c | req/s | p50 ms | p99 ms | generator CPU µs/req | server CPU µs/req |",
                      "|---|---|---|---|---|---|---|"]
            for label, by_c in s[group].items():
                for c, row in by_c.items():
                    lines.append(f"| {label} | {c} | {fmt(row['throughput'], 0)} | {fmt(row['p50_ms'])} | "
                                 f"{fmt(row['p99_ms'])} | {fmt(row['client_cpu_us_per_request'], 0)} | "
                                 f"{fmt(row['server_cpu_us_per_request'], 0)} |")
        if "rest" in s:
            lines += ["", "### HTTP/REST: layerserve vs KServe ModelServer's REST (full graph, bench/rest_loadgen.py)", "",
                      "Cells are `encoding/batch/clients`: binary tensors as tritonclient.http sends them "
                      "(`Inference-Header-Content-Length`; KServe answers in JSON all the same), or JSON `data` "
                      "arrays as curl users send them.", "",
                      "| cell | server | req/s | p50 ms | p99 ms | generator CPU µs/req | server CPU µs/req | "
                      "layerserve/this throughput |", "|---|---|---|---|---|---|---|---|"]
            for key in next(iter(s["rest"].values())):
                for label, by_key in s["rest"].items():
                    row = by_key[key]
                    ratio = s["rest_ratio"].get(label, {}).get(key)
                    lines.append(f"| {key} | {label} | {fmt(row['throughput'], 0)} | {fmt(row['p50_ms'])} | "
                                 f"{fmt(row['p99_ms'])} | {fmt(row['client_cpu_us_per_request'], 0)} | "
                                 f"{fmt(row['server_cpu_us_per_request'], 0)} | {fmt(ratio) if ratio else ''} |")
        if "kserve_ratio" in s:
            lines += ["", "layerserve / KServe throughput: " + "; ".join(
                f"{peer} c={c}: {fmt(r)}" for peer, by_c in s["kserve_ratio"].items() for c, r in by_c.items())]
        for label, prof in data.get("profiles", {}).items():
            areas = ", ".join(f"{k} {v} %" for k, v in prof["area_percent"].items())
            top = ", ".join(f"`{k}` {v} %" for k, v in list(prof["top_functions_percent"].items())[:8])
            work = prof.get("work") or {}
            lines += ["", f"**py-spy, {label}, c=16** (`py-spy record --gil`, 4 s, {work.get('throughput', 0):.0f} "
                      f"req/s while sampled): GIL held {prof['gil_held_share'] * 100:.0f} % of the time (summed over the server's processes); of the "
                      f"GIL-holding samples: {areas}. Top innermost frames: {top}."]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def write(results: dict, out: Path) -> dict:
    """Write results.md and the plots into ``out``; returns the summary (for results.json)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    plots = _plots(summary, out)
    (out / "results.md").write_text(markdown(results, summary, plots))
    return summary
