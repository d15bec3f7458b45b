"""The ``layerserve.v1.LayerService`` servicer: list a model's blocks, run server-side chains."""

from __future__ import annotations

import grpc

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto import names
from layerserve.proto.tensors import decode_inputs, encode_outputs

from .dataplane import DataPlane
from .errors import handled, quoted


class LayerServicer(lpb_grpc.LayerServiceServicer):
    """``layerserve.v1.LayerService`` over a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @handled
    async def ListBlocks(self, request: lpb.ListBlocksRequest, context: grpc.aio.ServicerContext):
        model = self.dataplane.repository.model(request.model_name, request.model_version)
        return lpb.ListBlocksResponse(
            manifest=model.manifest,
            providers=model.providers,
            full_model_name=model.name,
            block_model_names=model.block_names,
            chain_model_name=names.chain_name(model.name),
            max_message_bytes=self.dataplane.max_message_bytes,
        )

    @handled
    async def Chain(self, request: lpb.ChainRequest, context: grpc.aio.ServicerContext):
        inputs = decode_inputs(request.request, quoted)
        result = await self.dataplane.chain(
            request.model_name,
            request.model_version,
            request.start,
            request.stop if request.HasField("stop") else None,
            list(request.keep),
            inputs,
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
