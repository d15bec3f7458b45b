"""Your own PyTorch model through layerserve: ``layerserve export --model FILE.py:NAME``.

Contract of :func:`export_user_model`: resolve ``NAME`` in a Python file or an
importable module (an ``nn.Module`` class or a factory returning one, either called
without arguments), seed the random initialisation, load ``--weights`` (a
state_dict, or a checkpoint holding one under ``state_dict``/``model``, with
DataParallel's ``module.`` prefixes tolerated) strictly, export with the dynamo
exporter and a dynamic batch, check PyTorch parity (relative to the logits' scale),
split at the model's own module tree (blocks named ``stem``, ``layer1``, ..., ``fc``),
check the chain and write the repository. Every refusal is an ExportError whose
message says what is wrong and what to do.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerserve.proto.repository_pb2 import ModelManifest, Preprocessing, Provenance

from .errors import ExportError

EXPORT_TOLERANCE = 1e-4
PARITY_BATCH = 2
# How many names a key mismatch lists before "+N more".
LISTED_KEYS = 5


@dataclass(frozen=True)
class UserModel:
    """What to export: ``spec`` (``FILE.py:NAME`` or ``package.module:NAME``) and its input."""

    spec: str
    input_shape: tuple[int, ...]
    weights: Path | None = None
    seed: int = 0
    labels: list[str] = field(default_factory=list)


def _resolve(spec: str) -> object:
    """The object ``NAME`` of ``FILE.py:NAME`` / ``package.module:NAME``."""
    if ":" not in spec:
        raise ExportError(f"--model takes FILE.py:NAME or package.module:NAME, got {spec!r}")
    where, _, name = spec.rpartition(":")
    if where.endswith(".py") or "/" in where or Path(where).is_file():
        path = Path(where)
        if not path.is_file():
            raise ExportError(f"--model {spec}: no such file {where}")
        module_name = f"layerserve_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ExportError(f"--model {spec}: {where} is not a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
        try:
            loader_spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - the user's code may raise anything
            raise ExportError(f"--model {spec}: importing {where} failed: {type(error).__name__}: {_first_line(error)}") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:  # noqa: BLE001
            raise ExportError(f"--model {spec}: cannot import {where}: {type(error).__name__}: {_first_line(error)}") from None
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
        raise ExportError(f"--model {spec}: {where} has no {name!r} (it defines {', '.join(public) or 'nothing public'})")
    return getattr(module, name)


def build_module(spec: str, seed: int = 0):
    """Instantiate the model ``spec`` names, seeded, in eval mode."""
    from torch import nn

    from .train import seed_everything

    target = _resolve(spec)
    if not callable(target):
        raise ExportError(f"--model {spec}: {type(target).__name__} is neither an nn.Module class nor a factory")
    seed_everything(seed)
    try:
        model = target()
    except TypeError as error:
        raise ExportError(
            f"--model {spec}: calling it without arguments failed ({_first_line(error)}); "
            "point --model at a function that builds the model with the arguments you want"
        ) from None
    if not isinstance(model, nn.Module):
        raise ExportError(f"--model {spec} gave a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_weights(model, path: Path, spec: str) -> str:
    """Load a state_dict into ``model`` strictly; returns the provenance line. ExportError naming mismatched keys."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"--weights {path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several kinds for foreign files
        raise ExportError(
            f"--weights {path} is not a state_dict torch.load can read safely: {_first_line(error)}; "
            "save one with torch.save(model.state_dict(), PATH)"
        ) from None
    state = loaded
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"--weights {path} holds a {type(loaded).__name__}, not a state_dict of tensors")
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    resized = [
        f"{key} {list(state[key].shape)} vs {list(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label} {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", resized))
        if keys
    ]
    if problems:
        raise ExportError(f"--weights {path.name} does not match {spec}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"state_dict {path.name} sha256 {digest}"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    return shown + (f" (+{len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else "")


def _exporter_cause(error: BaseException) -> BaseException:
    """What made the exporter fail: torch.onnx wraps torch.export's error in a TorchExportError whose first line
    only says which step failed ("... step 1/3 ... Next steps:"); the reason is its cause ("Exporting a
    ScriptModule is not supported", a data-dependent ``if``)."""
    cause = error.__cause__
    return cause if type(error).__name__ == "TorchExportError" and cause is not None else error


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def export_user_model(
    user: UserModel,
    root: Path,
    name: str,
    depth: int | None = None,
    preprocessing: Preprocessing | None = None,
    onnx_out: Path | None = None,
) -> ModelManifest:
    """Export, check, split and write ``user``'s model as ``root/name/1`` (module docstring)."""
    import onnx
    import torch

    from .graph import load_model
    from .imported import SplitOptions, checked_split
    from .onnx_export import export_onnx, onnx_logits
    from .parity import relative_diff
    from .preprocessing import image_preprocessing
    from .repository import write_repository
    from .versions import tool_versions

    if not user.input_shape or any(d <= 0 for d in user.input_shape):
        raise ExportError(f"--input-shape takes the per-sample shape like 3,224,224, got {list(user.input_shape)}")
    model = build_module(user.spec, user.seed)
    weights = (
        load_weights(model, user.weights, user.spec)
        if user.weights is not None
        else f"untrained: seeded random initialisation (seed {user.seed}); pass --weights for trained ones"
    )
    images = np.random.default_rng(user.seed).standard_normal((PARITY_BATCH, *user.input_shape)).astype(np.float32)
    try:
        with torch.no_grad():
            expected = model(torch.from_numpy(images))
    except Exception as error:  # noqa: BLE001 - the user's forward may raise anything
        raise ExportError(
            f"{user.spec} fails on input [{PARITY_BATCH},{','.join(map(str, user.input_shape))}]: "
            f"{type(error).__name__}: {_first_line(error)}; check --input-shape"
        ) from None
    if not isinstance(expected, torch.Tensor):
        raise ExportError(f"{user.spec} returns a {type(expected).__name__}; layerserve exports models with one tensor output")
    try:
        proto = export_onnx(model, user.input_shape)
    except Exception as error:  # noqa: BLE001 - the exporter raises many kinds, with long messages
        cause = _exporter_cause(error)
        raise ExportError(
            f"torch.onnx.export (dynamo) could not export {user.spec}: {type(cause).__name__}: {_first_line(cause)}"
        ) from None
    expected = expected.numpy()
    absolute, relative = relative_diff(onnx_logits(proto, images), expected)
    if not relative <= EXPORT_TOLERANCE:
        raise ExportError(
            f"{user.spec}: ONNX Runtime's output differs from PyTorch's by {absolute:.3g} "
            f"({relative:.3g} of the output's scale > {EXPORT_TOLERANCE:g}); the export is not faithful"
        )
    if onnx_out is not None:
        onnx_out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(onnx_out))
    loaded = load_model(proto)
    result, report = checked_split(loaded, SplitOptions(depth=depth))
    untrained = user.weights is None
    provenance = Provenance(
        architecture=f"{user.spec}: {type(model).__name__}",
        seed=user.seed,
        export_max_abs_diff=absolute,
        chain_max_abs_diff=report.max_abs_diff,
        chain_max_rel_diff=report.max_rel_diff,
        tool_versions=tool_versions(),
        created=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        source=f"layerserve export --model {user.spec}",
        granularity=result.granularity,
        notes=list(loaded.notes),
        weights=weights,
    )
    description = f"{type(model).__name__} from {user.spec}" + (" (untrained: random weights)" if untrained else "")
    return write_repository(
        root,
        name,
        loaded.proto,
        result,
        provenance,
        description=description,
        labels=user.labels,
        preprocessing=preprocessing or image_preprocessing(user.input_shape),
    )
