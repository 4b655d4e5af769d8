"""D-X-Y/caffe-faster-rcnn's ``FrcnnRoiData``: one image per batch with its ground truth boxes, scaled as
the FRCNN JSON configuration says (``neocaffe/data/frcnn_config.py``).

Semantics of D-X-Y/caffe-faster-rcnn ``dev`` @ 1ae964d135bbfd9d04258b15b95c9dbb29a19149,
``src/caffe/FRCNN/frcnn_roi_data_layer.cpp`` and ``include/caffe/FRCNN/util/frcnn_utils.hpp``
(``DataPrepare::load_WithDiff``), ``util/frcnn_bbox.cpp`` (``get_scale_factor``):

Fields read: ``window_data_param`` ``source`` (the list file), ``config`` (the JSON file; required),
``root_folder`` (prefixed to every image path), ``cache_images`` (the files' bytes read at setup). The
list file is whitespace-separated records ``# <index> <image path> <n>`` followed by ``n`` rows ``label x1
y1 x2 y2 difficult`` (integers; ``0 < label < n_classes``, ``x2 >= x1``, ``y2 >= y1``); difficult boxes are
dropped. At setup the image order is shuffled; each batch first advances the position (so the first
batch is the second image of the shuffled order, as in the fork) and reshuffles at the end of the list.
Per batch: a mirror draw (only when ``use_flipped``; mirrored in TRAIN only), a scale draw among
``scales``; the image is read in colour (BGR), flipped, ``pixel_means`` subtracted, and resized by
OpenCV's bilinear ``cv::resize`` with ``im_scale = short / min(h, w)``, or ``max_size / max(h, w)`` when
that would exceed ``max_size`` (``int`` short and long sides, float arithmetic). Boxes: clipped to the
original image, mirrored (``x1' = w - x2 - 1``), multiplied by ``im_scale``, then ``x2``/``y2`` clamped
to ``width - 1``/``height - 1`` and ``x1``/``y1`` to 0.

Tops: ``data`` ``1 x 3 x H x W`` (H, W vary per image; setup reports ``1 x 3 x max(scales) x max_size``),
``im_info`` ``1 x 3 x 1 x 1`` (height, width, im_scale), ``gt_boxes`` ``n x 5 x 1 x 1`` (x1, y1, x2, y2,
label). Random draws come from a NumPy generator seeded from neocaffe's RNG (the fork's boost stream,
seeded with the config's ``rng_seed``, is not reproduced); the position, order and generator state are
this layer's resume state. Images are read in the layer's process (no prefetch workers).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.frcnn_config import FrcnnConfig, load_frcnn_config
from neocaffe.layers.frcnn_common import example_config
from neocaffe.layers.base import TRAIN, Example, Layer, Shape
from neocaffe.layers.prefetched import data_seed
from neocaffe.layers.registry import register_layer


def read_roi_list(path: str, n_classes: int) -> list[tuple[str, np.ndarray]]:
    """The list file ``path``: ``(image path, rows [label, x1, y1, x2, y2] of the non-difficult boxes)``.
    ValueError naming the file and the record on a malformed one."""
    with open(path, encoding="utf-8") as f:
        tokens = f.read().split()
    out, i = [], 0
    while i < len(tokens):
        try:
            if tokens[i] != "#":
                raise ValueError(f"expected '#' starting a record; received '{tokens[i]}'")
            image, n = tokens[i + 2], int(tokens[i + 3])
            rows = np.array([[int(t) for t in tokens[i + 4 + 6 * k: i + 10 + 6 * k]] for k in range(n)],
                            np.int64).reshape(n, 6)
        except (IndexError, ValueError) as e:
            raise ValueError(f"{path}: record {len(out)} is malformed ({e}); expected '# <index> <image> <n>' "
                             "and n rows 'label x1 y1 x2 y2 difficult'") from None
        if rows.shape[0] != n:
            raise ValueError(f"{path}: record {len(out)} ({image}) ends early; expected {n} box rows")
        for label, x1, y1, x2, y2, _ in rows:
            if not 0 < label < n_classes:
                raise ValueError(f"{path}: {image}: illegal label : {label}, should >= 1 and < {n_classes}")
            if x2 < x1 or y2 < y1:
                raise ValueError(f"{path}: {image}: illegal coordinate : ({x1}, {y1}, {x2}, {y2})")
        out.append((image, rows[rows[:, 5] != 1, :5].astype(np.float32)))
        i += 4 + 6 * n
    return out


def scale_factor(width: int, height: int, short: int, long: int) -> float:
    """``get_scale_factor`` in float: ``short / min``, or ``long / max`` when that is exceeded."""
    lo, hi = np.float32(min(width, height)), np.float32(max(width, height))
    s = np.float32(short) / lo
    if s * hi > long:
        s = np.float32(long) / hi
    return float(s)


def load_roi_image(img: np.ndarray, rois: np.ndarray, cfg: FrcnnConfig, mirror: bool, short: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``data`` (3, H, W), ``im_info`` (3,), ``gt_boxes`` (n, 5) from a BGR uint8 image and its boxes
    ``[label, x1, y1, x2, y2]`` (see the module docstring)."""
    import cv2

    rows, cols = img.shape[:2]
    src = img.astype(np.float32)
    if mirror:
        src = src[:, ::-1]
    src = np.ascontiguousarray(src - np.asarray(cfg.pixel_means, np.float32))
    s = scale_factor(cols, rows, short, int(cfg.max_size))
    src = cv2.resize(src, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    h, w = src.shape[:2]
    b = rois[:, 1:5].astype(np.float32).copy()
    b[:, 0:2] = np.maximum(b[:, 0:2], 0)
    b[:, 2] = np.minimum(b[:, 2], np.float32(cols - 1))
    b[:, 3] = np.minimum(b[:, 3], np.float32(rows - 1))
    if mirror:
        b[:, [0, 2]] = np.float32(cols) - b[:, [2, 0]] - 1
    b = b * np.float32(s)
    b[:, 3] = np.where(b[:, 3] >= h, np.float32(h - 1), b[:, 3])
    b[:, 2] = np.where(b[:, 2] >= w, np.float32(w - 1), b[:, 2])
    b[:, 0:2] = np.maximum(b[:, 0:2], 0)
    gt = np.concatenate([b, rois[:, :1].astype(np.float32)], axis=1)
    return src.transpose(2, 0, 1), np.array([h, w, s], np.float32), gt


@register_layer("FrcnnRoiData")
class FrcnnRoiData(Layer):
    """See the module docstring."""

    exact_bottoms = 0
    min_tops = 1
    max_tops = 3
    allow_in_place = False
    produces_host_data = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        wp = self.param.window_data_param
        if not wp.config:
            raise self.error("window_data_param.config is empty; expected the FRCNN JSON config file")
        try:
            self.cfg = load_frcnn_config(wp.config)
            entries = read_roi_list(wp.source, self.cfg.n_classes)
        except (OSError, ValueError) as e:
            raise self.error(str(e)) from None
        if not entries:
            raise self.error(f"No Image In Ground Truth File {wp.source}")
        if not self.cfg.scales or min(self.cfg.scales) <= 0 or self.cfg.max_size <= 0:
            raise self.error(f"config {wp.config}: scales and max_size must be positive; received "
                             f"{self.cfg.scales}, {self.cfg.max_size}")
        self.paths = [wp.root_folder + p for p, _ in entries]
        self.rois = [r for _, r in entries]
        self.cache = None
        if wp.cache_images:
            try:
                self.cache = [open(p, "rb").read() for p in self.paths]
            except OSError as e:
                raise self.error(f"Could not open or find file: {e}") from None
        self._seed(data_seed())

    def _seed(self, seed: int) -> None:
        self.gen = np.random.default_rng(seed)
        self.order = self.gen.permutation(len(self.paths))
        self.pos = 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shapes = [(1, 3, int(max(self.cfg.scales)), int(self.cfg.max_size)), (1, 3, 1, 1), (1, 5, 1, 1)]
        return shapes[: self.n_tops]

    def resume_state(self) -> dict:
        return {"pos": self.pos, "order": self.order.tolist(), "gen": self.gen.bit_generator.state}

    def load_resume_state(self, state: dict) -> None:
        self.pos, self.order = int(state["pos"]), np.asarray(state["order"], np.int64)
        self.gen.bit_generator.state = state["gen"]

    def _image(self, index: int) -> np.ndarray:
        import cv2

        if self.cache is not None:
            img = cv2.imdecode(np.frombuffer(self.cache[index], np.uint8), cv2.IMREAD_COLOR)
        else:
            img = cv2.imread(self.paths[index], cv2.IMREAD_COLOR) if os.path.exists(self.paths[index]) else None
        if img is None:
            raise self.error(f"Could not open or find file {self.paths[index]}")
        return img

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        self.pos += 1
        if self.pos >= len(self.order):
            self.pos = 0
            self.order = self.gen.permutation(self.order)
        index = int(self.order[self.pos])
        mirror = bool(self.cfg.use_flipped and self.gen.integers(0, 2) and self.phase == TRAIN)
        short = int(self.cfg.scales[int(self.gen.integers(0, len(self.cfg.scales)))])
        data, info, gt = load_roi_image(self._image(index), self.rois[index], self.cfg, mirror, short)
        tops = [torch.from_numpy(np.ascontiguousarray(data))[None], torch.from_numpy(info).reshape(1, 3, 1, 1),
                torch.from_numpy(gt).reshape(-1, 5, 1, 1)]
        return tops[: self.n_tops]

    @classmethod
    def examples(cls) -> list[Example]:
        src, cfg = roi_data_example()
        return [Example(f'name: "d" type: "FrcnnRoiData" top: "data" top: "im_info" top: "gt_boxes" '
                        f'window_data_param {{ source: "{src}" config: "{cfg}" root_folder: "{os.path.dirname(src)}/" }}',
                        [], grad_bottoms=(), grad_params=False, phase=TRAIN)]


def roi_data_example() -> tuple[str, str]:
    """A list file of three small colour images (written once under the examples folder; each scales to
    24 x 40 and keeps one box, its second being difficult) and :func:`example_config`."""
    import cv2

    from neocaffe.data.examples import example_folder

    folder = os.path.join(example_folder(), "frcnn")
    src = os.path.join(folder, "list.txt")
    if not os.path.exists(src):
        os.makedirs(folder, exist_ok=True)
        g = np.random.default_rng(11)
        with open(src, "w") as f:
            for i, (h, w) in enumerate([(24, 40), (12, 20), (24, 40)]):  # all scale to 24 x 40
                cv2.imwrite(os.path.join(folder, f"im{i}.png"), g.integers(0, 256, (h, w, 3), dtype=np.uint8))
                f.write(f"# {i}\nim{i}.png\n2\n1 2 3 {w // 2} {h // 2} 0\n2 5 4 {w - 1} {h - 2} 1\n")
    return src, example_config()


__all__ = ["FrcnnRoiData", "read_roi_list", "load_roi_image", "scale_factor"]
