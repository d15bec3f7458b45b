"""Split computing for real: a near and a far server, the far one behind the link emulator (bench/linkemu.py).

``layerserve plan`` profiles both over real gRPC and the emulated link, ``layerserve chain --plan`` runs the
choice, and a compressed cut is seen crossing the link in fewer bytes. No timing is asserted: the link's
effect on latency is measured by bench/splitplan.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from client_support import free_port, layerserve, samples, start_server

from bench.linkemu import LinkEmulator
from layerserve.client import LayerClient, Plan

LINK = "20Mbit/s,10ms"
MODEL = "digits_resnet"


@pytest.fixture(scope="module")
def far_behind_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LinkEmulator]]:
    far = start_server(tmp_path_factory, "far")
    try:
        with LinkEmulator(far.address, LINK) as emulated:
            yield far.address, emulated
    finally:
        far.stop()


@pytest.fixture(scope="module")
def planned(server: str, far_behind_link: tuple[str, LinkEmulator], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[dict, Path]:
    """``layerserve plan --json --report`` with the session's server as near and the emulated far."""
    folder = tmp_path_factory.mktemp("plan")
    shown = layerserve("plan", MODEL, "--near", server, "--far", far_behind_link[1].address, "--link", LINK,
                       "--warmup", "1", "--repeats", "3", "--agreement-samples", "16", "--json",
                       "--report", str(folder / "report"))
    assert shown.returncode == 0, shown.stderr
    (folder / "plan.json").write_text(shown.stdout)
    return json.loads(shown.stdout), folder


def test_plan_profiles_both_endpoints_and_predicts_every_cut(planned: tuple[dict, Path], server: str) -> None:
    document, folder = planned
    profile, plan = document["profile"], document["plan"]
    assert profile["block_names"] == ["00_stem", "01_stage1", "02_stage2", "03_stage3", "04_head"]
    assert profile["cut_bytes"] == [4096, 16384, 16384, 8192, 4096, 40]  # from the manifest, one row
    for side in ("near", "far"):
        # per-block compute, less what every Chain call costs besides its blocks (a tiny head may be all of that)
        assert len(profile[side]["block_seconds"]) == 5 and all(t >= 0 for t in profile[side]["block_seconds"])
        assert sum(profile[side]["block_seconds"]) > 0 and profile[side]["rpc_seconds"] > 0
        assert all(row["client_seconds"] > row["compute_seconds"] > 0 for row in document["measured"][side])
    assert profile["samples"] == 16 and all(a is not None for a in profile["agreement"]["fp16"][:5])
    candidates = {(e["cut"], e["encoding"]) for e in plan["estimates"]}
    assert candidates == {(c, e) for c in range(5) for e in ("fp32", "fp16", "int8")} | {(5, "fp32")}
    allowed = [e for e in plan["estimates"] if e["refused"] is None]
    best = min(allowed, key=lambda e: (e["seconds"], e["link_bytes"]))
    assert plan["best"] == {"cut": best["cut"], "encoding": best["encoding"]}
    assert all(e["link_seconds"] >= 0.010 for e in plan["estimates"] if e["cut"] < 5)  # the link's RTT at least
    assert plan["near"] == server and (folder / "report" / "plan.png").is_file()
    assert "predicted" in (folder / "report" / "index.html").read_text()


def test_chain_runs_the_plan_and_agrees_with_the_full_model(planned: tuple[dict, Path], server: str,
                                                           tmp_path: Path) -> None:
    images, _ = samples(MODEL, 2)
    np.save(tmp_path / "x.npy", images)
    shown = layerserve("chain", MODEL, str(tmp_path / "x.npy"), "--plan", str(planned[1] / "plan.json"), "--json")
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    plan = Plan.from_dict(planned[0]["plan"])
    assert answer["where"] == "server" and set(answer["addresses"].values()) <= {plan.near, plan.far}
    with LayerClient(server) as client:
        full = client.infer_array(MODEL, images)
    logits = np.asarray(answer["outputs"]["logits"]["data"])
    assert np.array_equal(logits.argmax(1), full.argmax(1))


def _settled(emulated: LinkEmulator) -> tuple[int, int]:
    """The emulator's byte counts once they stop moving (it writes them every 0.1 s)."""
    last = emulated.carried()
    for _ in range(50):
        time.sleep(0.25)
        now = emulated.carried()
        if now == last:
            return now
        last = now
    raise AssertionError(f"the link emulator's byte counts never settled: {last}")


@pytest.mark.parametrize(("encoding", "crossing"), [("fp32", 16384), ("int8", 4096)])
def test_a_cut_crosses_the_link_in_its_encoding(planned: tuple[dict, Path], server: str, encoding: str,
                                                crossing: int, far_behind_link: tuple[str, LinkEmulator]) -> None:
    emulated = far_behind_link[1]
    plan = Plan.from_dict(planned[0]["plan"])
    # the plan as if it had chosen to cut after 01_stage1: a Plan runs as one Chain RPC per side
    forced = replace(plan, best=next(e for e in plan.estimates if (e.cut, e.encoding) == (2, encoding)))
    images, _ = samples(MODEL, 1)
    with LayerClient(server) as client:
        client.chain(MODEL, images, placement=forced)  # channel and windows open
        before = _settled(emulated)
        result = client.chain(MODEL, images, placement=forced)
        after = _settled(emulated)
        up, down = after[0] - before[0], after[1] - before[1]
        full = client.infer_array(MODEL, images)
    assert result.addresses == {"00_stem": server, "01_stage1": server, "02_stage2": emulated.address,
                                "03_stage3": emulated.address, "04_head": emulated.address}
    assert crossing <= up < crossing + 1024 and 40 <= down < 1024  # the activation one way, logits back
    assert result.output.argmax(1)[0] == full.argmax(1)[0]


def test_plan_refusals_are_one_line(server: str, planned: tuple[dict, Path], tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    cases = [
        (("plan", MODEL, "--near", nobody, "--far", server, "--link", LINK, "--timeout", "5"), 1,
         f"layerserve plan: UNAVAILABLE: near endpoint {nobody}: "),
        (("plan", MODEL, "--near", server, "--far", server, "--link", "20Mbit,10ms"), 2,
         "layerserve plan: link rate expects a number and one of bit/s"),
        (("plan", "nosuch", "--near", server, "--far", server, "--link", LINK), 1,
         f"layerserve plan: NOT_FOUND: far endpoint {server}: "),
        (("plan", MODEL, "--near", server, "--link", LINK), 2, "plan expects --near HOST:PORT and --far HOST:PORT"),
        (("plan", MODEL, "--near", server, "--far", server, "--link", LINK, "--encodings", "fp16,zstd"), 2,
         "--encodings expects some of fp32,fp16,int8, got 'zstd'"),
        (("chain", "digits_cnn", "x.npy", "--plan", str(planned[1] / "plan.json")), 2,
         "plans 'digits_resnet', not 'digits_cnn'"),
        (("plan", MODEL, "--profile", str(tmp_path / "missing.json"), "--link", LINK), 2,
         "missing.json is not `layerserve plan --json` output: FileNotFoundError"),
        (("chain", MODEL, "x.npy", "--plan", str(tmp_path / "other.json")), 2, "other.json holds no plan: KeyError"),
        (("plan", MODEL, "--profile", str(tmp_path / "other.json"), "--link", LINK), 2,
         "other.json holds no profile: KeyError"),
    ]
    (tmp_path / "other.json").write_text('{"plan": {"model": "digits_resnet"}, "profile": {"model": "digits_resnet"}}')
    for args, code, message in cases:
        shown = layerserve(*args)
        assert shown.returncode == code, (args, shown.stderr)
        assert shown.stderr.startswith(f"layerserve {args[0]}: "), (args, shown.stderr)
        assert message in shown.stderr and shown.stderr.count("\n") == 1, (args, shown.stderr)
        assert "Traceback" not in shown.stderr


def test_a_saved_profile_replans_for_another_link_without_servers(planned: tuple[dict, Path]) -> None:
    shown = layerserve("plan", MODEL, "--profile", str(planned[1] / "plan.json"), "--link", "100kbit/s,300ms")
    assert shown.returncode == 0, shown.stderr
    assert "best: all near" in shown.stdout and "100kbit/s,300ms" in shown.stdout
