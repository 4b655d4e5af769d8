"""Caffe's legacy layer-type tables (upgrade_proto.cpp: UpgradeV0LayerType, UpgradeV1LayerType).

Plain data with no protobuf import, so the minimal weight reader can name V0/V1 layers by their
current type string.
"""

from __future__ import annotations

__all__ = ["V1_TYPE_NUMBERS", "V1_TO_V2_TYPE", "V0_TO_V1_TYPE", "C3D_V1_TYPES", "v1_type_string", "v0_type_string",
           "c3d_v1_type_string"]

# V1LayerParameter.LayerType: enum name -> number (caffe.proto).
V1_TYPE_NUMBERS: dict[str, int] = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3,
    "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6,
    "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9,
    "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11, "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13,
    "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29, "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34,
    "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27,
    "SILENCE": 36, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23,
    "WINDOW_DATA": 24, "THRESHOLD": 31,
    "CROP": 40,  # s9xie/hed's schema (its UpgradeV1LayerType maps it to "Crop")
}

# UpgradeV1LayerType: V1 enum name -> LayerParameter.type string.
V1_TO_V2_TYPE: dict[str, str] = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col", "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling",
    "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    "CROP": "Crop",
}

# UpgradeV0LayerType: V0 type string -> V1 enum name.
V0_TO_V1_TYPE: dict[str, str] = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS", "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING", "relu": "RELU",
    "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT",
    "tanh": "TANH", "window_data": "WINDOW_DATA",
    "crop": "CROP",  # s9xie/hed's UpgradeV0LayerType
}

_V1_NAMES_BY_NUMBER = {number: name for name, number in V1_TYPE_NUMBERS.items()}


def v1_type_string(number: int) -> str | None:
    """The current type string of a V1 enum number (None if Caffe does not know the number)."""
    name = _V1_NAMES_BY_NUMBER.get(number)
    return None if name is None else V1_TO_V2_TYPE[name]


def v0_type_string(v0_type: str) -> str | None:
    """The current type string of a V0 type such as ``"conv"`` (None if unknown)."""
    name = V0_TO_V1_TYPE.get(v0_type)
    return None if name is None else V1_TO_V2_TYPE[name]


# C3D-v1.0 (facebookarchive/C3D @ 71336a2, C3D-v1.0/src/caffe/proto/caffe.proto and src/caffe/layer_factory.cpp):
# its LayerParameter is the V1 message, with these LayerType values of its own (the schema numbers them 3000 +
# the fork's number, proto/NUMBERING.md). The type strings are the fork's class names without "Layer", as
# UpgradeV1LayerType names BVLC's (Convolution3DLayer -> "Convolution3D"); ELTWISE_PRODUCT, the fork's
# EltwiseProductLayer, is Eltwise with operation PROD (io/upgrade.py sets it). Its numbers 0-29 other than 25
# are BVLC's.
C3D_V1_TYPES: dict[str, tuple[int, str]] = {
    "ELTWISE_PRODUCT": (25, "Eltwise"), "CONVOLUTION3D": (30, "Convolution3D"), "POOLING3D": (31, "Pooling3D"),
    "VOLUME_DATA": (32, "VolumeData"), "VIDEO_DATA": (33, "VideoData"), "DECONVOLUTION3D": (34, "Deconvolution3D"),
    "VIDEO_SEGMENTATION_DATA": (35, "VideoSegmentationData"), "VOXEL_SOFTMAX": (36, "VoxelWiseSoftmax"),
    "VOXEL_SOFTMAX_LOSS": (37, "VoxelWiseSoftmaxWithLoss"),
    "VIDEO_WITH_VOXEL_TRUTH_DATA": (38, "VideoWithVoxelTruthData"), "VOXEL_CUSTOM_LOSS": (39, "VoxelCustomLoss"),
    "DOWN_SAMPLING": (40, "DownSampling"),
}
V1_TO_V2_TYPE.update({name: type_ for name, (_, type_) in C3D_V1_TYPES.items()})
_C3D_BY_NUMBER = {number: type_ for number, type_ in C3D_V1_TYPES.values()}


def c3d_v1_type_string(number: int) -> str | None:
    """The type string of a V1 enum number as C3D-v1.0 numbers them (a C3D ``.caffemodel``); None if unknown."""
    if number in _C3D_BY_NUMBER:
        return _C3D_BY_NUMBER[number]
    return v1_type_string(number) if number < 30 else None
