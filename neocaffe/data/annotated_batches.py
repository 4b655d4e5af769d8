"""Batches of SSD's AnnotatedData layer (weiliu89/caffe ssd ``annotated_data_layer.cpp`` load_batch,
``data_transformer.cpp`` DistortImage / ExpandImage / CropImage / Transform, ``im_transforms.cpp``
ApplyDistort / ApplyResize).

Per image: photometric distortion, expansion onto a canvas of the mean, one of the batch samplers'
crops, then the transform (resize, noise (:mod:`neocaffe.data.noise`), crop, mirror, mean, scale) with
its boxes. MobileNet-YOLO's extensions (eric612/MobileNet-YOLO ``annotated_data_layer.cpp``,
``sampler.cpp`` GenerateJitterSamples, ``im_transforms.cpp`` roll_weighted_die), for the layer that asks
for them: several ``resize_param`` policies, one drawn by ``prob`` every 10 batches (multi-scale
training), ``cvt_bgr2rgb``, the jitter crop, the YOLO label and the segmentation label
(:mod:`neocaffe.data.annotated_yolo`). An encoded image goes
back through JPEG after each of the first three steps, as the fork re-encodes its datum. Random draws
come from a generator seeded with (layer seed, batch index), like the other data layers, so a seeded
run repeats and the batches do not depend on the number of workers.
"""
from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from neocaffe.data import annotated as an
from neocaffe.data import annotated_yolo as ay
from neocaffe.data import polygon_anno as pa
from neocaffe.data.datum import DatumError, chw_to_hwc, decode_datum, hwc_to_chw
from neocaffe.data.noise import apply_noise, as_fork_reads
from neocaffe.data.shard import global_batch
from neocaffe.data.sources import DBReader, DBRecords
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")
TRAIN = 0
_INTERP = {1: cv2.INTER_LINEAR, 2: cv2.INTER_AREA, 3: cv2.INTER_NEAREST, 4: cv2.INTER_CUBIC, 5: cv2.INTER_LANCZOS4}
_PAD = {1: cv2.BORDER_CONSTANT, 2: cv2.BORDER_REFLECT_101, 3: cv2.BORDER_REPLICATE}


def _convert(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """cv::Mat::convertTo(-1, alpha, beta) on 8-bit data: round, saturate."""
    return np.clip(np.rint(img.astype(np.float32) * np.float32(alpha) + np.float32(beta)), 0, 255).astype(np.uint8)


def _hsv_channel(img: np.ndarray, ch: int, alpha: float, beta: float) -> np.ndarray:
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[..., ch] = _convert(hsv[..., ch], alpha, beta)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def distort(img: np.ndarray, dp: caffe_pb2.DistortionParameter, rng: np.random.Generator) -> np.ndarray:
    """ApplyDistort: brightness, then contrast before or after saturation and hue (a coin decides),
    then a random channel order, each with its probability."""
    def brightness(x):
        if rng.uniform() < dp.brightness_prob:
            d = rng.uniform(-dp.brightness_delta, dp.brightness_delta)
            return _convert(x, 1, d) if abs(d) > 0 else x
        return x

    def contrast(x):
        if rng.uniform() < dp.contrast_prob:
            d = rng.uniform(dp.contrast_lower, dp.contrast_upper)
            return _convert(x, d, 0) if abs(d - 1) > 1e-3 else x
        return x

    def saturation(x):
        if rng.uniform() < dp.saturation_prob:
            return _hsv_channel(x, 1, rng.uniform(dp.saturation_lower, dp.saturation_upper), 0)
        return x

    def hue(x):
        if rng.uniform() < dp.hue_prob:
            d = rng.uniform(-dp.hue_delta, dp.hue_delta)
            return _hsv_channel(x, 0, 1, d) if abs(d) > 0 else x
        return x

    order = (brightness, contrast, saturation, hue) if rng.uniform() > 0.5 else (brightness, saturation, hue, contrast)
    for step in order:
        img = step(img)
    if rng.uniform() < dp.random_order_prob:
        if img.ndim != 3 or img.shape[2] != 3:
            raise DatumError("distort_param.random_order_prob needs 3-channel images")
        img = np.ascontiguousarray(img[..., rng.permutation(3)])
    return img


def _reencode(img: np.ndarray) -> np.ndarray:
    """The fork's EncodeCVMatToDatum(img, "jpg") followed by DecodeDatumToCVMatNative."""
    ok, buf = cv2.imencode(".jpg", img)
    if not ok:
        raise DatumError("could not encode an augmented image as JPEG")
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out if out.ndim == img.ndim else out.reshape(img.shape)


def resize(img: np.ndarray, rp: caffe_pb2.ResizeParameter, rng: np.random.Generator) -> np.ndarray:
    """ApplyResize: WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD, an interpolation drawn from
    ``interp_mode`` (default linear), padding ``pad_mode`` / ``pad_value``."""
    nh, nw = int(rp.height), int(rp.width)
    interp = _INTERP[rp.interp_mode[int(rng.integers(len(rp.interp_mode)))]] if len(rp.interp_mode) else cv2.INTER_LINEAR
    h, w = img.shape[:2]
    aspect, new_aspect = np.float32(w) / np.float32(h), np.float32(nw) / np.float32(nh)
    if rp.resize_mode == an.WARP:
        return cv2.resize(img, (nw, nh), interpolation=interp)
    if rp.resize_mode == an.FIT_SMALL_SIZE:
        if aspect < new_aspect:
            return cv2.resize(img, (nw, int(np.floor(np.float32(nw) / aspect))), interpolation=interp)
        return cv2.resize(img, (int(np.floor(aspect * np.float32(nh))), nh), interpolation=interp)
    if rp.resize_mode != an.FIT_LARGE_SIZE_AND_PAD:
        raise DatumError(f"unknown resize_param.resize_mode {rp.resize_mode}")
    pad_val = list(rp.pad_value) or [0.0]
    pad_val = (pad_val * 3)[:3] if len(pad_val) == 1 else pad_val
    if aspect > new_aspect:
        out = cv2.resize(img, (nw, int(np.floor(np.float32(nw) / aspect))), interpolation=interp)
        top = int(np.floor((nh - out.shape[0]) / 2.0))
        return cv2.copyMakeBorder(out, top, nh - out.shape[0] - top, 0, 0, _PAD[rp.pad_mode], value=pad_val)
    out = cv2.resize(img, (int(np.floor(aspect * np.float32(nh))), nh), interpolation=interp)
    left = int(np.floor((nw - out.shape[1]) / 2.0))
    return cv2.copyMakeBorder(out, 0, 0, left, nw - out.shape[1] - left, _PAD[rp.pad_mode], value=pad_val)


def new_size(rp: caffe_pb2.ResizeParameter, w: int, h: int) -> tuple[int, int]:
    """InferNewSize: (width, height) after ``rp``."""
    nh, nw = int(rp.height), int(rp.width)
    if rp.resize_mode == an.FIT_SMALL_SIZE:
        aspect, new_aspect = np.float32(w) / np.float32(h), np.float32(nw) / np.float32(nh)
        if aspect < new_aspect:
            nh = int(np.float32(nw) / aspect)
        else:
            nw = int(aspect * np.float32(nh))
    return nw, nh


class AnnotatedTransform:
    """The transform half of the fork's DataTransformer for annotated images (``transform_param``).
    ``yolo``: MobileNet-YOLO's transformer (several ``resize_param`` policies, ``cvt_bgr2rgb``)."""

    def __init__(self, tp: caffe_pb2.TransformationParameter, phase: int, mean: np.ndarray | None,
                 yolo: bool = False, faceboxes: bool = False) -> None:
        if len(tp.resize_param) > 1 and not yolo:
            raise DatumError("AnnotatedData takes one transform_param.resize_param (SSD's); received "
                             f"{len(tp.resize_param)}")
        self.tp, self.phase, self.mean = tp, phase, mean
        #: FaceBoxes' square sample crops and 16-pixel CENTER emit test (neocaffe.data.faceboxes_sampling)
        self.faceboxes = bool(faceboxes)
        self.policies = list(tp.resize_param)
        self.rp = self.policies[0] if self.policies else None
        if any(rp.height <= 0 or rp.width <= 0 for rp in self.policies):
            raise DatumError("transform_param.resize_param needs height and width")
        self.cumulative = np.cumsum(np.array([rp.prob for rp in self.policies], np.float32), dtype=np.float32)
        if len(self.policies) > 1:
            probs = [float(np.float32(rp.prob)) for rp in self.policies]
            if any(not 0 <= q <= 1 for q in probs) or abs(sum(probs) - 1) > 0.01:
                raise DatumError(f"the resize_param probs must lie in [0, 1] and sum to 1 (within 0.01, the fork's "
                                 f"CHECK_NEAR); received {probs}")
        self.cvt = bool(yolo and tp.cvt_bgr2rgb)
        self.noise = tp.noise_param if tp.HasField("noise_param") else None  # the fork ignores its prob
        if tp.HasField("expand_param") and tp.expand_param.max_expand_ratio <= 1:
            raise DatumError("expand_param.max_expand_ratio must be greater than 1")
        self.crop_h = int(tp.crop_size or tp.crop_h)
        self.crop_w = int(tp.crop_size or tp.crop_w)
        self.mean_values = np.array(tp.mean_value, np.float32)

    def policy(self, seed: int, batch: int) -> int:
        """The resize policy of batch ``batch``: MobileNet-YOLO draws one (``roll_weighted_die`` on the
        ``prob`` values) at every 10th batch it loads; here from a stream of (seed, batch // 10)."""
        if len(self.policies) < 2:
            return 0
        val = np.float32(np.random.default_rng([seed, batch // 10, 10]).uniform(0, self.cumulative[-1]))
        return min(int(np.searchsorted(self.cumulative, val, side="left")), len(self.policies) - 1)

    def shape(self, c: int, h: int, w: int, policy: int = 0) -> tuple[int, int, int]:
        """InferBlobShape."""
        if self.policies:
            w, h = new_size(self.policies[policy], w, h)
        if h < self.crop_h or w < self.crop_w:
            raise DatumError(f"crop {self.crop_h}x{self.crop_w} is larger than the image {h}x{w}")
        return c, (self.crop_h or h), (self.crop_w or w)

    def _means(self, c: int) -> np.ndarray:
        if len(self.mean_values) not in (0, 1, c):
            raise DatumError(f"specify either 1 mean_value or as many as channels: {c}")
        return np.resize(self.mean_values, c) if len(self.mean_values) else np.zeros(c, np.float32)

    def expand(self, img: np.ndarray, boxes: an.Boxes, rng: np.random.Generator,
               encoded: bool = True) -> tuple[np.ndarray, an.Boxes]:
        """ExpandImage: with ``expand_param.prob``, the image on a canvas ``U(1, max_expand_ratio)``
        times larger, at a random integer offset. The canvas holds the mean for an encoded datum and
        byte 32 (the fork's string of spaces) for a raw one."""
        ep = self.tp.expand_param
        if rng.uniform() > ep.prob or abs(ep.max_expand_ratio - 1) < 1e-2:
            return img, boxes
        ratio = np.float32(rng.uniform(1, ep.max_expand_ratio))
        h, w = img.shape[:2]
        eh, ew = int(h * ratio), int(w * ratio)
        y0, x0 = float(np.floor(rng.uniform(0, eh - h))), float(np.floor(rng.uniform(0, ew - w)))
        c = 1 if img.ndim == 2 else img.shape[2]
        if not encoded:
            canvas = np.full((eh, ew) if img.ndim == 2 else (eh, ew, c), 32, np.uint8)
        elif self.mean is not None:
            if self.mean.shape != (c, eh, ew):
                raise DatumError(f"expand_param with mean_file needs a {c}x{eh}x{ew} mean; received {self.mean.shape}")
            canvas = chw_to_hwc(self.mean.astype(np.uint8))
        else:
            canvas = np.empty((eh, ew, c), np.uint8)
            canvas[...] = np.clip(np.rint(self._means(c)), 0, 255).astype(np.uint8)
            canvas = canvas.reshape((eh, ew) if img.ndim == 2 else (eh, ew, c))
        canvas[int(y0): int(y0) + h, int(x0): int(x0) + w] = img
        src = np.array([-x0 / w, -y0 / h, (ew - x0) / w, (eh - y0) / h], np.float32)
        return canvas, an.transform_boxes(boxes, src, self._emit(), faces_in=self._faces_in(h, w))

    def _emit(self) -> Any:
        return self.tp.emit_constraint if self.tp.HasField("emit_constraint") else None

    def _faces_in(self, h: int, w: int) -> tuple[int, int] | None:
        """FaceBoxes' form: the size of the image the boxes are fractions of; else None."""
        return (int(h), int(w)) if self.faceboxes else None

    def sample(self, img: np.ndarray, boxes: an.Boxes, samplers,
               rng: np.random.Generator) -> tuple[np.ndarray, an.Boxes, np.ndarray | None]:
        """GenerateBatchSamples, one of them drawn, CropImage: (image, boxes, the box; None: none found)."""
        found = an.batch_samples(boxes.box, samplers, rng, self._faces_in(*img.shape[:2]))
        if not len(found):
            return img, boxes, None
        box = found[int(rng.integers(len(found)))]
        return self.crop(img, boxes, box)

    def crop(self, img: np.ndarray, boxes: an.Boxes, box: np.ndarray) -> tuple[np.ndarray, an.Boxes, np.ndarray]:
        """CropImage of an annotated image: (image, boxes, box)."""
        return (an.crop_box(img, box), an.transform_boxes(boxes, an.clip(box), self._emit(),
                                                          faces_in=self._faces_in(*img.shape[:2])), box)

    def jitter(self, img: np.ndarray, boxes: an.Boxes, jitter: float, policy: int,
               rng: np.random.Generator) -> tuple[np.ndarray, an.Boxes, np.ndarray]:
        """MobileNet-YOLO's GenerateJitterSamples and CropImage: with probability 0.2 the whole image,
        0.2 a crop whose sides are U(1 - jitter/2, 1) of the image's, 0.6 U(1 - jitter, 1) (one draw for
        both sides when the policy's resize_mode is FIT_LARGE_SIZE_AND_PAD), at a uniform offset."""
        if not self.policies:
            raise DatumError("annotated_data_param.yolo_data_jitter needs a transform_param.resize_param (the fork "
                             "reads the policy's resize_mode)")
        change = int(np.searchsorted(np.cumsum(np.float32([0.2, 0.2, 0.6])), np.float32(rng.uniform(0, 1.0))))
        if change == 0:
            return self.crop(img, boxes, np.array([0, 0, 1, 1], np.float32))
        use = np.float32(jitter / 2 if change == 1 else jitter)
        w = np.float32(rng.uniform(1 - use, 1))
        h = w if self.policies[policy].resize_mode == an.FIT_LARGE_SIZE_AND_PAD else np.float32(rng.uniform(1 - use, 1))
        x0, y0 = np.float32(rng.uniform(0, 1 - w)), np.float32(rng.uniform(0, 1 - h))
        return self.crop(img, boxes, np.array([x0, y0, x0 + w, y0 + h], np.float32))

    def __call__(self, img: np.ndarray, boxes: an.Boxes, rng: np.random.Generator,
                 policy: int = 0) -> tuple[np.ndarray, an.Boxes]:
        """Transform (with TransformAnnotation): C x H x W float32 data and the boxes in it."""
        chw, out, _ = self.apply(img, boxes, rng, policy)
        return chw, out

    def apply(self, img: np.ndarray, boxes: an.Boxes, rng: np.random.Generator,
              policy: int = 0) -> tuple[np.ndarray, an.Boxes, bool]:
        """As ``__call__``, with whether the image was mirrored."""
        h0, w0 = img.shape[:2]
        rp = self.policies[policy] if self.policies else None
        if self.cvt:
            if img.ndim != 3 or img.shape[2] != 3:
                raise DatumError(f"transform_param.cvt_bgr2rgb needs 3-channel images; received {img.shape}")
            img = np.ascontiguousarray(img[..., ::-1])
        if rp is not None:
            img = resize(img, rp, rng)
        if self.noise is not None:
            img = apply_noise(img, self.noise, rng)
        ih, iw = img.shape[:2]
        ch, cw = (self.crop_h, self.crop_w) if self.crop_h and self.crop_w else (ih, iw)
        if ih < ch or iw < cw:
            raise DatumError(f"crop {ch}x{cw} is larger than the image {ih}x{iw}")
        if self.crop_h and self.crop_w and self.phase == TRAIN:
            y, x = int(rng.integers(ih - ch + 1)), int(rng.integers(iw - cw + 1))
        else:
            y, x = (ih - ch) // 2, (iw - cw) // 2
        mirror = bool(self.tp.mirror) and bool(rng.integers(2))
        chw = hwc_to_chw(as_fork_reads(img[y: y + ch, x: x + cw])).astype(np.float32)
        if mirror:
            chw = chw[:, :, ::-1]
        c = chw.shape[0]
        if self.mean is not None:
            if self.mean.shape != (c, ih, iw):
                raise DatumError(f"mean_file is {self.mean.shape}; the images are {c}x{ih}x{iw}")
            chw = chw - self.mean[:, y: y + ch, x: x + cw]
        elif len(self.mean_values):
            chw = chw - self._means(c)[:, None, None]
        chw = np.ascontiguousarray(chw * np.float32(self.tp.scale), np.float32)
        crop = np.array([x / iw, y / ih, (x + cw) / iw, (y + ch) / ih], np.float32)
        if rp is not None and len(boxes.label):
            quad = None if boxes.quad is None else pa.resize_quads(boxes.quad, rp, w0, h0)   # TextBoxes++'s
            boxes = an.Boxes(an.resize_update(boxes.box, rp, w0, h0), boxes.label, boxes.instance,
                             boxes.difficult, quad)
        size = (rp.height, rp.width) if rp is not None else (h0, w0)   # the fork's now_height, now_width
        out = an.transform_boxes(boxes, crop, self._emit(), mirror, self._faces_in(*size))
        if rp is not None:
            out.box = an.extrapolate(out.box, rp, h0, w0, crop)
            if out.quad is not None:
                out.quad = an.extrapolate_quads(out.quad, rp, h0, w0, crop)
        return chw, out, mirror


class AnnotatedBatchMaker(DBRecords):
    """Batch ``k``: records ``k * batch_size ...`` of the database in key order (wrapping), each through
    distortion, expansion, sampling (or MobileNet-YOLO's ``jitter`` crop when there is no sampler) and the
    transform; returns ``{"data", "label"}`` arrays, the label in the YOLO form when ``yolo`` is set (its
    value: whether difficult boxes count), then with ``warmup`` also ``"label_warmup"``, the YOLO label
    without the difficult boxes (``difficult_label_warmup``: the layer picks one per solver iteration), and
    with ``seg`` (:class:`~neocaffe.data.annotated_yolo.SegSpec`) ``"seg_label"``, N x C x H' x W'. With
    ``quads`` the label rows carry TextBoxes++'s quadrilaterals (16 columns, :mod:`~neocaffe.data.polygon_anno`)."""

    def __init__(self, path: str, backend: str, batch_size: int, transform: AnnotatedTransform, samplers: list,
                 seed: int, with_boxes: bool, where: str, rank: int = 0, world: int = 1,
                 jitter: float = 0.0, yolo: bool | None = None, warmup: bool = False,
                 seg: ay.SegSpec | None = None, quads: bool = False) -> None:
        self.path, self.backend, self.batch_size = path, backend, int(batch_size)
        self.transform, self.samplers, self.seed = transform, samplers, int(seed)
        self.with_boxes, self.where, self.rank, self.world = with_boxes, where, int(rank), int(world)
        self.jitter, self.yolo, self.warmup, self.seg = float(jitter), yolo, bool(warmup), seg
        self.quads = bool(quads)    # TextBoxes++'s 16-column rows (neocaffe.data.polygon_anno)
        self.reader: DBReader | None = None
        self.pos = 0

    def _image(self, anno: caffe_pb2.AnnotatedDatum, name: str, rng: np.random.Generator,
               policy: int) -> tuple[np.ndarray, an.Boxes, np.ndarray | None, tuple[int, ...]]:
        """The image and boxes before the transform, the crop box drawn (None: none) and the decoded shape."""
        tp = self.transform.tp
        d = decode_datum(anno.datum, force_color=tp.force_color, force_gray=tp.force_gray, where=name)
        if d.array.dtype != np.uint8:
            raise DatumError(f"{name}: AnnotatedData needs 8-bit images; received float_data")
        img, boxes, box = chw_to_hwc(d.array), an.boxes_of(anno, self.quads), None
        if tp.HasField("distort_param") and d.encoded:
            img = _reencode(distort(img, tp.distort_param, rng))
        if tp.HasField("expand_param"):
            img2, boxes = self.transform.expand(img, boxes, rng, d.encoded)
            img = _reencode(img2) if d.encoded and img2 is not img else img2
        if self.samplers or self.jitter:
            if self.samplers:
                img2, boxes, box = self.transform.sample(img, boxes, self.samplers, rng)
            else:
                img2, boxes, box = self.transform.jitter(img, boxes, self.jitter, policy, rng)
            img = _reencode(img2) if d.encoded and box is not None else img2
        return img, boxes, box, d.array.shape

    def make(self, k: int) -> dict:
        policy = self.transform.policy(self.seed, k)  # this process's k-th batch, as the fork's iters_
        k = global_batch(k, self.rank, self.world)
        target = k * self.batch_size
        self.seek(target)
        assert self.reader is not None
        rng = np.random.default_rng([self.seed, k])
        data, rows, labels, kept, segs = [], [], [], [], []
        box, seg_shape = None, None   # the fork's crop_box outlives each image of the batch
        for item in range(self.batch_size):
            key, value = self.reader.next()
            name = f"{self.where}: record '{key.decode('utf-8', 'replace')}'"
            anno = an.parse_annotated(value, name)
            img, boxes, drawn, shape = self._image(anno, name, rng, policy)
            chw, boxes, mirror = self.transform.apply(img, boxes, rng, policy)
            if data and chw.shape != data[0].shape:
                raise DatumError(f"{name}: transformed to {chw.shape}; the batch's first image is {data[0].shape}")
            if self.seg is not None:
                box = drawn if drawn is not None else box
                seg_shape = seg_shape or self.seg.shape(*self.transform.shape(*shape, policy)[1:])
                segs.append(ay.seg_label(self.seg, ay.decode_seg(anno.datum, name), box, mirror, seg_shape, name))
            data.append(chw)
            rows.append(boxes.rows(item))
            kept.append(boxes)
            labels.append(anno.datum.label)
        self.pos = target + self.batch_size
        out = {"data": np.stack(data)}
        if segs:
            out["seg_label"] = np.stack(segs)
        if not self.with_boxes:
            return {**out, "label": np.array(labels, np.float32)}
        if self.yolo is not None:
            out["label"] = ay.yolo_label(kept, self.yolo)
            if self.warmup:
                out["label_warmup"] = ay.yolo_label(kept, False)
            return out
        width = 16 if self.quads else 8
        label = np.concatenate(rows) if rows else np.zeros((0, width), np.float32)
        if not len(label):
            label = np.full((1, width), -1, np.float32)
        return {**out, "label": label.reshape(1, 1, -1, width)}
