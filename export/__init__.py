"""layerserve.export."""
