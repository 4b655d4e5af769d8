"""The device-side half of Caffe's DataTransformer (``transform_param``): `transform_batch` turns a batch of
host-cut crops into float32 ``(pixel - mean) * scale`` on the device the crops live on, `mean_crops` gathers each
item's (mirrored) mean crop in one indexing op, and `load_mean_file` reads a mean ``.binaryproto``. Split out of
:mod:`neocaffe.data.transformer` (the host side and the `DataTransformer` class, which re-exports these names).

The mean is cropped at each item's offset, mirrored with the item: Caffe subtracts the mean at each pixel's source
position, in its Datum and cv::Mat paths alike. Arithmetic is float32 ``(x - m) * s`` as in Caffe, so results match
it exactly; with ``scale_first``, NVCaffe's cv::Mat path (``DataTransformer::Transform(const cv::Mat&, ...)``,
``apply_mean_scale_mirror``): ``x * scale - mean * scale``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.datum import DatumError
from neocaffe.data.transfer import to_device

__all__ = ["transform_batch", "mean_crops", "load_mean_file"]


def load_mean_file(path: str) -> np.ndarray:
    """The mean of a ``.binaryproto`` (compute_image_mean's BlobProto) as float32 C x H x W."""
    from neocaffe.io.binaryproto import read_blobproto

    blob = read_blobproto(path)
    arr = np.asarray(blob.data, np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.size == 0:
        raise DatumError(f"{path}: mean file holds a blob of shape {tuple(blob.data.shape)}; expected 1 x C x H x W "
                         "with C, H, W > 0")
    return np.ascontiguousarray(arr)


def transform_batch(
    x: Tensor,
    offsets: Tensor | None = None,
    mirror: Tensor | None = None,
    *,
    scale: float = 1.0,
    mean: Tensor | None = None,
    mean_values: Tensor | None = None,
    mean_flipped: Tensor | None = None,
    out: Tensor | None = None,
    scale_first: bool = False,
) -> Tensor:
    """float32 ``(x - mean) * scale`` for a batch of crops, on the device ``x`` lives on.

    ``x``: (N, C, h, w) uint8 or float crops laid out as output: items flagged in ``mirror`` are
    already flipped left-right (the host does that on uint8, cheaply). ``offsets``: (N, 2) where each
    crop starts in the image the ``mean`` (C, H, W) covers. Caffe subtracts the mean at each pixel's
    source position, so a mirrored item gets the mirrored mean crop (a view of ``mean_flipped`` =
    ``mean.flip(-1)``). ``mean_values``: (C,) per-channel means instead of ``mean``. The two
    roundings are Caffe's: subtract, then scale. ``out``: a float32 tensor to write into.
    ``scale_first``: NVCaffe's cv::Mat path instead, ``x * scale - mean * scale`` (each product rounded).
    """
    n, c, h, w = x.shape
    if scale_first:
        return _scale_first(x, offsets, mirror, scale, mean, mean_values, out)
    if out is not None:
        y = out
    elif x.device.type == "cpu":  # NumPy's allocator reuses freed pages; torch.empty faults them in anew
        y = torch.from_numpy(np.empty(tuple(x.shape), np.float32))
    else:
        y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    cpu = y.device.type == "cpu"  # NumPy's casting loops are ~3x faster than torch's on the CPU
    if cpu:
        xs, ys = x.cpu().numpy(), y.numpy()
        sub, mul = (lambda a, b, o: np.subtract(a, b, out=o, dtype=np.float32)), (lambda o, v: np.multiply(o, v, out=o))
    else:
        xs, ys = x, y
        sub, mul = (lambda a, b, o: torch.sub(a, b, out=o)), (lambda o, v: o.mul_(v))
    if mean is not None and n:
        mean = mean.to(device=y.device, dtype=torch.float32)
        offs = torch.as_tensor(offsets) if offsets is not None else torch.zeros((n, 2), dtype=torch.int64)
        flips = torch.as_tensor(mirror, dtype=torch.bool) if mirror is not None else torch.zeros(n, dtype=torch.bool)
        if not bool(flips.any()) and bool((offs == offs[:1]).all()):
            h0, w0 = (int(v) for v in offs[0])
            m = mean.numpy() if cpu else mean
            sub(xs, m[:, h0 : h0 + h, w0 : w0 + w], ys)
        elif not cpu:  # one gather and one subtraction, not a kernel launch per item
            sub(xs, mean_crops(mean, offs, flips, h, w), ys)
        else:  # per item: each slice subtraction runs at memory speed, a gather copies element by element
            if mean_flipped is None:
                mean_flipped = mean.flip(-1)
            m, mf = mean.numpy(), mean_flipped.to(device=y.device, dtype=torch.float32).numpy()
            big_w = m.shape[-1]
            for i, ((h0, w0), f) in enumerate(zip(offs.tolist(), flips.tolist())):
                if f:
                    sub(xs[i], mf[:, h0 : h0 + h, big_w - w0 - w : big_w - w0], ys[i])
                else:
                    sub(xs[i], m[:, h0 : h0 + h, w0 : w0 + w], ys[i])
    elif mean_values is not None:
        mv = mean_values.to(device=y.device, dtype=torch.float32).view(1, c, 1, 1)
        sub(xs, mv.numpy() if cpu else mv, ys)
    elif cpu:
        np.copyto(ys, xs, casting="unsafe")
    else:
        y.copy_(x)
    if scale != 1.0:
        mul(ys, np.float32(scale) if cpu else float(np.float32(scale)))
    return y


def _scale_first(x: Tensor, offsets: Tensor | None, mirror: Tensor | None, scale: float, mean: Tensor | None,
                 mean_values: Tensor | None, out: Tensor | None) -> Tensor:
    """NVCaffe's ``apply_mean_scale_mirror``: ``convertTo(scale)`` of the pixels and of the mean, then
    ``cv::subtract`` (float32; the mean at each pixel's source position, the host having flipped ``x``)."""
    n, c, h, w = x.shape
    s = float(np.float32(scale))
    y = x.to(torch.float32)
    if s != 1.0:
        y = y * s
    if mean is not None and n:
        m = mean.to(device=y.device, dtype=torch.float32)
        m = m * s if s != 1.0 else m
        offs = torch.as_tensor(offsets) if offsets is not None else torch.zeros((n, 2), dtype=torch.int64)
        flips = torch.as_tensor(mirror, dtype=torch.bool) if mirror is not None else torch.zeros(n, dtype=torch.bool)
        y = y - mean_crops(m, offs, flips, h, w)
    elif mean_values is not None:
        mv = mean_values.to(device=y.device, dtype=torch.float32)
        y = y - (mv * s if s != 1.0 else mv).view(1, c, 1, 1)
    if out is not None:
        out.copy_(y)
        return out
    return y.contiguous()


def mean_crops(mean: Tensor, offsets: Tensor, mirror: Tensor, h: int, w: int) -> Tensor:
    """(N, C, h, w): the ``h`` x ``w`` crop of ``mean`` (C, H, W) at each item's ``offsets`` (N, 2),
    mirrored left-right for items flagged in ``mirror`` (N,) (the mean at each output pixel's source
    position, as Caffe subtracts it), gathered in one indexing op on ``mean``'s device."""
    dev = mean.device
    offs = to_device(offsets, dev, torch.int64)
    flip = to_device(mirror, dev, torch.bool)
    rows = offs[:, :1] + torch.arange(h, device=dev)  # (N, h)
    step = torch.arange(w, device=dev)
    cols = offs[:, 1:] + torch.where(flip[:, None], w - 1 - step, step)  # (N, w)
    chans = torch.arange(mean.shape[0], device=dev)
    return mean[chans[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
