"""Peer servers we measure against, each run from its own virtual environment."""
