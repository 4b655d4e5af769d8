"""CRF-RNN's ``MultiStageMeanfield``: mean-field inference of a dense CRF as a trainable layer.

Lineage: torrvision/caffe ``master`` @ d779ee369bf86739bc225d99e78aefa040da199f (the Caffe that
torrvision/crfasrnn pins as its submodule; the layer unchanged since ``e8c42213``, 2016-04),
``src/caffe/layers/multi_stage_meanfield.cpp``, ``src/caffe/layers/meanfield_iteration.cpp``,
``include/caffe/vision_layers.hpp`` (both classes; CPU only: no ``.cu``, GPU mode runs the CPU code),
``src/caffe/util/modified_permutohedral.cpp`` (``neocaffe.layers._crfrnn_lattice``), and
``MultiStageMeanfieldParameter`` (``multi_stage_meanfield_param``; proto/NUMBERING.md, lineage crfrnn).

Bottoms: the unary (N, C, H, W), the first iteration's input Q0 (its softmax is the first Q; the
released nets feed a copy of the unary) and the image (N, >= 3, H, W: channels 0-2 as the net gives
them, mean-subtracted BGR in the released nets). Top: (N, C, H, W), the last iteration's output
before its softmax. Blobs, each (1, 1, C, C): the spatial kernel weights, the bilateral kernel weights,
the compatibility matrix (diagonals ``spatial_filter_weight``, ``bilateral_filter_weight``, and -1:
Potts; zero elsewhere).

Fields read: ``num_iterations`` (must be > 1, the fork's CHECK), ``theta_alpha``, ``theta_beta``
(bilateral: x, y over theta_alpha, the three image channels over theta_beta), ``theta_gamma`` (spatial:
x, y over theta_gamma). Per iteration, per image (the fork loops over images; batch > 1 is its own unit
test's setting): ``Q = softmax(in)``; ``s = norm_s * spatial(Q)``, ``b = norm_b * bilateral(Q)``
(``norm = 1 / (filter(1) + 1e-20)``, the spatial lattice shared by all images, a bilateral lattice per
image); ``out = unary - Compat (W_s s + W_b b)``.

Backward (the fork's, which is the gradient of that forward: the lattice's reverse pass is the
transpose of its forward pass): to the unary, the sum of every iteration's diff; to Q0 through the
first Softmax; to the blobs ``sum_n diff s^T`` etc., summed over iterations; the message passing's
diff goes back through ``norm`` then the reverse filters (spatial, then bilateral added onto it, in
the lattice's float arithmetic). The image gets no diff (``allow_force_backward`` is false for it).
The fork sets each blob's diff to 0 before adding its own (``caffe_set`` then ``caffe_axpy``), so
under an executor that accumulates (``iter_size`` > 1, or a blob shared with a layer whose backward ran
first) the blob's diff is this layer's last backward alone; here too (:class:`_OwnDiff`).

Deviations: the fork initialises the kernel weights' diagonals from the files ``spatial.par`` and
``bilateral.par`` in the working directory (one value per class; its ``crfrnn`` branch ships them
holding 3 and 5, the released prototxts' ``spatial_filter_weight: 3`` and ``bilateral_filter_weight:
5``) and never reads the two fields; here the fields fill the diagonals. ``threshold``,
``compatibility_mode`` (only POTTS exists) and ``forced_*`` are read by no code of the fork; here
neither. The fork sizes its lattices and buffers at set-up (its Reshape does nothing); here any
(N, H, W) works and the spatial lattice is cached per (H, W). The image must have the unary's H x W
and >= 3 channels (the fork indexes it with the unary's sizes). With float64 blobs the lattice keeps
double values (the fork's ``double`` overloads filter in float).

The released nets (``examples/segmentationcrfasrnn/TVG_CRFRNN_new_{deploy,traintest}.prototxt``) crop FCN-8s'
scores with the fork's ``Crop``, which is longjon's coordinate-map Crop (``src/caffe/layers/crop_layer.cpp``),
as HED's: they need ``lineage: "hed"`` in the net (``neocaffe/layers/lineage.py``); without it the Crops cut
at offset 0 (BVLC's) and say so in a warning.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._crfrnn_lattice import CrfLattice, bilateral_features, normalizer, spatial_features
from neocaffe.layers.base import PLAIN, Example, Layer, LayerCall, Shape, accumulates_in_place, legacy_shape
from neocaffe.layers.registry import register_layer


class _MessagePassing(torch.autograd.Function):
    """One image's ``(norm_s * spatial(Q), norm_b * bilateral(Q))`` with the fork's backward:
    ``spatial_rev(norm_s * ds)``, then ``bilateral_rev(norm_b * db)`` added onto it."""

    @staticmethod
    def forward(ctx, q: Tensor, spatial: CrfLattice, ns: Tensor, bilateral: CrfLattice,  # type: ignore[override]
                nb: Tensor) -> tuple[Tensor, Tensor]:
        ctx.lattices, ctx.norms = (spatial, bilateral), (ns, nb)
        return spatial.compute(q) * ns, bilateral.compute(q) * nb

    @staticmethod
    def backward(ctx, ds: Tensor, db: Tensor):  # type: ignore[override]
        (spatial, bilateral), (ns, nb) = ctx.lattices, ctx.norms
        g = spatial.compute(ds * ns, reverse=True)
        g = bilateral.compute(db * nb, reverse=True, out=g)
        return g, None, None, None, None


class _Softmax(torch.autograd.Function):
    """Caffe's SoftmaxLayer over axis 1: ``exp(x - max) / sum``; backward ``(g - sum(g * y)) * y``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        e = (x - x.amax(1, keepdim=True)).exp_()
        y = e.div_(e.sum(1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return (g - (g * y).sum(1, keepdim=True)) * y


class _OwnDiff(torch.autograd.Function):
    """Identity on a blob whose backward replaces the blob's accumulated diff with this layer's
    (the fork's ``caffe_set(0)`` before its ``caffe_axpy``)."""

    @staticmethod
    def forward(ctx, w: Tensor, call: LayerCall) -> Tensor:  # type: ignore[override]
        ctx.w, ctx.call = w, call
        return w.clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if accumulates_in_place(ctx.w, ctx.call):
            ctx.w.grad.copy_(g)
            return None, None
        return g, None


@register_layer("MultiStageMeanfield")
class MultiStageMeanfield(Layer):
    """CRF-RNN's mean-field layer (see the module docstring)."""

    exact_bottoms = 3
    exact_tops = 1
    allow_in_place = False
    takes_call = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        mp = self.param.multi_stage_meanfield_param
        self.iterations = int(mp.num_iterations)
        if self.iterations <= 1:
            raise self.error("multi_stage_meanfield_param.num_iterations must be greater than 1 (the fork's "
                             f"CHECK_GT); received {self.iterations}")
        self.theta_alpha, self.theta_beta, self.theta_gamma = (float(mp.theta_alpha), float(mp.theta_beta),
                                                               float(mp.theta_gamma))
        for name, v in (("theta_alpha", self.theta_alpha), ("theta_beta", self.theta_beta),
                        ("theta_gamma", self.theta_gamma)):
            if not v > 0:
                raise self.error(f"multi_stage_meanfield_param.{name} must be positive; received {v}")
        c = self._check(bottom_shapes)[1]
        eye = torch.eye(c, dtype=torch.float32)
        self.add_blob((eye * float(mp.spatial_filter_weight)).view(1, 1, c, c))
        self.add_blob((eye * float(mp.bilateral_filter_weight)).view(1, 1, c, c))
        self.add_blob((eye * -1.0).view(1, 1, c, c))
        self._spatial: dict[tuple, tuple[CrfLattice, dict]] = {}
        self._last: tuple | None = None  # the last image's bilateral lattices

    def _check(self, shapes: list[Shape]) -> tuple[int, int, int, int]:
        u, q, im = (legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(shapes))
        if len(shapes[0]) != 4 or tuple(shapes[1]) != tuple(shapes[0]):
            raise self.error(f"bottoms 0 (unary) and 1 (Q0) must be N x C x H x W of one shape; received "
                             f"{tuple(shapes[0])} and {tuple(shapes[1])}")
        if im[0] != u[0] or im[1] < 3 or im[2:] != u[2:]:
            raise self.error(f"bottom 2 (the image) must be N x (>= 3) x H x W with the unary's N, H, W "
                             f"({u[0]}, {u[2]}, {u[3]}); received {tuple(shapes[2])}")
        if self.blobs and self.blobs[0].shape[-1] != u[1]:
            raise self.error(f"the unary has {u[1]} channels; the blobs are {tuple(self.blobs[0].shape)}")
        return u

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        self._check(bottom_shapes)
        return [tuple(bottom_shapes[0])]

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 2

    def _lattice(self, features: np.ndarray, what: str) -> CrfLattice:
        try:
            return CrfLattice(features)
        except ValueError as e:  # the lattice's keys would overflow
            raise self.error(f"the {what} features span too wide a lattice for theta_alpha {self.theta_alpha:g}, "
                             f"theta_beta {self.theta_beta:g}, theta_gamma {self.theta_gamma:g} ({e})") from None

    def spatial(self, height: int, width: int, dtype: torch.dtype,
                device: torch.device) -> tuple[CrfLattice, Tensor]:
        """The spatial lattice of an H x W image and its normalisation (built once per size)."""
        key = (height, width)
        if key not in self._spatial:
            self._spatial = {key: (self._lattice(spatial_features(height, width, self.theta_gamma), "spatial"), {})}
        lat, norms = self._spatial[key]
        nk = (str(device), dtype)
        if nk not in norms:
            norms[nk] = normalizer(lat, dtype, device)
        return lat, norms[nk]

    def bilateral(self, image: Tensor) -> list[tuple[CrfLattice, Tensor]]:
        """Each image's bilateral lattice and normalisation (kept for the next forward while the image,
        its dtype and device stay the same)."""
        host = image.detach()[:, :3].cpu().numpy()
        key = (str(image.device), image.dtype)
        if self._last is not None and self._last[0] == key and np.array_equal(self._last[1], host):
            return self._last[2]
        out = []
        for n in range(host.shape[0]):
            feats = bilateral_features(host[n], self.theta_alpha, self.theta_beta)
            lat = self._lattice(feats, f"bilateral (image {n})")
            out.append((lat, normalizer(lat, image.dtype, image.device)))
        self._last = (key, host, out)
        return out

    def forward(self, unary: Tensor, q0: Tensor, image: Tensor,  # type: ignore[override]
                call: LayerCall = PLAIN) -> Tensor:
        n, c, h, w = unary.shape
        dt = unary.dtype
        blobs = [_OwnDiff.apply(b, call) if call.accumulate else b for b in self.blobs]
        ws, wb, compat = (b.view(c, c).to(dt) for b in blobs)
        spatial, ns = self.spatial(h, w, dt, unary.device)
        bil = self.bilateral(image.to(dt))
        u = unary.reshape(n, c, h * w)
        x = q0.reshape(n, c, h * w)
        for _ in range(self.iterations):
            prob = _Softmax.apply(x)
            parts = [_MessagePassing.apply(prob[i], spatial, ns, lat, nb) for i, (lat, nb) in enumerate(bil)]
            s = torch.stack([p[0] for p in parts])
            b = torch.stack([p[1] for p in parts])
            x = u - compat @ (ws @ s + wb @ b)
        return x.view(n, c, h, w)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_iterations={self.iterations}, theta_alpha={self.theta_alpha:g}, "
                f"theta_beta={self.theta_beta:g}, theta_gamma={self.theta_gamma:g}")

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(146)
        head = ('name: "crf" type: "MultiStageMeanfield" bottom: "unary" bottom: "q0" bottom: "data" top: "pred" '
                'multi_stage_meanfield_param { ')
        img = r.integers(0, 256, (2, 3, 3, 4)).astype(np.float64)
        un = r.standard_normal((2, 3, 3, 4))
        return [
            Example(head + "num_iterations: 2 theta_alpha: 5 theta_beta: 20 theta_gamma: 3 "
                    "spatial_filter_weight: 3 bilateral_filter_weight: 5 }",
                    [un, un.copy(), img], grad_bottoms=(0, 1)),
            Example(head + "num_iterations: 3 theta_alpha: 160 theta_beta: 3 theta_gamma: 3 }",
                    [r.standard_normal((1, 2, 2, 3)), r.standard_normal((1, 2, 2, 3)),
                     r.integers(0, 256, (1, 4, 2, 3)).astype(np.float64)], grad_bottoms=(0, 1)),
        ]
