"""Caffe's fillers (``FillerParameter.type``): constant, uniform, gaussian (with ``sparse``),
positive_unitball, xavier, msra (``variance_norm``), bilinear; happynear's gaussian_unitball (NormFace) and
daerduoCarey/SpatialTransformerLayer's file (``FillerParameter.file``: the values from a text file; see
:mod:`neocaffe.layers.stn_extras`); lmb-freiburg/flownet2's diagonal (``FillerParameter.diag_val``; its
``include/caffe/filler.hpp`` @ b92e198, as PWC-Net's test nets use it for the final flow scaling).

Fan-in and fan-out follow Caffe: ``fan_in = count / shape[0]``, ``fan_out = count / shape[1]``
(integer division), not PyTorch's receptive-field arithmetic.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.blob_shape import check_shape

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2  # FillerParameter.VarianceNorm


def _fans(shape: Sequence[int]) -> tuple[int, int]:
    count = math.prod(shape)
    fan_in = count // shape[0] if len(shape) >= 1 and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _n(filler: Any, shape: Sequence[int]) -> float:
    fan_in, fan_out = _fans(shape)
    norm = filler.variance_norm
    if norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_out if norm == FAN_OUT else fan_in)


def _constant(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    return torch.full(tuple(shape), f.value, dtype=torch.float32)


def _uniform(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    if not (math.isfinite(f.min) and math.isfinite(f.max) and f.min <= f.max):  # Caffe: CHECK_LE(a, b)
        raise ValueError(f"uniform filler needs finite min <= max; received min = {f.min}, max = {f.max}")
    return torch.empty(tuple(shape), dtype=torch.float32).uniform_(f.min, f.max, generator=g)


def _gaussian(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    if not (math.isfinite(f.mean) and math.isfinite(f.std) and f.std >= 0):  # Caffe: CHECK_GT(sigma, 0)
        raise ValueError(f"gaussian filler needs a finite mean and std >= 0; received mean = {f.mean}, "
                         f"std = {f.std}")
    out = torch.empty(tuple(shape), dtype=torch.float32).normal_(f.mean, f.std, generator=g)
    if f.sparse >= 0:
        if len(shape) < 1 or shape[0] == 0:
            raise ValueError(f"gaussian filler with sparse = {f.sparse} needs a blob with num_outputs; got shape {tuple(shape)}")
        p = f.sparse / shape[0]
        mask = torch.empty(tuple(shape)).bernoulli_(p, generator=g)
        out *= mask
    return out


def _positive_unitball(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    out = torch.empty(tuple(shape), dtype=torch.float32).uniform_(0, 1, generator=g)
    num = shape[0] if shape else 1
    flat = out.reshape(num, -1)
    flat /= flat.sum(dim=1, keepdim=True)
    return out


def _gaussian_unitball(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    """happynear/caffe-windows (ms @ 967eedf2, ``include/caffe/filler.hpp``, GaussianUnitBallFiller):
    N(0, 1) whatever ``mean``/``std`` say, then each of the ``shape[0]`` rows times ``1 / sqrt(r.r +
    1e-12)`` (the eps added in double to the float dot); ``sparse`` is an error."""
    if f.sparse != -1:
        raise ValueError(f"gaussian_unitball filler: sparsity not supported; received sparse = {f.sparse}")
    out = torch.empty(tuple(shape), dtype=torch.float32).normal_(0.0, 1.0, generator=g)
    flat = out.reshape(shape[0] if shape else 1, -1)
    sq = ((flat * flat).sum(1).double() + 1e-12).float()
    flat *= (1 / torch.sqrt(sq.double()).float())[:, None]
    return out


def _xavier(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    scale = math.sqrt(3.0 / _n(f, shape))
    return torch.empty(tuple(shape), dtype=torch.float32).uniform_(-scale, scale, generator=g)


def _msra(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    std = math.sqrt(2.0 / _n(f, shape))
    return torch.empty(tuple(shape), dtype=torch.float32).normal_(0.0, std, generator=g)


def _bilinear(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"bilinear filler needs a 4-D blob with square kernels; got shape {tuple(shape)}")
    h, w = shape[2], shape[3]
    fct = math.ceil(w / 2.0)
    c = (2 * fct - 1 - fct % 2) / (2.0 * fct)
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    kernel = (1 - (ys / fct - c).abs())[:, None] * (1 - (xs / fct - c).abs())[None, :]
    return kernel.to(torch.float32).expand(tuple(shape)).contiguous()


# what ``std::istream >> float`` takes: white space, then a decimal number (no inf/nan, no hex)
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


def read_numbers(path: str, limit: int, what: str) -> list[float]:
    """Up to ``limit`` numbers from the text file ``path``, read as the fork's ``ifstream >>`` loops do
    (stopping at the first token that is not a number). ``what`` names the reader in the error."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"{what}: cannot read '{path}' ({e.strerror or e})") from None
    values: list[float] = []
    pos = 0
    while len(values) < limit:
        m = _NUMBER.match(text, pos)
        if m is None:
            break
        values.append(float(m.group(1)))
        pos = m.end()
    return values


def _file_filler(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    if not f.HasField("file"):
        raise ValueError("file filler needs FillerParameter.file (the text file of the values)")
    if f.sparse != -1:
        raise ValueError(f"file filler: sparsity not supported; received sparse = {f.sparse}")
    count = math.prod(shape)
    values = read_numbers(f.file, count, "file filler")
    if len(values) < count:
        raise ValueError(f"file filler: '{f.file}' holds {len(values)} numbers; the blob of shape "
                         f"{tuple(shape)} needs {count}")
    return torch.tensor(values, dtype=torch.float32).reshape(tuple(shape))


def _diagonal(f: Any, shape: Sequence[int], g: torch.Generator) -> Tensor:
    """flownet2's DiagonalFiller: zeros, then for n < min(num, channels) the (n, n) kernel holds
    ``diag_val[n] / (height * width)`` (``diag_val`` missing for that n: 1), in float32 as the fork's Dtype;
    num, channels, height, width are the blob's legacy (4-D) shape."""
    if f.sparse != -1:
        raise ValueError(f"diagonal filler: sparsity not supported; received sparse = {f.sparse}")
    if len(shape) > 4:
        raise ValueError(f"diagonal filler needs a blob of at most 4 axes (Caffe's legacy shape); got {tuple(shape)}")
    num, channels, height, width = (list(shape) + [1, 1, 1, 1])[:4] if shape else (1, 1, 1, 1)
    out = torch.zeros((num, channels, height * width), dtype=torch.float32)
    area = torch.tensor(float(height * width), dtype=torch.float32)
    for n in range(min(num, channels)):
        v = torch.tensor(f.diag_val[n] if len(f.diag_val) > n else 1.0, dtype=torch.float32)
        out[n, n, :] = v / area
    return out.reshape(tuple(shape))


FILLERS: dict[str, Callable[[Any, Sequence[int], torch.Generator], Tensor]] = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "gaussian_unitball": _gaussian_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
    "file": _file_filler,
    "diagonal": _diagonal,
}


def fill(filler: Any, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
    """A float32 tensor of ``shape`` filled as ``FillerParameter`` ``filler`` says. The shape is
    checked before allocating (:func:`~neocaffe.layers.blob_shape.check_shape`): every dimension
    positive, as Caffe's fillers CHECK a non-empty blob, and a size this machine can hold."""
    try:
        fn = FILLERS[filler.type]
    except KeyError:
        raise ValueError(f"Unknown filler type '{filler.type}'; known: {', '.join(sorted(FILLERS))}") from None
    dims = check_shape(shape, f"blob filled by the '{filler.type}' filler", allow_zero=False)
    return fn(filler, list(dims), generator if generator is not None else rng.generator())
