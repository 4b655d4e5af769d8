"""AlexNet's colour augmentation, opt-in through neocaffe's ``TransformationParameter`` fields
(proto/NUMBERING.md, 10000-10005): PCA lighting noise (``pca_lighting``, ``pca_eigval``,
``pca_eigvec``) and colour jitter (``brightness_jitter``, ``contrast_jitter``, ``saturation_jitter``).

No Caffe lineage has them; the recipe is AlexNet's (Krizhevsky et al. 2012, section 4.1: add
``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`` to every pixel, ``a_i ~ N(0, 0.1^2)`` drawn once per image) and
the jitter of fb.resnet.torch / torchvision's ColorJitter, in a fixed order. Per image, on the raw crop
(float pixel values, Caffe's BGR channel order), before ``(x - mean) * scale``:

1. brightness: ``x = clamp(f_b * x)``;
2. contrast: ``x = clamp(f_c * x + (1 - f_c) * mean(gray(x)))`` (mean over the crop);
3. saturation: ``x = clamp(f_s * x + (1 - f_s) * gray(x))`` (no-op on one channel);
4. lighting: ``x[c] += sum_k eigvec[c][k] * a_k * eigval[k]`` (not clamped, as AlexNet's);

with ``clamp`` to [0, 255], ``gray = 0.114 B + 0.587 G + 0.299 R`` and each factor ``f ~ U[max(0, 1 - j),
1 + j]`` for its jitter amount ``j``. The host draws (``ColorAugment.draw``: ``a`` as N x 3, then each
enabled jitter's N factors, from the batch's seeded generator); the device applies them
(``ColorAugment.apply``), where the mean and scale run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.datum import DatumError
from neocaffe.data.transfer import to_device

__all__ = ["ColorAugment", "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "GRAY_WEIGHTS"]

# fb.resnet.torch's ImageNet PCA (RGB, pixels in [0, 1]) in Caffe's units: x 255, rows in BGR order
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32) * np.float32(255.0)
IMAGENET_EIGVEC = np.array([[-0.5836, -0.6948, 0.4203],    # B
                            [-0.5808, -0.0045, -0.8140],   # G
                            [-0.5675, 0.7192, 0.4009]],    # R
                           np.float32)
GRAY_WEIGHTS = np.array([0.114, 0.587, 0.299], np.float32)  # B, G, R


@dataclass(frozen=True)
class ColorAugment:
    """The colour fields of one ``transform_param``; ``draw`` columns: a_0..a_2, f_b, f_c, f_s."""

    pca_sigma: float
    eigval: np.ndarray
    eigvec: np.ndarray
    brightness: float
    contrast: float
    saturation: float

    @classmethod
    def from_param(cls, param: Any, where: str = "transform_param") -> "ColorAugment | None":
        """From a TransformationParameter; None when every colour field is off (Caffe's transform)."""
        sigma, b, c, s = (float(getattr(param, f)) for f in
                          ("pca_lighting", "brightness_jitter", "contrast_jitter", "saturation_jitter"))
        for name, v in (("pca_lighting", sigma), ("brightness_jitter", b), ("contrast_jitter", c),
                        ("saturation_jitter", s)):
            if v < 0:
                raise DatumError(f"{where}: {name} = {v}; expected >= 0 (0: off)")
        eigval = np.asarray(list(param.pca_eigval), np.float32) if len(param.pca_eigval) else IMAGENET_EIGVAL
        eigvec = np.asarray(list(param.pca_eigvec), np.float32) if len(param.pca_eigvec) else IMAGENET_EIGVEC
        if eigval.shape != (3,):
            raise DatumError(f"{where}: pca_eigval has {eigval.size} values; expected 3")
        if eigvec.size != 9:
            raise DatumError(f"{where}: pca_eigvec has {eigvec.size} values; expected 9 (3 x 3, row-major)")
        if sigma == b == c == s == 0:
            return None
        return cls(sigma, eigval, eigvec.reshape(3, 3), b, c, s)

    def check_channels(self, channels: int, what: str) -> None:
        if self.pca_sigma and channels != 3:
            raise DatumError(f"{what}: pca_lighting needs 3 channels (BGR); the image has {channels}")

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 6) float32 per-item draws; a column whose transform is off holds its identity (0 / 1)."""
        out = np.zeros((n, 6), np.float32)
        out[:, 3:] = 1.0
        if self.pca_sigma:
            out[:, :3] = rng.normal(0.0, self.pca_sigma, (n, 3))
        for col, j in ((3, self.brightness), (4, self.contrast), (5, self.saturation)):
            if j:
                out[:, col] = rng.uniform(max(0.0, 1.0 - j), 1.0 + j, n)
        return out

    def apply(self, x: Tensor, draws: Tensor) -> Tensor:
        """``x`` (N, C, h, w) raw pixel crops, float32, on any device -> the augmented crops (new tensor)."""
        x = x.to(torch.float32)
        d = to_device(torch.as_tensor(draws, dtype=torch.float32), x.device)
        n, c = x.shape[:2]

        def per_item(col: int) -> Tensor:
            return d[:, col].view(n, 1, 1, 1)

        def gray(t: Tensor) -> Tensor:
            if c == 1:
                return t
            w = torch.from_numpy(GRAY_WEIGHTS).to(t.device).view(1, 3, 1, 1)
            return (t * w).sum(1, keepdim=True)

        if self.brightness:
            x = (x * per_item(3)).clamp_(0.0, 255.0)
        if self.contrast:
            m = gray(x).mean(dim=(1, 2, 3), keepdim=True)
            f = per_item(4)
            x = (f * x + (1.0 - f) * m).clamp_(0.0, 255.0)
        if self.saturation and c > 1:
            f = per_item(5)
            x = (f * x + (1.0 - f) * gray(x)).clamp_(0.0, 255.0)
        if self.pca_sigma:
            vec = torch.from_numpy(self.eigvec).to(x.device)
            val = torch.from_numpy(self.eigval).to(x.device)
            # (N, 3): row n = eigvec @ (a_n * eigval); as products and a sum, not a matmul, so TF32 (CUDA's
            # cuBLAS under PyTorch's switches) cannot round it differently from the CPU
            offset = ((d[:, None, :3] * val) * vec).sum(-1)
            x = x + offset.view(n, 3, 1, 1)
        return x
