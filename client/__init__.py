"""layerserve.client: a typed, numpy-in, numpy-out client of a layerserve server.

``LayerClient`` speaks the Open Inference Protocol and the layer extension;
``Placement`` routes block ranges to servers; ``fit`` holds the adapters that
force a tensor into another block's input shape; ``experiment`` and ``report``
answer "why not feed the image to the last layer?" with numbers and pictures;
``Link``, ``profiling`` and ``planner`` decide where to cut between a near and a far
server (``Plan``), which ``LayerClient.chain(..., placement=plan)`` runs.
"""

from .api import ChainResult, LayerClient, ModelBlocks, ModelMetadata, TensorSpec
from .connection import REPLICAS_OPTIONS, REPLICAS_SERVICE_CONFIG, ConnectionSettings
from .errors import ServerError
from .link import Link, LinkError
from .placement import Placement, PlacementError
from .planner import Plan

__all__ = [
    "ChainResult",
    "ConnectionSettings",
    "LayerClient",
    "Link",
    "LinkError",
    "ModelBlocks",
    "ModelMetadata",
    "Placement",
    "PlacementError",
    "Plan",
    "REPLICAS_OPTIONS",
    "REPLICAS_SERVICE_CONFIG",
    "ServerError",
    "TensorSpec",
]
