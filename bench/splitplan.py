"""Issue 17's acceptance: does the split-computing plan match reality over emulated links?

    python -m bench.splitplan                                   # digits_resnet and resnet50_shaped, 3 links
    python -m bench.splitplan --models digits_resnet --repeats 3

Two servers on this machine: **near** with one ONNX Runtime thread, one worker and a CFS
quota of ``--near-quota`` CPUs (a cgroup v1 ``cpu`` group it starts in, 10 ms CFS period;
needs root, else it runs without a quota and says so), and **far** unconstrained (one worker, two intra-op
threads). Per model, ``client.profiling.profile_model`` profiles both once, with the far
server behind the link emulator at the fastest link (its link model subtracted), and
measures each encoding's agreement with FP32 (held-out digits; 32 random-normal inputs for
resnet50_shaped, whose weights are random: agreement only). Then per link, the far server
is put behind ``bench.linkemu`` (a token-bucket TCP proxy on loopback) and:

* the planner predicts every candidate (cut x encoding) and picks one;
* every candidate the planner may pick is run for real, one image per request, with
  ``LayerClient.chain(model, x, placement=...)`` (one Chain RPC per side), as a closed
  loop: in each of ``--repeats`` rounds (``--slow-repeats`` for candidates predicted above
  2 s) every candidate, in rotated order, runs ``--burst`` requests back to back, the first
  unrecorded (it finds the servers idle from the previous candidate's run, which a stream
  of images at one cut never does; a server woken after >10 ms idle answers ~1 ms later
  on this machine) except for slow candidates, where that millisecond does not matter;
* reported: the planner's cut, its predicted and measured latency (median, min-max), the
  measured-fastest candidate, whether the planner's is within 10 % of it, and the
  prediction's error.

Separately, on the far server without a link: each encoding's agreement with FP32 and
bytes per request at every cut on all held-out samples of digits_cnn and digits_resnet.
Results: ``--out`` JSON and Markdown on stdout (``--render JSON`` prints it again; docs/bench/splitplan.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.linkemu import LinkEmulator
from bench.machine import machine_info
from bench.payloads import COMMITTED, manifest, model_input, model_root
from layerserve.client import LayerClient
from layerserve.client.compression import encoding_costs
from layerserve.client.link import Link
from layerserve.client.planner import Plan, plan
from layerserve.client.profiling import profile_model
from layerserve.server.launcher import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
LINKS = ("1Mbit/s,50ms", "20Mbit/s,20ms", "1Gbit/s,1ms")
CGROUP = Path("/sys/fs/cgroup/cpu/layerserve-near")
SLOW_SECONDS = 2.0
PERIOD_US = 10_000


def log(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def cpu_quota(cpus: float) -> Iterator[Path | None]:
    """A cgroup v1 ``cpu`` group limited to ``cpus`` CPUs over a 10 ms CFS period; None without one.

    A short period makes the quota act like a slower CPU: with the default 100 ms period a
    request shorter than its quota runs at full speed and a longer one stalls for the rest
    of the period, so a chain would cost more than its blocks measured one by one.
    """
    try:
        CGROUP.mkdir(exist_ok=True)
        (CGROUP / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
        (CGROUP / "cpu.cfs_quota_us").write_text(f"{int(cpus * PERIOD_US)}\n")
    except OSError as error:
        log(f"no CPU quota for near ({error}); it runs with one thread only")
        yield None
        return
    try:
        yield CGROUP
    finally:
        with contextlib.suppress(OSError):
            CGROUP.rmdir()


class NearServer(ServerProcess):
    """A server that enters ``cgroup`` before it execs, so every thread and child is under its quota."""

    def __init__(self, models: Path, extra_args: list[str], cgroup: Path | None) -> None:
        super().__init__(models, extra_args)
        self.cgroup = cgroup

    def command(self) -> list[str]:
        command = super().command()
        if self.cgroup is None:
            return command
        return ["sh", "-c", f'echo $$ > {self.cgroup / "cgroup.procs"} && exec "$@"', "near", *command]


def measure(client: LayerClient, model: str, x: np.ndarray, chosen: Plan, repeats: int, slow_repeats: int,
            burst: int) -> dict[tuple[int, str], list[float]]:
    """Wall seconds of every candidate the planner may pick, in interleaved closed-loop bursts (module docstring)."""
    candidates = [e for e in chosen.estimates if e.refused is None]
    times: dict[tuple[int, str], list[float]] = {(e.cut, e.encoding): [] for e in candidates}
    for estimate in candidates:  # warm-up: channels, sessions, gRPC's flow-control windows
        client.chain(model, x, placement=chosen.placement(estimate), where="server")
    for repeat in range(repeats):
        order = candidates[repeat % len(candidates):] + candidates[: repeat % len(candidates)]
        for estimate in order:
            slow = estimate.seconds > SLOW_SECONDS
            if slow and repeat >= slow_repeats:
                continue
            for attempt in range(1 if slow else burst):
                began = time.perf_counter()
                client.chain(model, x, placement=chosen.placement(estimate), where="server")
                if slow or attempt > 0:
                    times[(estimate.cut, estimate.encoding)].append(time.perf_counter() - began)
    return times


def run_model(model: str, links: list[Link], args: argparse.Namespace, cgroup: Path | None) -> list[dict]:
    root = model_root(model)
    _, found = manifest(root, model)
    if found.samples.file.path:
        with np.load(root / model / found.version / found.samples.file.path) as archive:
            images, labels = archive["images"][:100].astype(np.float32), archive["labels"][:100]
    else:
        images, labels = model_input(found, 32, seed=1)[found.inputs[0].name], None
    x = np.ascontiguousarray(images[:1])
    near_args = ["--workers", "1", "--intra-op-threads", "1", "--metrics-port", "-1"]
    far_args = ["--workers", "1", "--intra-op-threads", "2", "--metrics-port", "-1"]
    results = []
    with NearServer(root, near_args, cgroup) as near, ServerProcess(root, far_args) as far:
        fastest = max(links, key=lambda link: link.bits_per_second)
        with LinkEmulator(far.address, fastest) as emulated, LayerClient(near.address) as near_client, \
                LayerClient(emulated.address) as far_client:
            began = time.perf_counter()
            profile, _ = profile_model(near_client, far_client, model, 1, args.warmup, args.profile_repeats,
                                       fastest, ("fp16", "int8"), images, labels)
            log(f"{model}: profiled in {time.perf_counter() - began:.1f} s over {fastest}: near blocks "
                f"{[round(s * 1e3, 2) for s in profile.near.block_seconds]} ms, far "
                f"{[round(s * 1e3, 2) for s in profile.far.block_seconds]} ms")
        for link in links:
            with LinkEmulator(far.address, link) as emulated, LayerClient(near.address) as client:
                chosen = plan(profile, link, near.address, emulated.address, "latency", ("fp32", "fp16", "int8"),
                              args.min_agreement)
                began = time.perf_counter()
                times = measure(client, model, x, chosen, args.repeats, args.slow_repeats, args.burst)
                results.append(summarise(model, link, chosen, times, time.perf_counter() - began))
                results[-1]["profile"] = profile.to_dict()
                log(line(results[-1]))
    return results


def summarise(model: str, link: Link, chosen: Plan, times: dict, seconds: float) -> dict:
    candidates = []
    for e in chosen.estimates:
        if e.refused is not None:
            continue
        seen = times[(e.cut, e.encoding)]
        candidates.append({"cut": e.cut, "encoding": e.encoding, "name": chosen.describe(e),
                           "predicted_ms": e.seconds * 1e3, "median_ms": statistics.median(seen) * 1e3,
                           "min_ms": min(seen) * 1e3, "max_ms": max(seen) * 1e3, "runs": len(seen)})
    best = next(c for c in candidates if (c["cut"], c["encoding"]) == (chosen.best.cut, chosen.best.encoding))
    fastest = min(candidates, key=lambda c: c["median_ms"])
    return {
        "model": model, "link": str(link), "planned": best, "fastest": fastest,
        "within_10pct": best["median_ms"] <= 1.10 * fastest["median_ms"],
        "prediction_error": best["predicted_ms"] / best["median_ms"] - 1,
        "candidates": candidates, "seconds": seconds,
    }


def line(result: dict) -> str:
    planned, fastest = result["planned"], result["fastest"]
    return (f"{result['model']} {result['link']}: planned {planned['name']} predicted {planned['predicted_ms']:.1f} "
            f"measured {planned['median_ms']:.1f} ms ({planned['min_ms']:.1f}-{planned['max_ms']:.1f}); fastest "
            f"{fastest['name']} {fastest['median_ms']:.1f} ms; within 10%: {result['within_10pct']}; "
            f"prediction error {result['prediction_error']:+.1%}")


def encoding_table(models: list[str]) -> list[dict]:
    """Agreement and bytes of each encoding at each cut on every held-out sample (far server, no link)."""
    found = []
    with ServerProcess(COMMITTED, ["--metrics-port", "-1"]) as server, LayerClient(server.address) as client:
        for model in models:
            folder, m = manifest(COMMITTED, model)
            with np.load(folder / m.samples.file.path) as archive:
                images, labels = archive["images"].astype(np.float32), archive["labels"]
            costs = encoding_costs(client, model, images, labels, ("fp16", "int8"), rows=1)
            found.append(costs.to_dict())
            log(f"{model}: fp16 agreement {costs.agreement['fp16']}, int8 {costs.agreement['int8']}")
    return found


def markdown(results: list[dict], encodings: list[dict]) -> str:
    rows = ["| model | link | planner's cut | predicted ms | measured ms, median (min-max) | measured-fastest | "
            "its ms | within 10 % | prediction error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p, f = r["planned"], r["fastest"]
        rows.append(f"| {r['model']} | {r['link']} | {p['name']} | {p['predicted_ms']:.1f} | {p['median_ms']:.1f} "
                    f"({p['min_ms']:.1f}-{p['max_ms']:.1f}) | {f['name']} | {f['median_ms']:.1f} | "
                    f"{'yes' if r['within_10pct'] else '**no**'} | {r['prediction_error']:+.1%} |")
    rows += ["", "| model | cut (tensor sent) | fp32 bytes | fp16 bytes | fp16 agreement | int8 bytes | "
             "int8 agreement | int8 accuracy |", "|---|---|---|---|---|---|---|---|"]
    for costs in encodings:
        cuts = ["input", *(f"{b} out" for b in costs["block_names"][:-1])]
        for k, name in enumerate(cuts):
            b = costs["bytes_per_request"]
            rows.append(f"| {costs['model']} | {k}: {name} | {b['fp32'][k]:,} | {b['fp16'][k]:,} | "
                        f"{costs['agreement']['fp16'][k]:.1%} | {b['int8'][k]:,} | {costs['agreement']['int8'][k]:.1%}"
                        f" | {costs['accuracy']['int8'][k]:.1%} |")
    return "\n".join(rows)


def candidates_markdown(results: list[dict]) -> str:
    """Every candidate's prediction and measurement, per model and link."""
    rows = ["| model | link | candidate | predicted ms | measured ms, median (min-max) | runs | error |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        for c in r["candidates"]:
            mark = " **(planned)**" if c is r["planned"] or c == r["planned"] else ""
            rows.append(f"| {r['model']} | {r['link']} | {c['name']}{mark} | {c['predicted_ms']:.1f} | "
                        f"{c['median_ms']:.1f} ({c['min_ms']:.1f}-{c['max_ms']:.1f}) | {c['runs']} | "
                        f"{c['predicted_ms'] / c['median_ms'] - 1:+.0%} |")
    return "\n".join(rows)


def render(document: dict) -> str:
    """The whole report as Markdown: the summary, the encodings and every candidate."""
    machine = document["machine"]
    quota = f"{document['near_quota']} CPU" if document["quota_applied"] else "none (no root)"
    head = (f"`python -m bench.splitplan` on {machine['date'][:10]}, {machine['cpu']}, {machine['logical_cores']} "
            f"cores shared with other work (1-min load {machine['load_average_1m']:.2f} at the end), commit "
            f"{machine['commit']}; near quota {quota}.")
    return "\n\n".join([head, markdown(document["results"], document["encodings"]),
                         candidates_markdown(document["results"])]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits_resnet,resnet50_shaped")
    parser.add_argument("--links", default=";".join(LINKS), help="';'-separated RATE,RTT links")
    parser.add_argument("--near-quota", type=float, default=0.5, help="CPUs the near server may use (default 0.5)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=3, help="repeats of candidates predicted over 2 s")
    parser.add_argument("--burst", type=int, default=3, help="back-to-back requests per candidate and round, "
                        "the first unrecorded (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="profile warm-up runs per block")
    parser.add_argument("--profile-repeats", type=int, default=10, help="profile runs per block")
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--encodings", default="digits_cnn,digits_resnet", help="models for the encoding table")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "splitplan.json")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print the Markdown of an earlier run and exit")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    # SIGTERM unwinds like Ctrl-C, so every server and proxy this run started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    links = [Link.parse(text) for text in args.links.split(";") if text.strip()]
    results: list[dict] = []
    with cpu_quota(args.near_quota) if os.geteuid() == 0 else contextlib.nullcontext() as cgroup:
        for model in [m for m in args.models.split(",") if m]:
            results += run_model(model, links, args, cgroup)
    encodings = encoding_table([m for m in args.encodings.split(",") if m])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine_info(), "near_quota": args.near_quota, "quota_applied": cgroup is not None,
                "results": results, "encodings": encodings}
    args.out.write_text(json.dumps(document, indent=2))
    print(render(document), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
