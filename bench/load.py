"""``make load``: a bounded, headless Locust run against Open Inference Protocol endpoints.

Starts a layerserve server on a free loopback port unless ``--server`` names one,
runs Locust headless for ``--duration`` with the HTML report, CSV and final JSON
statistics written to ``--out``, stops the server, and prints the per-target summary.
The exit code is 0 only when every target answered and none failed.

    python -m bench.load --targets full,block,chain,client_chain --users 16 --duration 20s
    python -m bench.load --server 127.0.0.1:9001 --model digits_cnn --targets full   # any OIP server
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from layerserve.server.launcher import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10
_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Locust's run-time syntax (``20``, ``20s``, ``2m``, ``1h30m``) in seconds; ValueError otherwise."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = re.findall(r"(\d+)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"duration {text!r} is not like 20s, 2m or 1h30m")
    return float(sum(int(n) * _UNITS[u] for n, u in parts))


@dataclass
class TargetStats:
    """Final Locust statistics of one target (one user action; a client chain is one)."""

    name: str
    requests: int
    failures: int
    throughput: float  # requests per second over the target's active time
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_bytes: float  # response bytes per action


def _percentile(response_times: dict[str, int], q: float) -> float:
    """Locust's histogram (rounded ms -> count) at quantile ``q``."""
    total = sum(response_times.values())
    if total == 0:
        return float("nan")
    seen = 0
    for value, count in sorted(((float(k), c) for k, c in response_times.items())):
        seen += count
        if seen >= q * total:
            return value
    return float("nan")


def read_stats(path: Path) -> list[TargetStats]:
    """Per-target statistics from Locust's ``--json-file`` output (written once, at the end of the run)."""
    if not path.exists():
        return []
    rows = []
    for entry in json.loads(path.read_text()):
        requests = int(entry["num_requests"])
        active = max(entry["last_request_timestamp"] - entry["start_time"], 1e-9) if requests else 0.0
        rows.append(
            TargetStats(
                name=entry["name"],
                requests=requests,
                failures=int(entry["num_failures"]),
                throughput=requests / active if active else 0.0,
                p50_ms=_percentile(entry["response_times"], 0.50),
                p95_ms=_percentile(entry["response_times"], 0.95),
                p99_ms=_percentile(entry["response_times"], 0.99),
                avg_bytes=entry["total_content_length"] / requests if requests else 0.0,
            )
        )
    return rows


def run_locust(address: str, args: argparse.Namespace) -> int:
    """Run Locust headless against ``address``; returns its exit code (1 when any request failed).

    Bounded: Locust stops itself after ``--duration``; the process is killed if it has not
    exited ``STOP_TIMEOUT_S + 60`` seconds after that.
    """
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        LOAD_MODEL=args.model,
        LOAD_TARGETS=args.targets,
        LOAD_BATCH=str(args.batch),
        **({"LOAD_BLOCK": args.block} if args.block else {}),
        **({"LOAD_INPUT": args.input} if args.input else {}),
    )
    command = [
        sys.executable, "-m", "locust",
        "-f", str(REPO_ROOT / "bench" / "locustfile.py"),
        "--headless",
        "--host", address,
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate or args.users),
        "--run-time", args.duration,
        "--stop-timeout", str(STOP_TIMEOUT_S),
        "--html", str(args.out / "report.html"),
        "--csv", str(args.out / "stats"),
        "--json-file", str(args.out / "stats"),
        "--only-summary",
    ]
    bound = parse_duration(args.duration) + STOP_TIMEOUT_S + 60
    try:
        return subprocess.run(command, env=env, cwd=REPO_ROOT, check=False, timeout=bound).returncode
    except subprocess.TimeoutExpired:
        print(f"locust did not stop within {bound:.0f}s; killed", file=sys.stderr)
        return 124


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="address of a running OIP server (default: start layerserve on loopback)")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models", help="repository to serve")
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--targets", default="full,block,chain,client_chain",
                        help="comma-separated: full, block, chain, client_chain (each user cycles through them)")
    parser.add_argument("--block", help="block name for the 'block' target (default: the first)")
    parser.add_argument("--input", help="name:DATATYPE:dims for servers whose ModelMetadata lists no inputs")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=0, help="users started per second (default: all at once)")
    parser.add_argument("--duration", default="20s", help="Locust run time, e.g. 20s, 2m")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "load")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for a started server")
    args = parser.parse_args(argv)
    parse_duration(args.duration)  # refuse a bad duration before starting anything
    (args.out / "stats.json").unlink(missing_ok=True)  # never report a previous run's numbers

    if args.server:
        code = run_locust(args.server, args)
    else:
        with ServerProcess(args.models, extra_args=["--log-level", "WARNING", *args.server_arg]) as server:
            code = run_locust(server.address, args)
    rows = read_stats(args.out / "stats.json")
    for row in rows:
        print(
            f"{row.name:>14}: {row.requests:>7} requests, {row.failures} failed, {row.throughput:8.1f} req/s, "
            f"p50 {row.p50_ms:g} ms, p95 {row.p95_ms:g} ms, p99 {row.p99_ms:g} ms, {row.avg_bytes:,.0f} B/response"
        )
    print(f"report: {args.out / 'report.html'}")
    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    answered = {row.name for row in rows if row.requests > 0}
    if code == 0 and not wanted <= answered:
        print(f"no requests for: {', '.join(sorted(wanted - answered))}", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
