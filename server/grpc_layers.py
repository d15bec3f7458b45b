"""The ``layerserve.v1.LayerService`` servicer: convert -> DataPlane -> convert."""

from __future__ import annotations

import grpc

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto.tensors import decode_inputs, encode_outputs

from .dataplane import DataPlane
from .errors import quoted
from .rpc import handled


class LayerServicer(lpb_grpc.LayerServiceServicer):
    """``layerserve.v1.LayerService`` over a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @handled
    async def ListBlocks(self, request: lpb.ListBlocksRequest, context: grpc.aio.ServicerContext):
        listing = self.dataplane.blocks(request.model_name, request.model_version)
        return lpb.ListBlocksResponse(
            manifest=listing.manifest,
            providers=listing.providers,
            full_model_name=listing.full_model_name,
            block_model_names=listing.block_model_names,
            chain_model_name=listing.chain_model_name,
            max_message_bytes=listing.max_message_bytes,
        )

    @handled
    async def Chain(self, request: lpb.ChainRequest, context: grpc.aio.ServicerContext):
        model = self.dataplane.chain_model(request.model_name, request.model_version)  # before any tensor
        result = await self.dataplane.chain(
            model,
            request.model_version,
            request.start,
            request.stop if request.HasField("stop") else None,
            list(request.keep),
            decode_inputs(request.request, quoted),
        )
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=result.model.version, id=request.request.id
        )
        encode_outputs(response, result.outputs)
        answer = lpb.ChainResponse(response=response, blocks_run=result.blocks_run)
        for kept in result.kept:
            block = answer.kept.add(block_index=kept.block_index, block_name=kept.block_name)
            encode_outputs(block.outputs, kept.outputs)
        return answer
