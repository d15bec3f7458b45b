"""Split computing: blocks 0-2 on one server process, 3-4 on another, chained by the client."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from client_support import samples, start_server

from layerserve.client import LayerClient, Placement


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    edge = start_server(tmp_path_factory, "edge")
    try:
        gpu = start_server(tmp_path_factory, "gpu")
    except BaseException:
        edge.stop()
        raise
    yield edge.address, gpu.address
    gpu.stop()
    edge.stop()


def _counts(client: LayerClient, address: str, model: str) -> dict[str, int]:
    blocks = client.blocks(model)
    return {
        name: sum(s.inference_count for s in client.model_statistics(name, address=address))
        for name in blocks.block_model_names
    }


@pytest.mark.parametrize("model", ["digits_cnn", "digits_resnet"])
def test_client_chain_runs_each_range_on_its_server(two_servers: tuple[str, str], model: str) -> None:
    edge, gpu = two_servers
    images, _ = samples(model, 70)
    placement = Placement.parse(f"0-2={edge},3-4={gpu}")
    with LayerClient(edge, placement=placement) as client:
        names = client.blocks(model).block_model_names
        before = {address: _counts(client, address, model) for address in (edge, gpu)}
        result = client.chain(model, images, where="client")
        after = {address: _counts(client, address, model) for address in (edge, gpu)}
        with LayerClient(gpu) as direct:  # the same blocks, all on one server
            reference = direct.chain(model, images, where="client").output
    assert np.array_equal(result.output, reference)
    ran = {address: {n for n in names if after[address][n] - before[address][n]} for address in (edge, gpu)}
    assert ran[edge] == set(names[:3]) and ran[gpu] == set(names[3:])
    assert all(after[edge][n] - before[edge][n] == 70 for n in names[:3])
    assert list(result.addresses.values()) == [edge] * 3 + [gpu] * 2


def test_server_chains_split_across_servers(two_servers: tuple[str, str]) -> None:
    edge, gpu = two_servers
    images, _ = samples("digits_cnn", 20)
    placement = Placement.parse(f"0-1={edge},2-4={gpu}")
    with LayerClient(edge, placement=placement) as client, LayerClient(edge) as alone:
        split = client.chain("digits_cnn", images, where="server", keep=[1, 3])
        whole = alone.chain("digits_cnn", images, where="server", keep=[1, 3])
    names = whole.blocks_run
    # blocks_run comes from each server's own answer: the edge ran 0-1, the GPU server 2-4.
    assert split.blocks_run == names
    assert split.addresses == {**dict.fromkeys(names[:2], edge), **dict.fromkeys(names[2:], gpu)}
    assert np.array_equal(split.output, whole.output)
    assert list(split.kept) == list(whole.kept) and len(split.kept) == 2
