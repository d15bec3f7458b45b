"""The contracts every part of layerserve shares.

The ``.proto`` files in this folder are the source of truth; ``*_pb2.py`` and
``*_pb2_grpc.py`` are generated from them by ``make proto`` (see ``generate.py``)
and committed, so serving needs no code generator. ``tensors`` is the one place
that maps Open Inference Protocol datatypes to numpy and encodes tensors.
"""
