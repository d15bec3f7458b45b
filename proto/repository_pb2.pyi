from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape", "quantization")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    quantization: Quantization
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., quantization: _Optional[_Union[Quantization, _Mapping]] = ...) -> None: ...

class Quantization(_message.Message):
    __slots__ = ("scale", "zero_point")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    scale: float
    zero_point: int
    def __init__(self, scale: _Optional[float] = ..., zero_point: _Optional[int] = ...) -> None: ...

class FileRef(_message.Message):
    __slots__ = ("path", "sha256", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("index", "name", "file", "inputs", "outputs", "parameters", "flops", "output_bytes_per_sample", "op_types", "first_node", "last_node")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_PER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    OP_TYPES_FIELD_NUMBER: _ClassVar[int]
    FIRST_NODE_FIELD_NUMBER: _ClassVar[int]
    LAST_NODE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    file: FileRef
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    parameters: int
    flops: int
    output_bytes_per_sample: int
    op_types: _containers.RepeatedScalarFieldContainer[str]
    first_node: str
    last_node: str
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., file: _Optional[_Union[FileRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., parameters: _Optional[int] = ..., flops: _Optional[int] = ..., output_bytes_per_sample: _Optional[int] = ..., op_types: _Optional[_Iterable[str]] = ..., first_node: _Optional[str] = ..., last_node: _Optional[str] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("architecture", "dataset", "seed", "heldout_accuracy", "export_max_abs_diff", "chain_max_abs_diff", "tool_versions", "created", "source", "granularity", "training_epochs", "train_samples", "heldout_samples", "chain_max_rel_diff", "notes", "weights")
    class ToolVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EXPORT_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    CHAIN_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    TRAINING_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_MAX_REL_DIFF_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    dataset: str
    seed: int
    heldout_accuracy: float
    export_max_abs_diff: float
    chain_max_abs_diff: float
    tool_versions: _containers.ScalarMap[str, str]
    created: str
    source: str
    granularity: str
    training_epochs: int
    train_samples: int
    heldout_samples: int
    chain_max_rel_diff: float
    notes: _containers.RepeatedScalarFieldContainer[str]
    weights: str
    def __init__(self, architecture: _Optional[str] = ..., dataset: _Optional[str] = ..., seed: _Optional[int] = ..., heldout_accuracy: _Optional[float] = ..., export_max_abs_diff: _Optional[float] = ..., chain_max_abs_diff: _Optional[float] = ..., tool_versions: _Optional[_Mapping[str, str]] = ..., created: _Optional[str] = ..., source: _Optional[str] = ..., granularity: _Optional[str] = ..., training_epochs: _Optional[int] = ..., train_samples: _Optional[int] = ..., heldout_samples: _Optional[int] = ..., chain_max_rel_diff: _Optional[float] = ..., notes: _Optional[_Iterable[str]] = ..., weights: _Optional[str] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("resize", "crop_height", "crop_width", "mean", "std", "color", "background")
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CROP_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    resize: int
    crop_height: int
    crop_width: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    color: str
    background: str
    def __init__(self, resize: _Optional[int] = ..., crop_height: _Optional[int] = ..., crop_width: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., color: _Optional[str] = ..., background: _Optional[str] = ...) -> None: ...

class SampleSet(_message.Message):
    __slots__ = ("file", "count", "description")
    FILE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    file: FileRef
    count: int
    description: str
    def __init__(self, file: _Optional[_Union[FileRef, _Mapping]] = ..., count: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class ServingConfig(_message.Message):
    __slots__ = ("max_batch_size", "dynamic_batching", "max_queue_delay_us", "preferred_batch_sizes")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCHING_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    dynamic_batching: bool
    max_queue_delay_us: int
    preferred_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, max_batch_size: _Optional[int] = ..., dynamic_batching: _Optional[bool] = ..., max_queue_delay_us: _Optional[int] = ..., preferred_batch_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelManifest(_message.Message):
    __slots__ = ("format", "name", "version", "description", "full_model", "inputs", "outputs", "blocks", "provenance", "samples", "labels", "serving", "input_bytes_per_sample", "preprocessing", "weights")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FULL_MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_PER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    format: int
    name: str
    version: str
    description: str
    full_model: FileRef
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    blocks: _containers.RepeatedCompositeFieldContainer[Block]
    provenance: Provenance
    samples: SampleSet
    labels: _containers.RepeatedScalarFieldContainer[str]
    serving: ServingConfig
    input_bytes_per_sample: int
    preprocessing: Preprocessing
    weights: FileRef
    def __init__(self, format: _Optional[int] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., full_model: _Optional[_Union[FileRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., blocks: _Optional[_Iterable[_Union[Block, _Mapping]]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., samples: _Optional[_Union[SampleSet, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., serving: _Optional[_Union[ServingConfig, _Mapping]] = ..., input_bytes_per_sample: _Optional[int] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., weights: _Optional[_Union[FileRef, _Mapping]] = ...) -> None: ...
