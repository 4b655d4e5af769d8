"""A loop-by-loop NumPy/OpenCV port of TSN's data path, the reference of tests/data/test_tsn_video_data.py.

yjxiong/caffe, branch ``action_recog`` @ 9831a2b4: ``src/caffe/layers/video_data_layer.cpp``
(``InternalThreadEntry``'s offsets), ``src/caffe/util/io.cpp`` (``ReadSegmentRGBToDatum``,
``ReadSegmentFlowToDatum``) and ``src/caffe/data_transformer.cpp`` (``fillFixOffset``, ``fillCropSize``,
``Transform(const Datum&, Dtype*)``), statement for statement. ``rand(n)`` stands for the fork's
``(*rng)() % n`` / ``Rand(n)``: the tests hand it the draws the layer made.
"""
from __future__ import annotations

import cv2
import numpy as np

f32 = np.float32


def offsets(duration, num_segments, new_length, train, rand):
    out = []
    average_duration = int(duration / num_segments)
    for i in range(num_segments):
        if train:
            if average_duration >= new_length:
                offset = rand(average_duration - new_length + 1)
                out.append(offset + i * average_duration)
            else:
                out.append(0)
        else:
            if average_duration >= new_length:
                out.append(int((average_duration - new_length + 1) / 2 + i * average_duration))
            else:
                out.append(0)
    return out


def read_segment_rgb(filename, offs, height, width, length, is_color, name_pattern):
    """Returns (channels, rows, cols, data bytes as a list)."""
    data = []
    channels = rows = cols = None
    flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    for i in range(len(offs)):
        offset = offs[i]
        for file_id in range(1, length + 1):
            tmp = name_pattern % (file_id + offset)
            img0 = cv2.imread(filename + "/" + tmp, flag)
            if img0 is None:
                return None
            img = cv2.resize(img0, (width, height)) if height > 0 and width > 0 else img0
            num_channels = 3 if is_color else 1
            if file_id == 1 and i == 0:
                channels, rows, cols = num_channels * length * len(offs), img.shape[0], img.shape[1]
                data = []
            if is_color:
                for c in range(num_channels):
                    for h in range(img.shape[0]):
                        for w in range(img.shape[1]):
                            data.append(int(img[h, w, c]))
            else:
                for h in range(img.shape[0]):
                    for w in range(img.shape[1]):
                        data.append(int(img[h, w]))
    return channels, rows, cols, data


def read_segment_flow(filename, offs, height, width, length, name_pattern):
    data = []
    channels = rows = cols = None
    for i in range(len(offs)):
        offset = offs[i]
        for file_id in range(1, length + 1):
            x0 = cv2.imread(filename + "/" + name_pattern % ("x", file_id + offset), cv2.IMREAD_GRAYSCALE)
            y0 = cv2.imread(filename + "/" + name_pattern % ("y", file_id + offset), cv2.IMREAD_GRAYSCALE)
            if x0 is None or y0 is None:
                return None
            if height > 0 and width > 0:
                x, y = cv2.resize(x0, (width, height)), cv2.resize(y0, (width, height))
            else:
                x, y = x0, y0
            if file_id == 1 and i == 0:
                channels, rows, cols = 2 * length * len(offs), x.shape[0], x.shape[1]
                data = []
            for h in range(x.shape[0]):
                for w in range(x.shape[1]):
                    data.append(int(x[h, w]))
            for h in range(y.shape[0]):
                for w in range(y.shape[1]):
                    data.append(int(y[h, w]))
    return channels, rows, cols, data


def fill_fix_offset(datum_height, datum_width, crop_height, crop_width, more_crop):
    height_off = int((datum_height - crop_height) / 4)
    width_off = int((datum_width - crop_width) / 4)
    o = [(0, 0), (0, 4 * width_off), (4 * height_off, 0), (4 * height_off, 4 * width_off),
         (2 * height_off, 2 * width_off)]
    if more_crop:
        o += [(0, 2 * width_off), (4 * height_off, 2 * width_off), (2 * height_off, 0), (2 * height_off, 4 * width_off),
              (1 * height_off, 1 * width_off), (1 * height_off, 3 * width_off), (3 * height_off, 1 * width_off),
              (3 * height_off, 3 * width_off)]
    return o


def fill_crop_size(input_height, input_width, net_input_height, net_input_width, max_distort, custom_scale_ratios):
    crop_sizes = []
    scale_rates = [f32(r) for r in custom_scale_ratios] if len(custom_scale_ratios) > 0 else \
        [f32(1.0), f32(.875), f32(.75), f32(.66)]
    base_size = min(input_height, input_width)
    for h in range(len(scale_rates)):
        crop_h = int(f32(base_size) * scale_rates[h])
        crop_h = net_input_height if abs(crop_h - net_input_height) < 3 else crop_h
        for w in range(len(scale_rates)):
            crop_w = int(f32(base_size) * scale_rates[w])
            crop_w = net_input_width if abs(crop_w - net_input_width) < 3 else crop_w
            if abs(h - w) <= max_distort:
                crop_sizes.append((crop_h, crop_w))
    return crop_sizes


def transform(datum, p, train, rand, mean=None):
    """``datum``: (channels, height, width, data list); ``p``: a dict of the transform_param fields;
    ``mean``: the mean file's flat array or None. Returns float32 (C, height', width')."""
    datum_channels, datum_height, datum_width, data = datum
    crop_size, scale = p.get("crop_size", 0), f32(p.get("scale", 1))
    do_mirror = p.get("mirror", False) and rand(2)
    mean_values = list(p.get("mean_value", []))
    do_multi_scale = p.get("multi_scale", False)
    if mean_values:
        assert len(mean_values) == 1 or datum_channels % len(mean_values) == 0
        if datum_channels > 1 and len(mean_values) == 1:
            mean_values += [mean_values[0]] * (datum_channels - 1)
        if len(mean_values) < datum_channels:
            g = len(mean_values)
            for c in range(g, datum_channels):
                mean_values.append(mean_values[c % g])
    height, width, h_off, w_off, crop_height, crop_width = datum_height, datum_width, 0, 0, 0, 0
    if crop_size:
        height = width = crop_size
        if train:
            if do_multi_scale:
                sizes = fill_crop_size(datum_height, datum_width, crop_size, crop_size, p.get("max_distort", 1),
                                       p.get("scale_ratios", []))
                crop_height, crop_width = sizes[rand(len(sizes))]
            else:
                crop_height = crop_width = crop_size
            if p.get("fix_crop", False):
                offs = fill_fix_offset(datum_height, datum_width, crop_height, crop_width, p.get("more_fix_crop", False))
                h_off, w_off = offs[rand(len(offs))]
            else:
                h_off = rand(datum_height - crop_height + 1)
                w_off = rand(datum_width - crop_width + 1)
        else:
            crop_height = crop_width = crop_size
            h_off, w_off = int((datum_height - crop_size) / 2), int((datum_width - crop_size) / 2)
    need_imgproc = do_multi_scale and crop_size and (crop_height != crop_size or crop_width != crop_size)
    out = np.zeros(datum_channels * height * width, f32)
    is_flow = p.get("is_flow", False)
    for c in range(datum_channels):
        if need_imgproc:
            M = np.zeros((datum_height, datum_width), np.uint8)
            for h in range(datum_height):
                for w in range(datum_width):
                    M[h, w] = data[(c * datum_height + h) * datum_width + w]
            cropM = np.ascontiguousarray(M[h_off:h_off + crop_height, w_off:w_off + crop_width])
            buf = cv2.resize(cropM, (crop_size, crop_size))
        for h in range(height):
            for w in range(width):
                data_index = (c * datum_height + h_off + h) * datum_width + w_off + w
                top_index = (c * height + h) * width + (width - 1 - w if do_mirror else w)
                v = f32(buf[h, w]) if need_imgproc else f32(data[data_index])
                if is_flow and do_mirror and c % 2 == 0:
                    v = f32(255) - v
                if mean is not None:
                    mi = (c * datum_height + h) * datum_width + w if do_multi_scale else data_index
                    out[top_index] = (v - f32(mean[mi])) * scale
                elif mean_values:
                    out[top_index] = (v - f32(mean_values[c])) * scale
                else:
                    out[top_index] = v * scale
    return out.reshape(datum_channels, height, width)
