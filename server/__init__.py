"""layerserve.server."""
