"""Fit adapters: force a tensor into another block's input shape, in pure numpy.

They answer "what if we just fed the image to the last block anyway?": each makes
the shapes agree while knowing nothing about what the block learned to expect.

Contract of every adapter: ``x`` is ``[N, *source]``, ``shape`` is the target's
per-sample shape (a spec's leading batch dimension, -1 or not, is dropped by
:func:`per_sample`); the result is float32 ``[N, *shape]``, deterministic (the
projection is seeded). When ``x`` already has the target shape it is returned
unchanged: there is nothing to force. :func:`fit` then gives it the target's type,
rounded and clipped into an integer type's range (a quantized block's INT8 input).
The adapters see ``[N, C, H, W]``: :func:`fit` transposes a channels-last side
(:func:`channels_last`, a Keras picture ``[N, H, W, 3]`` or a TFLite activation)
on the way in and out, so channels stay channels, and gives a grey picture without
a channel axis (``[N, H, W]``, fitted to a ``[C, H, W]`` block) its one channel.

* ``resize``: area (box) resampling of the spatial dimensions, then channel
  tiling (output channel c reads input channel c mod C). Tensors that are not
  ``[C, H, W]`` on both sides are flattened and resampled as one axis.
* ``pad``: centred zero padding or cropping, dimension by dimension (flattened
  when the ranks differ).
* ``project``: a fixed sparse random projection (each output is a signed sum of
  ``PROJECTION_TERMS`` inputs chosen by ``seed``, scaled to keep the norm), so it
  stays cheap even between large activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from layerserve.proto.pictures import sample_shape

PROJECTION_TERMS = 8


def per_sample(shape: Sequence[int]) -> tuple[int, ...]:
    """A spec shape without its batch dimension (the whole of a picture input that has none:
    proto/pictures.py); ValueError if another dimension is symbolic."""
    dims = tuple(int(d) for d in sample_shape(shape))
    if any(d <= 0 for d in dims):
        raise ValueError(f"cannot fit to shape {list(shape)}: only the batch dimension may be dynamic")
    return dims


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights: each output cell averages the input cells it overlaps."""
    edges_in = np.arange(n_in + 1, dtype=np.float64)
    edges_out = np.linspace(0.0, n_in, n_out + 1)
    low = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    high = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    overlap = np.clip(high - low, 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(x: np.ndarray, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Area-resize the spatial dims to ``shape[1:]`` and tile channels to ``shape[0]``."""
    del seed  # deterministic without randomness; same signature as the others
    x, target = np.asarray(x, dtype=np.float32), tuple(shape)
    if x.shape[1:] == target:
        return x
    if x.ndim == 4 and len(target) == 3:
        channels, height, width = target
        rows = _area_matrix(x.shape[2], height)
        cols = _area_matrix(x.shape[3], width)
        spatial = np.einsum("oh,nchw,pw->ncop", rows, x, cols, optimize=True)
        tiled = spatial[:, np.arange(channels) % x.shape[1]]
        return np.ascontiguousarray(tiled, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    resampled = flat @ _area_matrix(flat.shape[1], int(np.prod(target))).T
    return np.ascontiguousarray(resampled.reshape(len(x), *target), dtype=np.float32)


def pad(x: np.ndarray, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Centred zero padding / cropping of every per-sample dimension to ``shape``."""
    del seed
    x, target = np.asarray(x, dtype=np.float32), tuple(shape)
    if x.shape[1:] == target:
        return x
    if x.ndim - 1 != len(target):
        flat = x.reshape(len(x), -1)[:, : int(np.prod(target))]
        out = np.zeros((len(x), int(np.prod(target))), dtype=np.float32)
        out[:, : flat.shape[1]] = flat
        return out.reshape(len(x), *target)
    out = np.zeros((len(x), *target), dtype=np.float32)
    src: list[slice] = [slice(None)]
    dst: list[slice] = [slice(None)]
    for have, want in zip(x.shape[1:], target, strict=True):
        keep = min(have, want)
        src.append(slice((have - keep) // 2, (have - keep) // 2 + keep))
        dst.append(slice((want - keep) // 2, (want - keep) // 2 + keep))
    out[tuple(dst)] = x[tuple(src)]
    return out


def project(x: np.ndarray, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A seeded sparse random projection of the flattened sample onto ``shape``."""
    x, target = np.asarray(x, dtype=np.float32), tuple(shape)
    if x.shape[1:] == target:
        return x
    flat = x.reshape(len(x), -1)
    n_in, n_out = flat.shape[1], int(np.prod(target))
    rng = np.random.default_rng([seed, n_in, n_out])
    picks = rng.integers(0, n_in, size=(n_out, PROJECTION_TERMS))
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(n_out, PROJECTION_TERMS))
    # Each output sums `terms` inputs of mean square |x|^2 / n_in: this scale keeps E|y|^2 = |x|^2.
    scale = np.float32(np.sqrt(n_in / (PROJECTION_TERMS * n_out)))
    projected = np.einsum("nok,ok->no", flat[:, picks], signs) * scale
    return np.ascontiguousarray(projected.reshape(len(x), *target), dtype=np.float32)


ADAPTERS: dict[str, Callable[..., np.ndarray]] = {"resize": resize, "pad": pad, "project": project}
FITS: tuple[str, ...] = tuple(ADAPTERS)


def fit(x: np.ndarray, shape: Sequence[int], method: str, seed: int = 0, dtype: np.dtype | type = np.float32
        ) -> np.ndarray:
    """Apply adapter ``method`` (one of :data:`FITS`) to fit ``x`` to per-sample ``shape`` and type ``dtype``.

    Raises ValueError naming the known adapters for an unknown ``method``.
    """
    try:
        adapter = ADAPTERS[method]
    except KeyError:
        raise ValueError(f"unknown fit {method!r} (known: {', '.join(FITS)})") from None
    target = tuple(int(d) for d in shape)
    if np.shape(x)[1:] == target:
        return as_type(adapter(x, target, seed), dtype)
    # The adapters work on [N, C, H, W]: a grey picture without a channel axis ([N, H, W]) gets one, and a
    # channels-last side goes through them transposed.
    if np.ndim(x) == 3 and len(target) == 3:
        x = np.asarray(x)[:, None]
    if channels_last(np.shape(x)):
        x = np.moveaxis(np.asarray(x), 3, 1)
    if channels_last((0, *target)):
        fitted = adapter(x, (target[2], target[0], target[1]), seed)
        return as_type(np.ascontiguousarray(np.moveaxis(fitted, 1, 3)), dtype)
    return as_type(adapter(x, target, seed), dtype)


def channels_last(shape: Sequence[int]) -> bool:
    """Whether a rank-4 ``[N, a, b, c]`` tensor reads as ``[N, H, W, C]`` (Keras's and TFLite's layout).

    Yes for a picture with 1 or 3 channels last and neither before, and for an activation whose two
    equal sides come before a different last one (``[N, 7, 7, 1280]``). Anything else, ambiguous shapes
    and pooled ``[N, C, 1, 1]`` vectors included, reads as ``[N, C, H, W]``.
    """
    if len(shape) != 4:
        return False
    _, a, b, c = (int(d) for d in shape)
    return (c in (1, 3) and a not in (1, 3) and b not in (1, 3)) or a == b != c


def as_type(x: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """``x`` as ``dtype``; floats going to an integer type are rounded and clipped into its range, so a
    forced fit is forced all the way instead of wrapping around."""
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if dtype.kind in "iu" and x.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)
