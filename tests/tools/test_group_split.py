"""group_split -> group_merge on AlexNet is exact; the split weights have the split net's shapes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from neocaffe.io.weights import LayerWeights, load_weights
from neocaffe.tools import caffemodel_convertor, group_split

MODELS = Path(__file__).resolve().parents[2] / "models" / "bvlc_alexnet"

# BVLC AlexNet parameter shapes (grouped conv2/4/5)
SHAPES = {
    "conv1": [(96, 3, 11, 11), (96,)], "conv2": [(256, 48, 5, 5), (256,)], "conv3": [(384, 256, 3, 3), (384,)],
    "conv4": [(384, 192, 3, 3), (384,)], "conv5": [(256, 192, 3, 3), (256,)],
    "fc6": [(4096, 9216), (4096,)], "fc7": [(4096, 4096), (4096,)], "fc8": [(1000, 4096), (1000,)],
}
SPLIT = {  # what train_val_split.prototxt expects
    "conv1_group0": (48, 3, 11, 11), "conv2_group1": (128, 48, 5, 5), "conv3_group0": (192, 256, 3, 3),
    "conv4_group1": (192, 192, 3, 3), "conv5_group0": (128, 192, 3, 3), "fc6": (4096, 9216),
}


def _grouped(rng) -> list[LayerWeights]:
    return [LayerWeights(n, "InnerProduct" if n.startswith("fc") else "Convolution",
                         [rng.standard_normal(s).astype(np.float32) for s in shapes]) for n, shapes in SHAPES.items()]


def test_split_merge_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    grouped = _grouped(rng)
    from neocaffe.io.weights import save_weights

    save_weights(tmp_path / "alexnet.caffemodel", grouped)
    assert group_split.main_split([str(MODELS / "train_val_split.prototxt"), str(tmp_path / "alexnet.caffemodel"),
                                   str(tmp_path / "split.caffemodel.h5")]) == 0
    split = {lw.name: lw for lw in load_weights(tmp_path / "split.caffemodel.h5")}
    for name, shape in SPLIT.items():
        assert split[name].blobs[0].shape == shape, name
    np.testing.assert_array_equal(split["conv2_group1"].blobs[0], grouped[1].blobs[0][128:])
    assert group_split.main_merge([str(MODELS / "train_val.prototxt"), str(tmp_path / "split.caffemodel.h5"),
                                   str(tmp_path / "merged.caffemodel")]) == 0
    merged = load_weights(tmp_path / "merged.caffemodel")
    assert [lw.name for lw in merged] == list(SHAPES)
    for a, b in zip(grouped, merged):
        for x, y in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(x, y)


def test_caffemodel_convertor_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    layers = [LayerWeights("ip", "InnerProduct", [rng.standard_normal((3, 4)).astype(np.float32),
                                                  rng.standard_normal(3).astype(np.float32)])]
    from neocaffe.io.weights import save_weights

    save_weights(tmp_path / "a.caffemodel", layers)
    assert caffemodel_convertor.main([str(tmp_path / "a.caffemodel"), str(tmp_path / "b.caffemodel.h5")]) == 0
    assert caffemodel_convertor.main([str(tmp_path / "b.caffemodel.h5"), str(tmp_path / "c.caffemodel")]) == 0
    back = load_weights(tmp_path / "c.caffemodel")
    for x, y in zip(layers[0].blobs, back[0].blobs):
        np.testing.assert_array_equal(x, y)
