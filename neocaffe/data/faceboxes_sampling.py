"""FaceBoxes' changes to SSD's annotated-image augmentation (sfzhang15/FaceBoxes @
b52cc92f9362d3adc08d54666aeb9ebb62fdb7da, ``src/caffe/util/sampler.cpp`` SampleBBox,
``src/caffe/util/bbox_util.cpp`` MeetEmitConstraint, ``src/caffe/data_transformer.cpp`` TransformAnnotation),
used by ``AnnotatedData`` in a net of lineage ``"faceboxes"``:

* SampleBBox: the crop is a *square in pixels* of side ``scale * min(H, W)`` (as fractions: the longer side
  gets ``scale * short / long``, the other ``scale``) of the image being sampled (after distortion and
  expansion); the sampler's aspect ratios are drawn by the fork but not used, so they change nothing here;
* MeetEmitConstraint, ``emit_type: CENTER``: a box is kept only where, besides its centre lying in the crop,
  its width and height in pixels (``xmax * W - xmin * W + 1``, float) are both over 16; W x H is the image
  the box is a fraction of: at a sample crop or an expansion the image before it, at the transform the
  ``resize_param``'s height x width (the image's own size without a resize_param). MIN_OVERLAP is SSD's.

The fork reads W x H from the datum's ``height``/``width`` fields; here from the decoded image (the fields the
fork's tools write hold the same).
"""
from __future__ import annotations

import numpy as np

from neocaffe.data.datum import DatumError
from neocaffe.proto import caffe_pb2

F32 = np.float32
#: the smallest face side (pixels, exclusive) a CENTER emit constraint keeps
MIN_FACE = 16


def square_samples(sampler: caffe_pb2.Sampler, n: int, rng: np.random.Generator, height: int,
                   width: int) -> np.ndarray:
    """SampleBBox ``n`` times over an image of ``height`` x ``width``: [n, 4] float32 boxes, square in pixels."""
    if not (0 < sampler.min_scale <= sampler.max_scale <= 1):
        raise DatumError(f"sampler: need 0 < min_scale <= max_scale <= 1; received {sampler.min_scale}, "
                         f"{sampler.max_scale}")
    if not 0 < sampler.min_aspect_ratio <= sampler.max_aspect_ratio:
        raise DatumError("sampler: need 0 < min_aspect_ratio <= max_aspect_ratio")
    if height <= 0 or width <= 0:
        raise DatumError(f"FaceBoxes' sampler needs the image size; received {height}x{width}")
    scale = rng.uniform(sampler.min_scale, sampler.max_scale, n).astype(F32)
    if width > height:   # scale * img_height / img_width, in float
        w, h = ((scale * F32(height)).astype(F32) / F32(width)).astype(F32), scale
    else:
        w, h = scale, ((scale * F32(width)).astype(F32) / F32(height)).astype(F32)
    x0 = (rng.uniform(0, 1, n) * (1 - w)).astype(F32)
    y0 = (rng.uniform(0, 1, n) * (1 - h)).astype(F32)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(F32)


def big_enough(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """The fork's added CENTER test for every box [K, 4] (fractions of a ``height`` x ``width`` image):
    width and height in pixels over :data:`MIN_FACE`."""
    fw, fh = F32(width), F32(height)
    w = (box[:, 2] * fw).astype(F32) - (box[:, 0] * fw).astype(F32) + F32(1)
    h = (box[:, 3] * fh).astype(F32) - (box[:, 1] * fh).astype(F32) + F32(1)
    return (w > F32(MIN_FACE)) & (h > F32(MIN_FACE))


__all__ = ["MIN_FACE", "big_enough", "square_samples"]
