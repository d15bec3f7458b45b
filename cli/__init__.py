"""The ``layerserve`` command line: one entry point, subcommands from each package."""
