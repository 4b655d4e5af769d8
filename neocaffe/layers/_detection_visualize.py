"""DetectionOutput's ``visualize`` (SSD, weiliu89/caffe ``ssd``: ``detection_output_layer.cpp`` with
``VisualizeBBox``, ``GetColors`` and ``HSV2RGB`` of ``src/caffe/util/bbox_util.cpp`` and
``DataTransformer::TransformInv``).

Each forward turns the images of the layer's fourth bottom back into 8-bit pictures with the layer's own
``transform_param`` (``/ scale + mean``, cast to unsigned char as C++ does, then its ``resize_param``, e.g.
SSD's video demo scales the 300x300 input up to the display size), and draws on each: a white box with
``FPS: %.2f`` (images over the CPU seconds since the last draw, as ``clock()`` counts), then every detection
scoring at least ``visualize_threshold`` (default 0.6) as a 4-pixel rectangle in its label's colour with a
filled ``<display name>: %.2f`` tag at its bottom-left corner. The colours are the fork's: ``cv::RNG(12345)``
draws, golden-ratio hues, HSV (s 0.3, v 0.99) to a scalar in R, G, B order (drawn into BGR images as given).
The names come from ``save_output_param.label_map_file``'s ``display_name``; the fork has no colour without
one and stops at the first detection drawn, here it is a setup error.

``save_file`` writes the drawn frames to a video (DIVX, 30 frames/s, the first frame's size), as the fork
does. The fork then shows each frame in an OpenCV window ("detections"; Esc raises SIGINT): here too
where OpenCV has a display; an OpenCV without GUI support (``opencv-python-headless``) or a machine without a
display logs one warning and only the video (if any) is written.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import numpy as np

from neocaffe.data.annotated_batches import resize

log = logging.getLogger("neocaffe.layers")

_FONT_SCALE, _THICKNESS = 1.0, 2


def rng_uniform_floats(n: int, seed: int = 12345) -> list[float]:
    """``n`` draws of ``cv::RNG(seed).uniform(0.f, 1.f)``: the multiply-with-carry step
    ``state = (uint32)state * 4164903690 + (state >> 32)``, its low 32 bits times 2^-32 in float."""
    state = seed & 0xFFFFFFFFFFFFFFFF
    out = []
    for _ in range(n):
        state = ((state & 0xFFFFFFFF) * 4164903690 + (state >> 32)) & 0xFFFFFFFFFFFFFFFF
        u = np.float32(np.float32(state & 0xFFFFFFFF) * np.float32(2.3283064365386962890625e-10))
        out.append(float(u * np.float32(1.0) + np.float32(0.0)))
    return out


def hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    """``HSV2RGB``: float arithmetic, ``(r, g, b) * 255``."""
    h, s, v = np.float32(h), np.float32(s), np.float32(v)
    h_i = int(h * np.float32(6))
    f = h * np.float32(6) - np.float32(h_i)
    p, q, t = v * (np.float32(1) - s), v * (np.float32(1) - f * s), v * (np.float32(1) - (np.float32(1) - f) * s)
    r, g, b = {0: (v, t, p), 1: (q, v, p), 2: (p, v, t), 3: (p, q, v), 4: (t, p, v), 5: (v, p, q)}.get(
        h_i, (np.float32(1),) * 3)
    return float(r * 255), float(g * 255), float(b * 255)


def colors(n: int) -> list[tuple[float, float, float]]:
    """``GetColors(n)``: hue ``fmod(u + 0.618..., 1)`` of each ``cv::RNG(12345)`` draw, s 0.3, v 0.99."""
    golden = np.float32(0.618033988749895)
    return [hsv_to_rgb(float(np.fmod(np.float32(u) + golden, np.float32(1))), 0.3, 0.99)
            for u in rng_uniform_floats(n)]


def _c_text(fmt: str, *args: Any) -> str:
    return (fmt % args)[:49]  # char buffer[50] with snprintf


class DetectionVisualizer:
    """The drawing of one DetectionOutput layer (its owner): images back from the fourth bottom, boxes on them."""

    def __init__(self, transform: Any, mean: np.ndarray | None, threshold: float, names: dict[int, str],
                 save_file: str, layer_name: str) -> None:
        self.scale = np.float32(transform.scale) if transform.HasField("scale") else np.float32(1)
        self.mean, self.mean_values = mean, [float(m) for m in transform.mean_value]
        if len(transform.resize_param) > 1:  # ssd's field is optional (the schema's is repeated: mobilenet-yolo)
            raise ValueError(f"layer '{layer_name}' (DetectionOutput): visualize: transform_param holds "
                             f"{len(transform.resize_param)} resize_param; expected at most one (SSD's optional field)")
        self.resize = transform.resize_param[0] if len(transform.resize_param) else None
        self.threshold, self.names, self.save_file = float(threshold), names, save_file
        self.colors = colors(len(names))
        self.layer_name = layer_name
        self.writer: Any = None
        self.show = True
        self.clock = time.process_time()
        self.rng = np.random.default_rng(0)  # ApplyResize's interpolation draw (one mode: no draw)

    def images(self, data: np.ndarray) -> list[np.ndarray]:
        """``TransformInv``: (N, C, H, W) floats -> N uint8 HWC images (resized by ``resize_param``)."""
        n, c = data.shape[:2]
        if self.mean is not None:
            if self.mean.shape != data.shape[1:]:
                raise ValueError(f"layer '{self.layer_name}' (DetectionOutput): visualize: the mean_file's shape "
                                 f"{self.mean.shape} differs from the images' {data.shape[1:]}")
            mean: Any = self.mean.astype(np.float32)
        elif self.mean_values:
            if len(self.mean_values) not in (1, c):
                raise ValueError(f"layer '{self.layer_name}' (DetectionOutput): Specify either 1 mean_value or as "
                                 f"many as channels: {c}")
            mean = np.array((self.mean_values * c)[:c] if len(self.mean_values) == 1 else self.mean_values,
                            np.float32).reshape(c, 1, 1)
        else:
            mean = np.float32(0)
        out = []
        for i in range(n):
            v = (data[i].astype(np.float32) / self.scale + mean).astype(np.float32)
            img = np.trunc(v).astype(np.int64).astype(np.uint8).transpose(1, 2, 0)  # static_cast<uchar>
            img = np.ascontiguousarray(img if c != 1 else img[:, :, 0])
            out.append(resize(img, self.resize, self.rng) if self.resize is not None else img)
        return out

    def __call__(self, data: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
        """Draw ``rows`` (D, 7 detections) on the images of ``data``; write / show them; return them."""
        import cv2

        images = self.images(data)
        if not len(rows) or not images:
            return images
        fps = len(images) / max(time.process_time() - self.clock, 1e-9)
        height, width = images[0].shape[:2]
        boxes: list[dict[int, list[tuple[float, ...]]]] = [{} for _ in images]
        for r in rows:
            item, label, score = int(r[0]), int(r[1]), float(np.float32(r[2]))
            if item >= len(images):
                raise ValueError(f"layer '{self.layer_name}' (DetectionOutput): visualize: detection of image "
                                 f"{item}, but the fourth bottom holds {len(images)}")
            if score < self.threshold:
                continue
            xy = (np.float32(r[3:7]) * np.float32([width, height, width, height])).astype(np.float32)
            boxes[item].setdefault(label, []).append((*xy.tolist(), score))
        font = cv2.FONT_HERSHEY_SIMPLEX
        for img, per_label in zip(images, boxes):
            text = _c_text("FPS: %.2f", fps)
            (tw, th), base = cv2.getTextSize(text, font, _FONT_SCALE, _THICKNESS)
            cv2.rectangle(img, (0, 0), (tw, th + base), (255, 255, 255), cv2.FILLED)
            cv2.putText(img, text, (0, int(th + base / 2.0)), font, _FONT_SCALE, (0, 0, 0), _THICKNESS, 8)
            for label in sorted(per_label):  # std::map's order
                if not 0 <= label < len(self.colors):  # the fork: CHECK_LT(label, colors.size())
                    raise ValueError(f"layer '{self.layer_name}' (DetectionOutput): visualize: label {label} has no "
                                     f"colour: the label map has {len(self.colors)} labels (colours 0..{len(self.colors) - 1})")
                color = self.colors[label]
                for x0, y0, x1, y1, score in per_label[label]:
                    cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), color, 4)
                    text = _c_text("%s: %.2f", self.names.get(label, "Unknown"), score)
                    (tw, th), base = cv2.getTextSize(text, font, _FONT_SCALE, _THICKNESS)
                    corner = (int(x0), int(y1))
                    cv2.rectangle(img, corner, (corner[0] + tw, corner[1] - th - base), color, cv2.FILLED)
                    cv2.putText(img, text, (corner[0], corner[1] - base), font, _FONT_SCALE, (0, 0, 0), _THICKNESS, 8)
            self._write(img)
            self._show(img)
        self.clock = time.process_time()
        return images

    def _write(self, img: np.ndarray) -> None:
        if not self.save_file:
            return
        import cv2

        if self.writer is None:
            self.writer = cv2.VideoWriter(self.save_file, cv2.VideoWriter_fourcc(*"DIVX"), 30,
                                          (img.shape[1], img.shape[0]), True)
            if not self.writer.isOpened():
                raise OSError(f"layer '{self.layer_name}' (DetectionOutput): visualize: could not open save_file "
                              f"'{self.save_file}' for writing a DIVX video")
        self.writer.write(img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2))

    def _show(self, img: np.ndarray) -> None:
        if not self.show:
            return
        import cv2

        try:
            cv2.imshow("detections", img)
            key = cv2.waitKey(1)
        except cv2.error as e:
            self.show = False
            log.warning("layer '%s' (DetectionOutput): visualize: no OpenCV window here (%s); %s", self.layer_name,
                        " ".join(str(e).split())[:160],
                        f"the drawn frames go to save_file '{self.save_file}'" if self.save_file else
                        "set detection_output_param.save_file to keep the drawn frames as a video")
            return
        if key == 27:  # Esc: the fork raises SIGINT (Caffe's -sigint_effect decides)
            os.kill(os.getpid(), signal.SIGINT)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
