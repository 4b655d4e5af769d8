"""DetectionOutput's ``visualize`` (weiliu89/caffe ssd: VisualizeBBox, GetColors, HSV2RGB, TransformInv): the
fork's colours from OpenCV's own generator, the images taken back through the layer's transform_param,
the boxes, tags and FPS box drawn where the fork draws them, the frames written to ``save_file``, one
warning where OpenCV has no window, and the setups the fork cannot draw with."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.examples import read_video
from neocaffe.layers._detection_visualize import DetectionVisualizer, colors, hsv_to_rgb, rng_uniform_floats
from neocaffe.layers.base import TEST, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

LABELS = 'item { name: "none_of_the_above" label: 0 display_name: "background" } ' \
         'item { name: "cat" label: 1 display_name: "Cat" } item { name: "dog" label: 2 display_name: "Dog" }'


def test_colours_come_from_opencvs_generator():
    """cv::RNG(12345): OpenCV's randu fills floats from the same multiply-with-carry states read as signed
    (a draw + 0.5, wrapped); RNG::uniform reads them unsigned."""
    cv2.setRNGSeed(12345)
    filled = np.zeros((1, 8), np.float32)
    cv2.randu(filled, 0.0, 1.0)
    ours = np.float32(rng_uniform_floats(8))
    np.testing.assert_allclose(np.mod(filled[0] + np.float32(0.5), 1), ours, rtol=0, atol=1e-7)
    # HSV2RGB's six sectors, and GetColors's hue = fmod(u + golden ratio conjugate, 1), s 0.3, v 0.99
    for h in np.linspace(0, 0.99, 12):
        r, g, b = (c / 255 for c in hsv_to_rgb(h, 0.3, 0.99))
        ref = cv2.cvtColor(np.float32([[[h * 360, 0.3, 0.99]]]), cv2.COLOR_HSV2RGB)[0, 0]
        np.testing.assert_allclose((r, g, b), ref, atol=1e-5)
    first = hsv_to_rgb(float(np.fmod(np.float32(ours[0]) + np.float32(0.618033988749895), 1)), 0.3, 0.99)
    assert colors(3)[0] == first and len(colors(21)) == 21


def _transform(text: str) -> caffe_pb2.TransformationParameter:
    return text_format.Parse(text, caffe_pb2.TransformationParameter())


def test_images_come_back_through_the_transform_param():
    """TransformInv: / scale + mean, cast as static_cast<uchar> (truncation), HWC, then resize_param."""
    data = np.float32([[[[-104.0, 151.5], [0.25, 10.0]], [[-117.0, 138.0], [1.0, 2.0]], [[-123.0, 132.0], [3.0, 4.9]]]])
    vis = DetectionVisualizer(_transform("mean_value: 104 mean_value: 117 mean_value: 123"), None, 0.5, {}, "", "d")
    img = vis.images(data)[0]
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    np.testing.assert_array_equal(img[:, :, 0], [[0, 255], [104, 114]])
    np.testing.assert_array_equal(img[:, :, 2], [[0, 255], [126, 127]])
    vis = DetectionVisualizer(_transform("scale: 0.5 resize_param { prob: 1 resize_mode: WARP height: 4 width: 6 "
                                         "interp_mode: NEAREST }"), None, 0.5, {}, "", "d")
    img = vis.images(np.float32(np.full((2, 3, 2, 2), 20.0)))
    assert len(img) == 2 and img[1].shape == (4, 6, 3) and (img[1] == 40).all()
    mean = np.float32(np.full((3, 2, 2), 7.0))
    assert (DetectionVisualizer(_transform(""), mean, 0.5, {}, "", "d").images(np.zeros((1, 3, 2, 2)))[0] == 7).all()


def test_boxes_tags_and_fps_are_drawn_and_saved(tmp_path, caplog):
    names = {0: "background", 1: "Cat", 2: "Dog"}
    save = tmp_path / "out.avi"
    vis = DetectionVisualizer(_transform(""), None, 0.5, names, str(save), "det")
    data = np.zeros((2, 3, 120, 160), np.float32)
    rows = np.float32([[0, 1, 0.9, 0.25, 0.5, 0.75, 0.9],   # drawn on image 0
                       [0, 2, 0.4, 0.8, 0.4, 0.95, 0.6],    # under the threshold
                       [1, 2, 0.6, 0.5, 0.25, 0.9, 0.75]])  # drawn on image 1
    with caplog.at_level(logging.WARNING):
        imgs = vis(data, rows)
    cat, dog = colors(3)[1], colors(3)[2]
    # the 4-pixel rectangle's left edge, in the label's colour as the fork passes it (R, G, B into BGR)
    np.testing.assert_allclose(imgs[0][80, 40], np.round(cat), atol=1)
    np.testing.assert_allclose(imgs[1][45, 80], np.round(dog), atol=1)
    assert not imgs[0][50:70, 127:130].any()  # the box under the threshold is not drawn
    # the FPS box: white, from the top-left corner to the text's width and height + baseline
    (tw, th), base = cv2.getTextSize("FPS: 99.99", cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
    assert (imgs[0][th + base - 1, : tw // 3] == 255).any()
    # the tag: filled in the label's colour above the box's bottom-left corner, the text in black on it
    (tw, th), base = cv2.getTextSize("Cat: 0.90", cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
    tag = imgs[0][108 - th - base + 1:108, 42:40 + tw].reshape(-1, 3)
    assert (np.abs(tag.astype(float) - np.round(cat)) <= 1).all(-1).mean() > 0.5 and (tag == 0).all(-1).any()
    # no window on this OpenCV: one warning, and the frames are in the video
    if "GUI:                           NONE" in cv2.getBuildInformation():
        assert caplog.text.count("no OpenCV window here") == 1 and "save_file" in caplog.text
    vis.close()
    frames = read_video(str(save))
    assert len(frames) == 2 and frames[0].shape == (120, 160, 3)


def _layer(text: str, n_bottoms: int):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    shapes = [(1, 8), (1, 6), (1, 2, 8), (1, 3, 30, 40)][:n_bottoms]
    return get_layer_class("DetectionOutput")(p, shapes, TEST)


def test_the_layer_draws_its_detections_on_bottom_3(tmp_path):
    (tmp_path / "labels.prototxt").write_text(LABELS)
    save = tmp_path / "v.avi"
    text = ('name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" bottom: "data" top: "d" '
            'transform_param { mean_value: 10 resize_param { prob: 1 resize_mode: WARP height: 60 width: 80 '
            'interp_mode: LINEAR } } '
            f'detection_output_param {{ num_classes: 3 visualize: true visualize_threshold: 0.3 save_file: "{save}" '
            f'save_output_param {{ label_map_file: "{tmp_path / "labels.prototxt"}" }} }}')
    layer = _layer(text, 4)
    prior = torch.tensor([[[0.1, 0.1, 0.5, 0.6, 0.5, 0.4, 0.9, 0.9], [0.1] * 8]])
    conf = torch.tensor([[0.1, 0.8, 0.1, 0.2, 0.1, 0.7]])
    rows = layer(torch.zeros(1, 8), conf, prior, torch.zeros(1, 3, 30, 40))
    assert rows.shape[:2] == (1, 1) and rows.shape[3] == 7 and (rows[0, 0, :, 2] >= 0.3).any()
    layer.close()
    frames = read_video(str(save))
    assert len(frames) == 1 and frames[0].shape == (60, 80, 3)


def test_setups_the_fork_cannot_draw_with_are_errors(tmp_path):
    (tmp_path / "labels.prototxt").write_text(LABELS)
    base = 'name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" %s top: "d" ' \
           'detection_output_param { num_classes: 3 visualize: true %s }'
    with pytest.raises(LayerSetupError, match="visualize draws on the images of a fourth bottom"):
        _layer(base % ("", f'save_output_param {{ label_map_file: "{tmp_path / "labels.prototxt"}" }}'), 3)
    with pytest.raises(LayerSetupError, match="visualize needs save_output_param.label_map_file"):
        _layer(base % ('bottom: "data"', ""), 4)
    # without visualize a fourth bottom is accepted and not read, as before
    _layer(base.replace("visualize: true", "") % ('bottom: "data"', ""), 4)
