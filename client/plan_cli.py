"""``layerserve plan MODEL --near URL --far URL --link 20Mbit/s,40ms``: where to cut, predicted for every cut.

Profiles both endpoints (client/profiling.py), plans (client/planner.py) and prints
every candidate with the best marked; ``--json`` prints the profile and the plan,
which ``layerserve chain MODEL INPUT --plan FILE`` runs and ``--profile FILE``
re-plans for another link without measuring again. ``--report DIR`` draws it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layerserve.proto.encodings import ENCODINGS

from .planner import OBJECTIVES, ModelProfile, Plan

AddCommand = Callable[..., argparse.ArgumentParser]


def register(subparsers: argparse._SubParsersAction, add: AddCommand) -> None:
    """Add ``plan`` (``add`` is client/cli.py's, which gives every command its connection flags)."""
    plan = add(subparsers, "plan", _plan, "profile a model on a near and a far server and pick the cut with the "
               "lowest predicted latency over a link", server=False)
    plan.add_argument("model")
    plan.add_argument("--near", help="the server next to the client (runs the first blocks), HOST:PORT")
    plan.add_argument("--far", help="the server across the link (runs the rest), HOST:PORT")
    plan.add_argument("--link", required=True, help="the link to the far server: RATE,RTT such as 20Mbit/s,40ms")
    plan.add_argument("--objective", choices=OBJECTIVES, default="latency", help="minimise latency or link bytes")
    plan.add_argument("--encodings", default="fp32,fp16,int8",
                      help=f"wire encodings a cut may use, of {','.join(ENCODINGS)} (default all)")
    plan.add_argument("--min-agreement", type=float, default=0.99, help="a compressed cut must agree with fp32 on "
                      "at least this share of the samples (default 0.99; 0 accepts unmeasured ones)")
    plan.add_argument("--rows", type=int, default=1, help="rows (images) per request to plan for (default 1)")
    plan.add_argument("--warmup", type=int, default=3, help="unrecorded runs per block and endpoint (default 3)")
    plan.add_argument("--repeats", type=int, default=10, help="recorded runs per block and endpoint (default 10)")
    plan.add_argument("--profile-link", help="the link the far server is reached over while profiling, "
                      "subtracted from its times (default: --link; 'none' for a direct path)")
    plan.add_argument("--samples", type=Path, help="labelled .npz (images, labels) to measure each encoding's "
                      "agreement on (default: the model's samples under --models, when there)")
    plan.add_argument("--models", type=Path, default=Path("models"), help="model repository for the samples")
    plan.add_argument("--agreement-samples", type=int, default=100, help="samples to measure agreement on "
                      "(default 100; 0: none)")
    plan.add_argument("--profile", type=Path, metavar="FILE.json", help="plan from the profile in a "
                      "`layerserve plan --json` output instead of measuring")
    plan.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report with the plot to DIR")


def read_plan(path: Path, model: str) -> Plan:
    """The plan in ``path`` (``layerserve plan --json`` output); ValueError (one line) if it is not one for ``model``."""
    try:
        plan = Plan.from_dict(_document(path, "plan"))
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} holds no plan: {type(error).__name__}: {error}") from None
    if plan.model != model:
        raise ValueError(f"{path} plans {plan.model!r}, not {model!r}")
    return plan


def _document(path: Path, key: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return data.get(key, data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"{path} is not `layerserve plan --json` output: {type(error).__name__}: {error}") from None


def _samples(args: argparse.Namespace, client, model: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if args.agreement_samples <= 0:
        return None, None
    path = args.samples
    if path is None:
        manifest = client.blocks(model).manifest
        if not manifest.samples.file.path:
            return None, None
        path = args.models / manifest.name / manifest.version / manifest.samples.file.path
        if not path.is_file():
            return None, None
    from .images import read_samples

    # In the type stored (UINT8 pixels stay UINT8): the profile gives them the model input's type.
    return read_samples(path, args.agreement_samples, labels_required=False)


def _profile(args: argparse.Namespace, link, encodings: list[str]) -> tuple[ModelProfile, dict]:
    from .cli import _client, _progress
    from .link import Link
    from .profiling import profile_model, served_blocks

    if args.profile is not None:
        data = _document(args.profile, "profile")
        try:
            profile = ModelProfile.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{args.profile} holds no profile: {type(error).__name__}: {error}") from None
        if profile.model != args.model:
            raise ValueError(f"{args.profile} profiles {profile.model!r}, not {args.model!r}")
        return profile, {}
    if not args.near or not args.far:
        raise ValueError("plan expects --near HOST:PORT and --far HOST:PORT (or --profile FILE)")
    profile_link = link if args.profile_link is None else (
        None if args.profile_link == "none" else Link.parse(args.profile_link))
    with _client(args, args.near) as near, _client(args, args.far) as far:
        found = served_blocks(far, args.model, "far")
        images, labels = _samples(args, far, args.model)
        steps = 1 + 2 * len(found) + (0 if images is None else -(-len(images) // 16))  # what profile_model reports
        with _progress(steps, "profile") as step:
            return profile_model(near, far, args.model, args.rows, args.warmup, args.repeats, profile_link,
                                 encodings, images, labels, on_step=step)


def _plan(args: argparse.Namespace) -> int:
    from .cli import _console, _print_json
    from .link import Link
    from .planner import plan as make_plan

    link = Link.parse(args.link)
    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        raise ValueError(f"--encodings expects some of {','.join(ENCODINGS)}, got {','.join(unknown)[:60]!r}")
    if args.rows < 1 or args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--rows and --repeats expect >= 1, --warmup >= 0, got {args.rows}, {args.repeats}, "
                         f"{args.warmup}")
    profile, measured = _profile(args, link, encodings)
    plan = make_plan(profile, link, args.near or profile.near.address, args.far or profile.far.address,
                     args.objective, encodings, args.min_agreement)
    index = None
    if args.report:
        from .plan_report import write_plan_report

        index = write_plan_report(plan, profile, args.report)
    if args.json:
        _print_json({"profile": profile.to_dict(), "plan": plan.to_dict(), "measured": measured,
                     "report": str(index) if index else None})
        return 0
    console = _console()
    console.print(_profile_table(profile, measured))
    console.print(_plan_table(plan))
    if index:
        console.print(f"report: {index}")
    return 0


def _profile_table(profile: ModelProfile, measured: dict):
    from rich.table import Table

    table = Table("block", "near compute ms", "far compute ms", "output bytes", *(
        [f"{side} client-view ms" for side in ("near", "far")] if measured else []),
        title=f"{profile.model}: profile, {profile.rows} row(s) per request (compute: the servers' ModelStatistics)",
        caption=f"RPC cost beyond compute: near {profile.near.rpc_seconds * 1e3:.2f} ms "
                f"+ {profile.near.seconds_per_byte * 1e9:.2f} ns/B, far {profile.far.rpc_seconds * 1e3:.2f} ms "
                f"+ {profile.far.seconds_per_byte * 1e9:.2f} ns/B")
    for index, name in enumerate(profile.block_names):
        seen = [f"{measured[side][index]['client_seconds'] * 1e3:.2f}" for side in ("near", "far")] if measured else []
        table.add_row(name, f"{profile.near.block_seconds[index] * 1e3:.2f}",
                      f"{profile.far.block_seconds[index] * 1e3:.2f}", f"{profile.cut_bytes[index + 1]:,}", *seen)
    return table


def _plan_table(plan: Plan):
    from rich.table import Table

    table = Table("cut", "encoding", "link bytes", "near ms", "link ms", "far ms", "predicted ms", "agreement", "",
                  title=f"{plan.model}: near {plan.near}, far {plan.far}, link {plan.link}, objective {plan.objective}",
                  caption=f"best: {plan.describe(plan.best)}, predicted {plan.best.seconds * 1e3:.2f} ms; "
                          f"placement {plan.placement()}")
    for e in plan.estimates:
        best = e is plan.best
        note = "[green]★ best[/green]" if best else (f"[red]{e.refused}[/red]" if e.refused else "")
        agreement = "—" if e.agreement is None else f"{e.agreement:.1%}"
        table.add_row(plan.describe(e).split(" (")[0], e.encoding, f"{e.link_bytes:,}", f"{e.near_seconds * 1e3:.2f}",
                      f"{e.link_seconds * 1e3:.2f}", f"{e.far_seconds * 1e3:.2f}", f"{e.seconds * 1e3:.2f}",
                      agreement, note, style="bold" if best else None)
    return table
