"""FlowNet 2.0's FlowAugmentation and BlackAugmentation.

lmb-freiburg/flownet2 @ b92e198b: ``src/caffe/layers/flow_augmentation_layer.{cpp,cu}`` (``WarpData``) and
``black_augmentation_layer.{cpp,cu}``. Neither has a backward in the fork: the tops carry no gradient.

FlowAugmentation reads the coefficient rows without the fork's DataAugmentation's ``clear_defaults`` (as
the fork: a coefficient within 1e-3 of its default moves the flow but not the image), nearest-pixel flow
lookup as :func:`neocaffe.layers.flownet_aug_kernels.flow_warp` documents.

BlackAugmentation, per item, in every phase (as the fork): with probability ``black`` every 2-channel
top is zero and every 3-channel top holds the last 3-channel bottom (a "no motion" pair); else with a
nonzero ``border`` draw a border of ``border * width`` columns, ``border * height`` rows or both (chosen
uniformly, the fork's ``rand() % 3``) is zeroed in every top. Draws come from a generator seeded by the
layer's seed and its forward count (resume state). Deviation: the fork leaves the black item of the
last image's top unwritten when the layer does not work in place; here it holds that image (what the
in-place form gives).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.data import flownet_coeffs as fc
from neocaffe.layers import flownet_aug_kernels as K
from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.flownet_aug import _coeff_rows, _rng
from neocaffe.layers.prefetched import data_seed
from neocaffe.layers.registry import register_layer


@register_layer("FlowAugmentation")
class FlowAugmentationLayer(Layer):
    """Bottoms: flow (N, 2, H, W), image 1's and image 2's coefficient rows; top: the flow between the
    two augmented crops, ``augmentation_param.crop_width`` x ``crop_height``."""

    exact_bottoms, exact_tops = 3, 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        aug = self.param.augmentation_param
        if aug.crop_width <= 0 or aug.crop_height <= 0:
            raise self.error("needs augmentation_param.crop_width and crop_height > 0; received "
                             f"{aug.crop_width} x {aug.crop_height}")
        self.cw, self.ch = int(aug.crop_width), int(aug.crop_height)
        if legacy_shape(bottom_shapes[0], self)[1] != 2:
            raise self.error(f"the flow bottom must have 2 channels; received shape {tuple(bottom_shapes[0])}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(legacy_shape(bottom_shapes[0], self)[0], 2, self.ch, self.cw)]

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def forward(self, flow: Tensor, p1: Tensor, p2: Tensor) -> Tensor:  # type: ignore[override]
        n, _, h, w = legacy_shape(tuple(flow.shape), self)
        m1, m2 = [], []
        for r1, r2 in zip(_coeff_rows(p1, n, self), _coeff_rows(p2, n, self)):
            m1.append(fc.trans_matrix(fc.from_array(r1), self.cw, self.ch, w, h))
            m2.append(fc.inverse(fc.trans_matrix(fc.from_array(r2), self.cw, self.ch, w, h)))
        dev = flow.device
        with torch.no_grad():
            return K.flow_warp(flow.detach().reshape(n, 2, h, w), torch.as_tensor(np.stack(m1), device=dev),
                               torch.as_tensor(np.stack(m2), device=dev), self.ch, self.cw)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(5)
        p1, p2 = np.zeros((2, fc.N_COEFFS, 1, 1)), np.zeros((2, fc.N_COEFFS, 1, 1))
        p1[:, fc.INDEX["angle"]], p2[:, fc.INDEX["dx"]], p2[:, fc.INDEX["zoom_x"]] = 0.05, 0.02, 0.1
        return [Example('name: "fa" type: "FlowAugmentation" bottom: "flow" bottom: "p1" bottom: "p2" top: "f" '
                        'augmentation_param { crop_width: 7 crop_height: 5 }',
                        [r.normal(0, 1, (2, 2, 8, 9)), p1, p2], grad_bottoms=(), grad_params=False, phase=0)]


@register_layer("BlackAugmentation")
class BlackAugmentationLayer(Layer):
    """``black_augmentation_param``: ``black`` (a bool draw: black out the item) and ``border`` (a float
    draw: the border's fraction of the size). Bottoms (2- or 3-channel, one size) map to tops one to one."""

    min_bottoms, min_tops = 1, 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        if len(bottom_shapes) != len(self.param.top):
            raise self.error(f"needs as many tops as bottoms; received {len(bottom_shapes)} bottoms and "
                             f"{len(self.param.top)} tops")
        n, _, h, w = legacy_shape(bottom_shapes[0], self)
        for s in bottom_shapes:
            sn, sc, sh, sw = legacy_shape(s, self)
            if sc not in (2, 3) or (sn, sh, sw) != (n, h, w):
                raise self.error(f"bottoms must have 2 or 3 channels and one num, height and width; received "
                                 f"{[tuple(b) for b in bottom_shapes]}")
        self.seed, self.forwards = data_seed(), 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(s) for s in bottom_shapes]

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def resume_state(self) -> dict:
        return {"seed": int(self.seed), "forwards": int(self.forwards)}

    def load_resume_state(self, state: dict) -> None:
        self.seed, self.forwards = int(state["seed"]), int(state["forwards"])

    def draws(self, n: int) -> list[tuple[bool, float, int]]:
        """The next forward's (black, border, border type) per item."""
        self.forwards += 1
        bp, rng = self.param.black_augmentation_param, _rng(self.seed, self.forwards, self.context.rank)
        out = []
        for _ in range(n):
            black = bool(fc.draw(bp.black, 1.0, rng, 0.0, as_bool=True))
            border = 0.0 if black else fc.draw(bp.border, 1.0, rng, 0.0)
            kind = int(rng.integers(0, 3)) if not black and border != 0.0 else 0
            out.append((black, border, kind))
        return out

    def forward(self, *bottoms: Tensor) -> list[Tensor]:  # type: ignore[override]
        xs = [b.detach() for b in bottoms]
        n, _, h, w = legacy_shape(tuple(xs[0].shape), self)
        tops = [x.clone() for x in xs]
        image = max((i for i, x in enumerate(xs) if x.shape[1] == 3), default=None)
        for i, (black, border, kind) in enumerate(self.draws(n)):
            if black:
                for t in tops:
                    if t.shape[1] == 2:
                        t[i] = 0
                    elif image is not None:
                        t[i] = xs[image][i]
                continue
            if border != 0.0:
                bw = int(np.float32(border) * np.float32(w)) if kind in (0, 2) else 0
                bh = int(np.float32(border) * np.float32(h)) if kind in (1, 2) else 0
                xs_ = torch.arange(w, device=xs[0].device)
                ys_ = torch.arange(h, device=xs[0].device)
                keep = ((xs_ >= bw) & (xs_ < w - bw)).view(1, w) & ((ys_ >= bh) & (ys_ < h - bh)).view(h, 1)
                for t in tops:
                    t[i] = torch.where(keep, t[i], t.new_zeros(()))
        return tops

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(6)
        return [Example('name: "black" type: "BlackAugmentation" bottom: "a" bottom: "b" bottom: "f" top: "a2" '
                        'top: "b2" top: "f2" black_augmentation_param { black { rand_type: "bernoulli" prob: 0.3 } '
                        'border { rand_type: "uniform_bernoulli" mean: 0.2 spread: 0.1 prob: 0.5 } }',
                        [r.uniform(0, 1, (4, 3, 6, 7)), r.uniform(0, 1, (4, 3, 6, 7)), r.normal(0, 1, (4, 2, 6, 7))],
                        grad_bottoms=(), grad_params=False, phase=0)]


__all__ = ["BlackAugmentationLayer", "FlowAugmentationLayer"]
