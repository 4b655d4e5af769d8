"""FlowNet 2.0's augmentation layers: DataAugmentation and GenerateAugmentationParameters.

lmb-freiburg/flownet2 @ b92e198b: ``src/caffe/layers/data_augmentation_layer.{cpp,cu}``,
``generate_augmentation_parameters_layer.{cpp,cu}``, ``augmentation_layer_base.cpp`` and
``src/caffe/util/rng.cpp``; fields from ``augmentation_param`` (AugmentationParameter) and
``coeff_schedule_param``. The coefficient draws and their array form live in
:mod:`neocaffe.data.flownet_coeffs`, the per-pixel kernels in :mod:`neocaffe.layers.flownet_aug_kernels`.
A coefficient row has 42 float32 values (AugmentationCoeff's fields in declaration order, log-valued where
the default is 1); tops of coefficients are (N, 42, 1, 1).

Neither layer has a backward in the fork (its Backward is a fatal error): the tops carry no gradient.

Randomness: each layer takes a seed from ``neocaffe.rng`` at setup; forward ``k``'s draws come from a
generator seeded by (seed, k) (DataAugmentation's ``k`` is its iteration blob, which snapshots keep;
GenerateAugmentationParameters' is in its resume state), so runs repeat and resume exactly. The fork draws
from Caffe's global mt19937 and cuRAND, which cannot be reproduced. Deviations: GenerateAugmentationParameters
keeps its iteration across a resume (the fork restarts its schedule from 0); ``write_augmented``/
``write_mean`` (debug dumps) are not written; the fork's float index arithmetic in
``ColorContrastAugmentation`` (wrong past 2^24 elements) is not reproduced. Loading weights: the fork copies
DataAugmentation's blobs with its own rule (a deploy net's mean blob may have another crop size);
:meth:`DataAugmentationLayer.copy_blobs` is that rule, for the weight loader to call.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from neocaffe.data import flownet_coeffs as fc
from neocaffe.layers import flownet_aug_kernels as K
from neocaffe.layers.base import TRAIN, Example, Layer, Shape, legacy_shape
from neocaffe.layers.prefetched import data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe")
PWC_EIGVEC = (0.51, 0.56, 0.65, 0.79, 0.01, -0.62, 0.35, -0.83, 0.44)  # FlowNet2's / PWC-Net's chromatic_eigvec


def _rng(seed: int, k: int, rank: int = 0) -> np.random.Generator:
    """Forward ``k``'s draws (a data-parallel ``rank`` > 0 draws its own)."""
    return np.random.default_rng([int(seed), int(k)] + ([int(rank)] if rank else []))


def _coeff_rows(t: Tensor, n: int, layer: Layer) -> np.ndarray:
    a = t.detach().to("cpu", torch.float32).numpy().reshape(n, -1)
    if a.shape[1] != fc.N_COEFFS:
        raise layer.error(f"a coefficient bottom has {a.shape[1]} values per item; expected {fc.N_COEFFS} "
                          "(an augmentation layer's parameter top)")
    return a


class _Augmenting(Layer):
    """What both layers share: the parameters, the seed and the families of draws the phase allows."""

    allow_in_place = False

    def _read(self) -> None:
        self.aug = self.param.augmentation_param
        self.schedule = self.param.coeff_schedule_param
        self.seed = data_seed()
        gens = fc.gen_families(self.aug)
        on = self.phase == TRAIN or self.aug.augment_during_test
        self.gen_spatial, self.gen_chromatic, self.gen_eigen, self.gen_effect = (g and on for g in gens)

    def allow_force_backward(self, bottom: int) -> bool:
        return False


@register_layer("DataAugmentation")
class DataAugmentationLayer(_Augmenting):
    """Random spatial (mirror, translate, rotate, zoom, squeeze; crop to ``crop_width`` x ``crop_height``),
    chromatic-eigen, chromatic (gamma, brightness, contrast, color) and effect (shadow, noise) augmentation,
    then mean subtraction (``recompute_mean`` iterations of running mean, per pixel or per channel with
    ``mean_per_pixel``; or the three values of ``mean`` when not ``mean_per_pixel``). Bottom 1, when given,
    holds the coefficients to apply; top 1, when asked for, the coefficients applied. Without both crop
    fields nothing is augmented (the fork's rule). Blobs: the iteration count, and with ``recompute_mean``
    the per-pixel and per-channel means (all get ``lr_mult: 0, decay_mult: 0``, as the fork adds)."""

    min_bottoms, max_bottoms, min_tops, max_tops = 1, 2, 1, 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self._read()
        n, c, h, w = legacy_shape(bottom_shapes[0], self)
        aug = self.aug
        self.crop = aug.HasField("crop_width") and aug.HasField("crop_height")
        self.cw, self.ch = (int(aug.crop_width), int(aug.crop_height)) if self.crop else (w, h)
        if self.cw > w or self.ch > h:
            raise self.error(f"crop {self.cw}x{self.ch} is larger than the bottom's {w}x{h}; expected a crop "
                             "inside the image")
        self.eigvec = [float(v) for v in aug.chromatic_eigvec]
        self.add_blob(torch.zeros(1, 1, 1, 1))
        if aug.recompute_mean:
            self.add_blob(torch.zeros(1, c, self.ch, self.cw))
            self.add_blob(torch.zeros(1, c, 1, 1))
        elif len(aug.mean) == 3 and not aug.mean_per_pixel:
            self.register_buffer("proto_mean", torch.tensor(list(aug.mean), dtype=torch.float32).view(1, 3, 1, 1),
                                 persistent=False)
        while len(self.param.param) < len(self.blobs):
            self.param.param.add()
        for spec in self.param.param[: len(self.blobs)]:
            spec.lr_mult, spec.decay_mult = 0, 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c = legacy_shape(bottom_shapes[0], self)[:2]
        out = [(n, c, self.ch, self.cw)]
        if len(self.param.top) > 1:
            out.append(tuple(bottom_shapes[1]) if len(bottom_shapes) > 1 else (n, fc.N_COEFFS, 1, 1))
        return out

    def resume_state(self) -> dict:
        return {"seed": int(self.seed)}

    def load_resume_state(self, state: dict) -> None:
        self.seed = int(state["seed"])

    def copy_blobs(self, arrays: list[np.ndarray]) -> None:
        """The fork's ``adjust_blobs`` (its CustomCopyBlobs, run when weights are loaded): with
        ``recompute_mean`` and at least two stored blobs, the iteration count and either the per-channel
        mean (``mean_per_pixel: false``; the per-pixel blob stays) or the per-pixel mean, which a net of
        another crop size gets as its per-channel average broadcast. Without ``recompute_mean`` nothing."""
        if not self.aug.recompute_mean or len(arrays) < 2:
            return
        src = np.asarray(arrays[1], np.float32)
        c = self.blobs[1].shape[1]
        if src.ndim != 4 or src.shape[1] != c:
            raise self.error(f"stored mean blob has shape {src.shape}; expected (1, {c}, H, W)")
        with torch.no_grad():
            self.blobs[0].copy_(torch.as_tensor(np.asarray(arrays[0], np.float32).reshape(self.blobs[0].shape)))
            if not self.aug.mean_per_pixel:
                per_channel = np.asarray(arrays[2], np.float32).reshape(self.blobs[2].shape)
                self.blobs[2].copy_(torch.as_tensor(per_channel))
                return
            per_channel = (src[0] * np.float32(1.0 / (src.shape[2] * src.shape[3]))).sum(axis=(1, 2))
            if tuple(src.shape[2:]) == tuple(self.blobs[1].shape[2:]):
                self.blobs[1].copy_(torch.as_tensor(src))
            else:
                self.blobs[1].copy_(torch.as_tensor(per_channel).view(1, c, 1, 1).expand_as(self.blobs[1]))
            self.blobs[2].copy_(torch.as_tensor(per_channel).view(1, c, 1, 1))

    def generate(self, n: int, w: int, h: int, iteration: int) -> np.ndarray:
        """The coefficient rows of forward ``iteration`` for a batch of ``n`` ``w`` x ``h`` images."""
        rng, disc = _rng(self.seed, iteration, self.context.rank), fc.discount(self.schedule, iteration)
        rows = np.zeros((n, fc.N_COEFFS), dtype=np.float32)
        for i in range(n):
            c: fc.Coeffs = {}
            if self.gen_spatial:
                c = fc.valid_spatial(self.aug, c, disc, rng, w, h, self.cw, self.ch)
            if self.gen_chromatic:
                fc.chromatic(self.aug, c, disc, rng)
            if self.gen_eigen:
                fc.eigen(self.aug, c, disc, rng)
            if self.gen_effect:
                fc.effect(self.aug, c, disc, rng)
            rows[i] = fc.to_array(c)
        return rows

    def forward(self, *bottoms: Tensor) -> list[Tensor]:  # type: ignore[override]
        x = bottoms[0].detach()
        n, c, h, w = legacy_shape(tuple(x.shape), self)
        x = x.reshape(n, c, h, w)
        with torch.no_grad():
            it = int(self.blobs[0].reshape(-1)[0].item()) + 1
            self.blobs[0].fill_(it)
            rows = _coeff_rows(bottoms[1], n, self) if len(bottoms) > 1 else None
            if self.crop:
                if rows is None:
                    rows = self.generate(n, w, h, it)
                y = self.augment(x, [fc.clear_defaults(fc.from_array(r)) for r in rows], it)
            else:
                y = x.clone()
            y = self.subtract_mean(y, it)
        tops = [y]
        if len(self.param.top) > 1:
            if len(bottoms) > 1:
                tops.append(bottoms[1].detach().clone())
            else:
                arr = rows if rows is not None else np.zeros((n, fc.N_COEFFS), dtype=np.float32)
                tops.append(torch.as_tensor(arr, device=x.device).to(x.dtype).view(n, fc.N_COEFFS, 1, 1))
        return tops

    def augment(self, x: Tensor, coeffs: list[fc.Coeffs], it: int) -> Tensor:
        """Every kernel the fork runs for these (default-cleared) coefficients, in its order."""
        n, c, h, w = x.shape
        dev = x.device

        def col(names: tuple[str, ...]) -> Tensor:
            a = np.array([[k.get(nm, fc.DEFAULTS[nm]) for nm in names] for k in coeffs], dtype=np.float32)
            return torch.as_tensor(a, device=dev)

        mats = np.stack([fc.trans_matrix(k, self.cw, self.ch, w, h) for k in coeffs])
        y = K.spatial_warp(x, torch.as_tensor(mats, device=dev), self.ch, self.cw)
        chroma = [k.get("gamma", 1) != 1 or k.get("brightness", 0) != 0 or k.get("contrast", 1) != 1
                  or any(k.get(f"color{j}", 1) != 1 for j in (1, 2, 3)) for k in coeffs]
        eig = [any(k.get(nm, fc.DEFAULTS[nm]) != fc.DEFAULTS[nm] for nm in fc.EIGEN) for k in coeffs]
        eff = [(k.get("fog_amount", 0) != 0 and k.get("fog_size", 0) != 0) or k.get("motion_blur_size", 0) > 0
               or k.get("shadow_strength", 0) > 0 or k.get("noise", 0) > 0 for k in coeffs]
        if (any(chroma) or any(eig) or any(eff)) and c != 3:
            raise self.error(f"chromatic, chromatic-eigen and effect augmentations need 3-channel input; "
                             f"received {c} channels")
        if any(eig):
            if len(self.eigvec) != 9:
                raise self.error(f"chromatic-eigen augmentation needs 9 augmentation_param.chromatic_eigvec "
                                 f"values; received {len(self.eigvec)}")
            ev = torch.tensor(self.eigvec, dtype=x.dtype, device=dev)
            ks = col(fc.EIGEN)
            y = K.chromatic_eigen(y, {nm: ks[:, j] for j, nm in enumerate(fc.EIGEN)}, K.eigen_space(x, ev), ev,
                                  float(self.aug.max_multiplier))
        if any(chroma):
            ks = col(fc.CHROMATIC)
            y = K.color_contrast(y, ks[:, 3:6], ks[:, 0], ks[:, 1], ks[:, 2], float(self.aug.max_multiplier))
        if any(eff):
            ks = col(("shadow_angle", "shadow_distance", "shadow_strength", "noise"))
            y = K.effects(y, torch.cos(ks[:, 0]), torch.sin(ks[:, 0]), ks[:, 1], ks[:, 2],
                          float(self.aug.max_multiplier))
            noise = ks[:, 3]
            if bool((noise > 0).any()):
                key = (self.seed * 1_000_003 + it * 1024 + self.context.rank) % 2**63
                g = torch.Generator(device=dev).manual_seed(key)
                for i in range(n):
                    if float(noise[i]) > 0:
                        y[i] += torch.randn(y[i].shape, generator=g, device=dev, dtype=y.dtype) * noise[i].to(y.dtype)
        return y

    def subtract_mean(self, y: Tensor, it: int) -> Tensor:
        """``recompute_mean``: running mean of the first ``recompute_mean`` iterations' tops (blobs 1 and 2),
        subtracted per pixel or per channel; else the three ``mean`` values when not ``mean_per_pixel``."""
        aug = self.aug
        n = y.shape[0]
        if aug.recompute_mean > 0:
            mean, per_channel = self.blobs[1], self.blobs[2]
            if it <= aug.recompute_mean:
                m = mean.data.to(y.dtype) * (it - 1)
                for i in range(n):
                    m = m + y[i:i + 1] * (1.0 / n)
                m = m * (1.0 / it)
                mean.data.copy_(m)
                area = m.shape[2] * m.shape[3]
                per_channel.data.copy_((m * (1.0 / area)).sum(dim=(2, 3), keepdim=True))
            sub = mean if aug.mean_per_pixel else per_channel
            return y - sub.data.to(y.dtype)
        if hasattr(self, "proto_mean"):
            return y - self.proto_mean.to(y.dtype)
        return y

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(3)
        img = r.uniform(0, 1, (2, 3, 9, 10))
        ev = " ".join(f"chromatic_eigvec: {v}" for v in PWC_EIGVEC)
        g = 'rand_type: "gaussian_bernoulli" spread: 0.2 prob: 1'
        rows = np.zeros((2, fc.N_COEFFS, 1, 1))
        rows[:, fc.INDEX["angle"]] = 0.1
        rows[:, fc.INDEX["gamma"]] = 0.2
        return [
            Example('name: "aug" type: "DataAugmentation" bottom: "img" top: "aug" top: "params" '
                    f'augmentation_param {{ crop_width: 8 crop_height: 6 max_multiplier: 1 recompute_mean: 10 '
                    f'mean_per_pixel: false mirror {{ rand_type: "bernoulli" prob: 0.5 }} translate {{ {g} }} '
                    f'rotate {{ {g} }} zoom {{ {g} exp: true }} lmult_pow {{ {g} exp: true }} '
                    f'col_rotate {{ {g} }} gamma {{ {g} exp: true }} noise {{ rand_type: "uniform" mean: 0.02 '
                    f'spread: 0.01 }} {ev} }}', [img], grad_bottoms=(), grad_params=False, phase=0),
            Example('name: "aug" type: "DataAugmentation" bottom: "img" bottom: "params" top: "aug" '
                    'augmentation_param { crop_width: 7 crop_height: 7 mean: 0.4 mean: 0.5 mean: 0.6 '
                    'mean_per_pixel: false }', [img, rows], grad_bottoms=(), grad_params=False),
        ]


@register_layer("GenerateAugmentationParameters")
class GenerateAugmentationParametersLayer(_Augmenting):
    """Coefficient rows for a later DataAugmentation/FlowAugmentation: from one bottom (an image: mode
    "regenerate", its size the source size; or a 1x1 coefficient blob with ``bottomwidth``/``bottomheight``)
    or three (coefficients, the source images, the augmented images: the crop and source sizes come from
    them). ``mode``: "add" (draws added to the bottom's coefficients, log-valued ones thus multiplied),
    "replace" (spatial ones redrawn, others kept) or "regenerate" (all from defaults). Spatial draws keep the
    crop inside the source (50 tries); ``coeff_schedule_param`` discounts the spreads by iteration."""

    min_bottoms, max_bottoms, exact_tops = 1, 3, 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        if len(bottom_shapes) == 2:
            raise self.error("takes one bottom (any blob giving num) or three (coefficients, source images, "
                             "augmented images); received 2")
        self._read()
        aug = self.aug
        s0 = legacy_shape(bottom_shapes[0], self)
        self.mode = aug.mode
        if len(bottom_shapes) == 1 and (s0[3] > 1 or s0[2] > 1):
            self.mode = "regenerate"
        if self.mode not in ("add", "replace", "regenerate"):
            raise self.error(f"augmentation_param.mode '{self.mode}' is not one of add, replace, regenerate")
        self.num = s0[0]
        if len(bottom_shapes) == 3:
            self.cw, self.ch = legacy_shape(bottom_shapes[2], self)[3], legacy_shape(bottom_shapes[2], self)[2]
            self.bw, self.bh = legacy_shape(bottom_shapes[1], self)[3], legacy_shape(bottom_shapes[1], self)[2]
        else:
            if not (aug.HasField("crop_width") and aug.HasField("crop_height")):
                raise self.error("needs augmentation_param.crop_width and crop_height when no third bottom gives "
                                 "the crop size")
            self.cw, self.ch = int(aug.crop_width), int(aug.crop_height)
            if s0[3] > 1 or s0[2] > 1:
                self.bw, self.bh = s0[3], s0[2]
            elif aug.HasField("bottomwidth") and aug.HasField("bottomheight"):
                self.bw, self.bh = int(aug.bottomwidth), int(aug.bottomheight)
            else:
                raise self.error("needs augmentation_param.bottomwidth and bottomheight when no bottom gives the "
                                 "source size")
        self.iteration = 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(self.num, fc.N_COEFFS, 1, 1)]

    def resume_state(self) -> dict:
        return {"seed": int(self.seed), "iteration": int(self.iteration)}

    def load_resume_state(self, state: dict) -> None:
        self.seed, self.iteration = int(state["seed"]), int(state["iteration"])

    def rows(self, incoming: np.ndarray | None) -> np.ndarray:
        """The next forward's coefficient rows (``incoming``: the bottom's, for "add" and "replace")."""
        self.iteration += 1
        rng, disc = _rng(self.seed, self.iteration, self.context.rank), fc.discount(self.schedule, self.iteration)
        out = np.zeros((self.num, fc.N_COEFFS), dtype=np.float32)
        add = self.mode == "add"
        for i in range(self.num):
            c = fc.from_array(incoming[i]) if self.mode in ("add", "replace") and incoming is not None else {}
            if self.gen_spatial:
                if self.mode == "replace":
                    c = {k: v for k, v in c.items() if k not in fc.SPATIAL}
                c = fc.valid_spatial(self.aug, c, disc, rng, self.bw, self.bh, self.cw, self.ch)
            out[i] = fc.to_array(c)
            for on, gen in ((self.gen_chromatic, fc.chromatic), (self.gen_eigen, fc.eigen),
                            (self.gen_effect, fc.effect)):
                if not on:
                    continue
                if add:
                    tmp: fc.Coeffs = {}
                    gen(self.aug, tmp, disc, rng)
                    out[i] = out[i] + fc.to_array(tmp)
                else:
                    gen(self.aug, c, disc, rng)
                    out[i] = fc.to_array(c)
        return out

    def forward(self, *bottoms: Tensor) -> Tensor:  # type: ignore[override]
        b = bottoms[0]
        incoming = _coeff_rows(b, self.num, self) if self.mode in ("add", "replace") else None
        out = self.rows(incoming)
        return torch.as_tensor(out, device=b.device).to(b.dtype).view(self.num, fc.N_COEFFS, 1, 1)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(4)
        rows = np.zeros((2, fc.N_COEFFS, 1, 1))
        rows[:, fc.INDEX["dx"]] = 0.05
        g = 'rand_type: "gaussian_bernoulli" spread: 0.03 prob: 1'
        body = f'translate {{ {g} }} rotate {{ {g} }} zoom {{ {g} exp: true }} gamma {{ {g} exp: true }} ' \
               f'brightness {{ {g} }} color {{ {g} exp: true }}'
        return [
            Example('name: "gen" type: "GenerateAugmentationParameters" bottom: "p" bottom: "src" bottom: "aug" '
                    'top: "p2" coeff_schedule_param { half_life: 50000 initial_coeff: 0.5 final_coeff: 1 } '
                    f'augmentation_param {{ {body} }}',
                    [rows, r.uniform(0, 1, (2, 3, 12, 14)), r.uniform(0, 1, (2, 3, 8, 10))],
                    grad_bottoms=(), grad_params=False, phase=0),
            Example('name: "gen" type: "GenerateAugmentationParameters" bottom: "img" top: "p" '
                    f'augmentation_param {{ crop_width: 6 crop_height: 5 augment_during_test: true {body} }}',
                    [r.uniform(0, 1, (3, 3, 8, 9))], grad_bottoms=(), grad_params=False),
        ]


__all__ = ["DataAugmentationLayer", "GenerateAugmentationParametersLayer"]
