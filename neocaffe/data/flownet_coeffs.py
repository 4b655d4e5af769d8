"""FlowNet 2.0's augmentation coefficients: their draws, their array form and the spatial matrix.

lmb-freiburg/flownet2 @ b92e198b, ``src/caffe/util/rng.cpp`` (``caffe_rng_generate``) and
``src/caffe/layers/augmentation_layer_base.cpp`` (``generate_*_coeffs``, ``coeff_to_array`` /
``array_to_coeff``, ``clear_defaults``, ``tTransMat``). A coefficient set is a dict of the
``AugmentationCoeff`` fields that are set (a field left out holds its default, as protobuf's ``has_``);
its array form has one float32 per field in the message's declaration order, log-valued for the fields
whose default is not 0 (zoom, gamma, contrast, colours, pow/mult), so that "add" multiplies them.

Draws come from a ``numpy.random.Generator`` the caller seeds (the fork: boost's mt19937 through Caffe's
global stream, which cannot be reproduced); their order and distributions are the fork's. Quirks kept:
the mirror draw gets the default mirror value (0) as its discount, so ``apply_schedule`` zeroes its
spread; ``*_bernoulli`` draws that miss return ``prob0`` untouched (no ``discretize``/``multiplier``);
``generate_valid_spatial`` restores the incoming coefficients whenever 50 tries were used, also when the
50th was good; boolean draws (mirror, black) are cast to bool before and after ``multiplier``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

#: AugmentationCoeff's fields in declaration order (the array layout) with their defaults
COEFF_FIELDS: tuple[tuple[str, float], ...] = (
    ("mirror", 0.0), ("dx", 0.0), ("dy", 0.0), ("angle", 0.0), ("zoom_x", 1.0), ("zoom_y", 1.0),
    ("gamma", 1.0), ("brightness", 0.0), ("contrast", 1.0), ("color1", 1.0), ("color2", 1.0), ("color3", 1.0),
    ("pow_nomean0", 1.0), ("pow_nomean1", 1.0), ("pow_nomean2", 1.0),
    ("add_nomean0", 0.0), ("add_nomean1", 0.0), ("add_nomean2", 0.0),
    ("mult_nomean0", 1.0), ("mult_nomean1", 1.0), ("mult_nomean2", 1.0),
    ("pow_withmean0", 1.0), ("pow_withmean1", 1.0), ("pow_withmean2", 1.0),
    ("add_withmean0", 0.0), ("add_withmean1", 0.0), ("add_withmean2", 0.0),
    ("mult_withmean0", 1.0), ("mult_withmean1", 1.0), ("mult_withmean2", 1.0),
    ("lmult_pow", 1.0), ("lmult_add", 0.0), ("lmult_mult", 1.0), ("col_angle", 0.0),
    ("fog_amount", 0.0), ("fog_size", 0.0), ("motion_blur_angle", 0.0), ("motion_blur_size", 0.0),
    ("shadow_angle", 0.0), ("shadow_distance", 0.0), ("shadow_strength", 0.0), ("noise", 0.0),
)
N_COEFFS = len(COEFF_FIELDS)
DEFAULTS = dict(COEFF_FIELDS)
INDEX = {name: i for i, (name, _) in enumerate(COEFF_FIELDS)}
SPATIAL = ("mirror", "dx", "dy", "angle", "zoom_x", "zoom_y")
CHROMATIC = ("gamma", "brightness", "contrast", "color1", "color2", "color3")
EIGEN = tuple(n for n, _ in COEFF_FIELDS[12:34])
EFFECT = tuple(n for n, _ in COEFF_FIELDS[34:])
#: AugmentationParameter fields whose presence turns each family of draws on (the forks' Forward_gpu)
SPATIAL_GENS = ("mirror", "rotate", "zoom", "translate", "squeeze", "translate_x", "translate_y")
CHROMATIC_GENS = ("brightness", "gamma", "contrast", "color")
EFFECT_GENS = ("fog_size", "fog_amount", "motion_blur_angle", "motion_blur_size", "shadow_angle",
               "shadow_distance", "shadow_strength", "noise")
EIGEN_GENS = ("lmult_pow", "lmult_mult", "lmult_add", "sat_pow", "sat_mult", "sat_add", "col_pow", "col_mult",
              "col_add", "ladd_pow", "ladd_mult", "ladd_add", "col_rotate")

Coeffs = dict[str, float]
f32 = np.float32


def _round_half_away(v: float) -> float:
    """C's ``round``."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def draw(p: Any, discount: float, rng: np.random.Generator, prob0: float = math.nan, as_bool: bool = False) -> float:
    """One ``caffe_rng_generate`` draw from RandomGeneratorParameter ``p`` (``rand_type`` uniform, gaussian,
    bernoulli, uniform_bernoulli, gaussian_bernoulli; ``exp``, ``mean``, ``spread`` scaled by ``discount``
    when ``apply_schedule``, ``prob``, ``discretize``, ``multiplier``)."""
    spread = float(f32(p.spread * f32(discount))) if p.apply_schedule else float(p.spread)
    mean, kind = float(p.mean), p.rand_type

    def value(gauss: bool) -> float:
        if spread <= 0:
            return mean
        return float(f32(rng.normal(mean, spread) if gauss else rng.uniform(mean - spread, mean + spread)))

    if kind in ("uniform", "gaussian"):
        v = value(kind == "gaussian")
        v = math.exp(v) if p.exp else v
    elif kind == "bernoulli":
        v = float(rng.random() < p.prob) if p.prob > 0 else 0.0
    elif kind in ("uniform_bernoulli", "gaussian_bernoulli"):
        on = bool(rng.random() < p.prob) if p.prob > 0 else False
        if not on and not math.isnan(prob0):
            return float(prob0 != 0) if as_bool else float(f32(prob0))
        v = value(kind == "gaussian_bernoulli") if on else 0.0
        v = math.exp(v) if p.exp else v
    else:
        raise ValueError(f"rand_type '{kind}' is not one of uniform, gaussian, bernoulli, uniform_bernoulli, "
                         "gaussian_bernoulli")
    v = float(f32(v))
    if as_bool:
        v = float(v != 0)
    if p.discretize:
        v = _round_half_away(v)
    v = float(f32(p.multiplier * v))
    return float(v != 0) if as_bool else v


def _has(aug: Any, name: str) -> bool:
    return aug.HasField(name)


def gen_families(aug: Any) -> tuple[bool, bool, bool, bool]:
    """Which draws an AugmentationParameter asks for: (spatial, chromatic, eigen, effect)."""
    return (any(_has(aug, f) for f in SPATIAL_GENS), any(_has(aug, f) for f in CHROMATIC_GENS),
            any(_has(aug, f) for f in EIGEN_GENS), any(_has(aug, f) for f in EFFECT_GENS))


def spatial(aug: Any, c: Coeffs, discount: float, rng: np.random.Generator) -> None:
    """``generate_spatial_coeffs``: mirror, translate(_x/_y), rotate, zoom, squeeze into ``c``."""
    if _has(aug, "mirror"):
        c["mirror"] = draw(aug.mirror, 0.0, rng, as_bool=True)  # the fork passes the default mirror as discount
    if _has(aug, "translate"):
        c["dx"] = draw(aug.translate, discount, rng, 0.0)
        c["dy"] = draw(aug.translate, discount, rng, 0.0)
    if _has(aug, "translate_x"):
        c["dx"] = draw(aug.translate_x, discount, rng, 0.0)
    if _has(aug, "translate_y"):
        c["dy"] = draw(aug.translate_y, discount, rng, 0.0)
    if _has(aug, "rotate"):
        c["angle"] = draw(aug.rotate, discount, rng, 0.0)
    if _has(aug, "zoom"):
        c["zoom_x"] = draw(aug.zoom, discount, rng, 1.0)
        c["zoom_y"] = c["zoom_x"]
    if _has(aug, "squeeze"):
        s = draw(aug.squeeze, discount, rng, 1.0)
        c["zoom_x"] = float(f32(c.get("zoom_x", 1.0) * s))
        c["zoom_y"] = float(f32(c.get("zoom_y", 1.0) / s))


def _corners_inside(c: Coeffs, w: int, h: int, cw: int, ch: int) -> int:
    """How many of the crop's four corners land inside the source (``floor`` in [0, size - 2])."""
    a, good = c.get("angle", 0.0), 0
    for x in (0, cw - 1):      # the fork's loop ``x += cw - 1`` (which never ends for a 1-wide crop)
        for y in (0, ch - 1):
            x1 = (-x + 0.5 * cw) if c.get("mirror", 0.0) else (x - 0.5 * cw)
            y1 = y - 0.5 * ch
            x2 = math.cos(a) * x1 - math.sin(a) * y1 + c.get("dx", 0.0) * cw
            y2 = math.sin(a) * x1 + math.cos(a) * y1 + c.get("dy", 0.0) * ch
            x2 = x2 / c.get("zoom_x", 1.0) + 0.5 * w
            y2 = y2 / c.get("zoom_y", 1.0) + 0.5 * h
            if not (math.floor(x2) < 0 or math.floor(x2) > w - 2 or math.floor(y2) < 0 or math.floor(y2) > h - 2):
                good += 1
    return good


def valid_spatial(aug: Any, c: Coeffs, discount: float, rng: np.random.Generator, w: int, h: int,
                  cw: int, ch: int, tries: int = 50) -> Coeffs:
    """``generate_valid_spatial_coeffs``: spatial draws added (array form) to ``c`` until the crop's corners
    fall inside the ``w`` x ``h`` source; after ``tries`` tries, ``c`` unchanged. Returns every field set."""
    incoming = to_array(c)
    good, counter, out = 0, 0, from_array(incoming)
    while good < 4 and counter < tries:
        new: Coeffs = {}
        spatial(aug, new, discount, rng)
        out = from_array(to_array(new) + incoming)
        good = _corners_inside(out, w, h, cw, ch)
        counter += 1
    return from_array(incoming) if counter >= tries else out


def chromatic(aug: Any, c: Coeffs, discount: float, rng: np.random.Generator) -> None:
    """``generate_chromatic_coeffs``: gamma, brightness, contrast, color1..3."""
    for field, names in (("gamma", ("gamma",)), ("brightness", ("brightness",)), ("contrast", ("contrast",)),
                         ("color", ("color1", "color2", "color3"))):
        if _has(aug, field):
            for n in names:
                c[n] = draw(getattr(aug, field), discount, rng)


def eigen(aug: Any, c: Coeffs, discount: float, rng: np.random.Generator) -> None:
    """``generate_chromatic_eigen_coeffs`` in the fork's order (sat_* set channels 1 and 2 alike)."""
    one = (("ladd_pow", ("pow_nomean0",)), ("col_pow", ("pow_nomean1", "pow_nomean2")),
           ("ladd_add", ("add_nomean0",)), ("col_add", ("add_nomean1", "add_nomean2")),
           ("ladd_mult", ("mult_nomean0",)), ("col_mult", ("mult_nomean1", "mult_nomean2")))
    for field, names in one:
        if _has(aug, field):
            for n in names:
                c[n] = draw(getattr(aug, field), discount, rng)
    for field, kind in (("sat_pow", "pow"), ("sat_add", "add"), ("sat_mult", "mult")):
        if _has(aug, field):
            c[f"{kind}_withmean1"] = c[f"{kind}_withmean2"] = draw(getattr(aug, field), discount, rng)
    for field, n in (("lmult_pow", "lmult_pow"), ("lmult_mult", "lmult_mult"), ("lmult_add", "lmult_add"),
                     ("col_rotate", "col_angle")):
        if _has(aug, field):
            c[n] = draw(getattr(aug, field), discount, rng)


def effect(aug: Any, c: Coeffs, discount: float, rng: np.random.Generator) -> None:
    """``generate_effect_coeffs``: fog, motion blur, shadow (in groups) and noise."""
    for group in (("fog_amount", "fog_size"), ("motion_blur_angle", "motion_blur_size"),
                  ("shadow_angle", "shadow_distance", "shadow_strength")):
        if any(_has(aug, f) for f in group):
            for f in group:
                c[f] = draw(getattr(aug, f), discount, rng, DEFAULTS[f])
    if _has(aug, "noise"):
        c["noise"] = draw(aug.noise, discount, rng)


def _is_log(name: str) -> bool:
    return abs(DEFAULTS[name]) >= 1e-3


def to_array(c: Coeffs) -> np.ndarray:
    """``coeff_to_array``: float32, log of the fields whose default is not 0."""
    out = np.empty(N_COEFFS, dtype=f32)
    for i, (name, default) in enumerate(COEFF_FIELDS):
        v = f32(c.get(name, default))
        out[i] = v if not _is_log(name) else (f32(math.log(v)) if v > 0 else f32(-math.inf if v == 0 else math.nan))
    return out


def from_array(a: np.ndarray) -> Coeffs:
    """``array_to_coeff``: every field set (exp of the log fields)."""
    a = np.asarray(a, dtype=f32).reshape(-1)
    if a.size != N_COEFFS:
        raise ValueError(f"an augmentation coefficient row has {N_COEFFS} values; received {a.size}")
    return {name: float(f32(math.exp(float(a[i])))) if _is_log(name) else float(a[i])
            for i, (name, _) in enumerate(COEFF_FIELDS)}


def clear_defaults(c: Coeffs) -> Coeffs:
    """``clear_defaults``: fields within 1e-3 of their default are unset."""
    return {k: v for k, v in c.items() if not abs(DEFAULTS[k] - v) < 1e-3}


def discount(schedule: Any, iteration: float) -> float:
    """CoeffScheduleParameter's discount at ``iteration``: ``initial + (final - initial) *
    (2 / (1 + exp(-1.0986 * iteration / half_life)) - 1)``."""
    i0, i1, hl = float(schedule.initial_coeff), float(schedule.final_coeff), float(schedule.half_life)
    return float(f32(i0 + (i1 - i0) * (2.0 / (1.0 + math.exp(-1.0986 * iteration / hl)) - 1.0)))


def trans_matrix(c: Coeffs, cw: int, ch: int, bw: int, bh: int) -> np.ndarray:
    """``tTransMat::fromCoeff`` (float32 ``t0..t5``: ``x_src = t0 x + t2 y + t4``, ``y_src = t1 x + t3 y + t5``)
    from the crop's pixel to the source's; only the fields set in ``c`` apply, as the fork's ``has_``."""
    t = [f32(1), f32(0), f32(0), f32(1), f32(0), f32(0)]

    def left(u0: Any, u1: Any, u2: Any, u3: Any, u4: Any, u5: Any) -> None:
        u = [f32(v) for v in (u0, u1, u2, u3, u4, u5)]
        t0, t1, t2, t3, t4, t5 = t
        t[:] = [t0 * u[0] + t1 * u[2], t0 * u[1] + t1 * u[3], t2 * u[0] + t3 * u[2], t2 * u[1] + t3 * u[3],
                t4 * u[0] + t5 * u[2] + u[4], t4 * u[1] + t5 * u[3] + u[5]]

    if c.get("mirror", 0.0):
        left(-1, 0, 0, 1, 0.5 * cw, -0.5 * ch)
    else:
        left(1, 0, 0, 1, -0.5 * cw, -0.5 * ch)
    if "angle" in c:
        a = c["angle"]
        left(math.cos(a), math.sin(a), -math.sin(a), math.cos(a), 0, 0)
    if "dx" in c or "dy" in c:
        left(1, 0, 0, 1, f32(c.get("dx", 0.0)) * f32(cw), f32(c.get("dy", 0.0)) * f32(ch))
    if "zoom_x" in c or "zoom_y" in c:
        left(1.0 / c.get("zoom_x", 1.0), 0, 0, 1.0 / c.get("zoom_y", 1.0), 0, 0)
    left(1, 0, 0, 1, 0.5 * bw, 0.5 * bh)
    return np.array(t, dtype=f32)


def inverse(m: np.ndarray) -> np.ndarray:
    """``tTransMat::inverse`` in float32."""
    a, b, c, d, e, f = (f32(v) for v in m)
    den = a * d - b * c
    return np.array([d / den, -b / den, -c / den, a / den, (c * f - d * e) / den, (b * e - a * f) / den], dtype=f32)


__all__ = ["CHROMATIC", "COEFF_FIELDS", "DEFAULTS", "EFFECT", "EIGEN", "INDEX", "N_COEFFS", "SPATIAL", "chromatic",
           "clear_defaults", "discount", "draw", "effect", "eigen", "from_array", "gen_families", "inverse",
           "spatial", "to_array", "trans_matrix", "valid_spatial"]
