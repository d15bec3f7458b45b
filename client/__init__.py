"""layerserve.client."""
