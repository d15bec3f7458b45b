"""Which inputs split reads as pictures, and how it sizes one without a batch dimension (proto/pictures.py,
export/batch.py), on files exported as users write these models."""

from __future__ import annotations

from pathlib import Path

import foreign_graphs

from layerserve.export.graph import load_model
from layerserve.export.imported import per_sample_shape, split_to_repository


def test_a_signal_for_1d_convolutions_is_no_picture(tmp_path: Path) -> None:
    source = foreign_graphs.signal_conv1d(tmp_path / "ecg.onnx")
    manifest = split_to_repository(source, tmp_path / "repo" / "ecg")
    assert list(manifest.inputs[0].shape) == [-1, 12, 100]
    assert not manifest.HasField("preprocessing")  # not "resize to 12x100, L" for an ECG's twelve leads


def test_a_grey_sample_without_channel_axis_is_sized_as_one_channel(tmp_path: Path) -> None:
    model = load_model(foreign_graphs.grey_without_channel_axis(tmp_path / "grey.onnx"))
    assert model.batched and model.fixed_batch is None
    assert per_sample_shape(model.proto) == [1, 28, 28]


def test_an_input_without_batch_dimension_is_one_sample(tmp_path: Path) -> None:
    model = load_model(foreign_graphs.one_picture_hwc(tmp_path / "one.onnx"))
    assert not model.batched and model.fixed_batch == 32  # served fixed: requests are [32, 32, 3] as they are
    assert per_sample_shape(model.proto) == [32, 32, 3]
    note = model.notes[-1]
    assert note.startswith("batch none: the input [32,32,3] is one sample with no batch dimension (no output has "
                           "32 rows: [1,10]); each request is one [32,32,3] sample, never merged"), note

