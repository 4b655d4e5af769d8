"""Loop-by-loop NumPy ports of FlowNet 2.0's augmentation kernels, the reference for the vectorised ones.

lmb-freiburg/flownet2 @ b92e198b, ``src/caffe/layers/data_augmentation_layer.cu`` (SpatialAugmentation,
ComputeChromaticEigenspace + the host step after it, ChromaticEigenAugmentation, ColorContrastAugmentation,
ApplyEffects), ``flow_augmentation_layer.cu`` (WarpData) and ``augmentation_layer_base.cpp``
(tTransMat::leftMultiply / fromCoeff). One CUDA thread = one loop iteration, float32 scalars, flat indices.
"""
from __future__ import annotations

import math

import numpy as np

f = np.float32


def clamp(v, a, b):
    return f(max(f(a), min(f(v), f(b)))) if not math.isnan(v) else f(b)


def left_multiply(t, u):
    t0, t1, t2, t3, t4, t5 = t
    u0, u1, u2, u3, u4, u5 = (f(x) for x in u)
    return [t0 * u0 + t1 * u2, t0 * u1 + t1 * u3, t2 * u0 + t3 * u2, t2 * u1 + t3 * u3,
            t4 * u0 + t5 * u2 + u4, t4 * u1 + t5 * u3 + u5]


def from_coeff(c: dict, width, height, bottomwidth, bottomheight):
    """tTransMat::toIdentity + fromCoeff; ``c`` holds only the fields that are set (``has_``)."""
    t = [f(1), f(0), f(0), f(1), f(0), f(0)]
    if c.get("mirror", 0):
        t = left_multiply(t, (-1, 0, 0, 1, .5 * width, -.5 * height))
    else:
        t = left_multiply(t, (1, 0, 0, 1, -.5 * width, -.5 * height))
    if "angle" in c:
        a = c["angle"]
        t = left_multiply(t, (math.cos(a), math.sin(a), -math.sin(a), math.cos(a), 0, 0))
    if "dx" in c or "dy" in c:
        t = left_multiply(t, (1, 0, 0, 1, f(c.get("dx", 0)) * f(width), f(c.get("dy", 0)) * f(height)))
    if "zoom_x" in c or "zoom_y" in c:
        t = left_multiply(t, (1.0 / c.get("zoom_x", 1), 0, 0, 1.0 / c.get("zoom_y", 1), 0, 0))
    t = left_multiply(t, (1, 0, 0, 1, .5 * bottomwidth, .5 * bottomheight))
    return [f(v) for v in t]


def spatial_augmentation(src, mats, dest_h, dest_w):
    num, channels, height, width = src.shape
    s = src.astype(np.float32).reshape(-1)
    src_count = s.size
    out = np.zeros(num * channels * dest_h * dest_w, dtype=np.float32)
    for index in range(out.size):
        x = index % dest_w
        y = (index // dest_w) % dest_h
        cn = index // dest_w // dest_h
        n = cn // channels
        t = mats[n]
        xpos = f(f(x) * t[0] + f(y) * t[2] + t[4])
        ypos = f(f(x) * t[1] + f(y) * t[3] + t[5])
        xpos = clamp(xpos, 0.0, f(width) - f(1.05))
        ypos = clamp(ypos, 0.0, f(height) - f(1.05))
        tlx, tly = f(math.floor(xpos)), f(math.floor(ypos))
        off = int(width * (height * cn + tly) + tlx)
        tl = s[off]
        tr = s[min(off + 1, src_count - 1)]
        bl = s[min(off + width, src_count - 1)]
        br = s[min(off + 1 + width, src_count - 1)]
        xd, yd = f(xpos - tlx), f(ypos - tly)
        out[index] = ((f(1) - xd) * (f(1) - yd) * tl + xd * yd * br + (f(1) - xd) * yd * bl + xd * (f(1) - yd) * tr)
    return out.reshape(num, channels, dest_h, dest_w)


def color_contrast(src, chrom, max_multiplier):
    """``chrom``: per item dict gamma, brightness, contrast, color (3)."""
    num, _, height, width = src.shape
    d = src.astype(np.float32).reshape(-1).copy()
    for index in range(num * height * width):
        x, y, n = index % width, (index // width) % height, index // width // height
        idx = [width * (height * (3 * n + c) + y) + x for c in range(3)]
        rgb = [f(d[i]) for i in idx]
        mean_in, mean_out = f(0), f(0)
        for c in range(3):
            mean_in = f(mean_in + rgb[c])
            rgb[c] = f(rgb[c] * f(chrom[n]["color"][c]))
            mean_out = f(mean_out + rgb[c])
        bc = f(mean_in / f(mean_out + f(0.01)))
        for c in range(3):
            v = clamp(f(rgb[c] * bc), 0, 1)
            v = f(v ** f(chrom[n]["gamma"]))
            v = f(v + f(chrom[n]["brightness"]))
            v = f(f(0.5) + f(v - f(0.5)) * f(chrom[n]["contrast"]))
            d[idx[c]] = clamp(v, 0, max_multiplier)
    return d.reshape(src.shape)


def eigenspace(src, eigvec):
    """ComputeChromaticEigenspace and the host code after it (serial sums instead of atomics)."""
    num, channels, height, width = src.shape
    d = src.astype(np.float32).reshape(-1)
    ev = [f(v) for v in eigvec]
    mean_rgb, max_abs = [f(0)] * 3, [f(0)] * 3
    for index in range(num * height * width):
        x, y, n = index % width, (index // width) % height, index // width // height
        rgb = [d[((n * channels + c) * width + x) * height + y] for c in range(channels)]
        for c in range(channels):
            eig = f(ev[3 * c] * rgb[0] + ev[3 * c + 1] * rgb[1] + ev[3 * c + 2] * rgb[2])
            max_abs[c] = max(max_abs[c], f(abs(eig)))
            mean_rgb[c] = f(mean_rgb[c] + f(f(rgb[c] / f(width)) / f(height)))
    mean_rgb = [f(m / f(num)) for m in mean_rgb]
    mean_eig = []
    for c in range(3):
        m = f(ev[3 * c] * mean_rgb[0] + ev[3 * c + 1] * mean_rgb[1] + ev[3 * c + 2] * mean_rgb[2])
        mean_eig.append(f(m / max_abs[c]) if max_abs[c] > 1e-2 else m)
    max_l = f(math.sqrt(max_abs[0] ** 2 + max_abs[1] ** 2 + max_abs[2] ** 2))
    return {"mean_rgb": mean_rgb, "max_abs_eig": max_abs, "mean_eig": mean_eig, "max_l": max_l, "eigvec": ev}


def _cs(p, v):
    return f(math.copysign(abs(float(v)) ** float(p), float(v)))


def chromatic_eigen(src, coeffs, eigen, max_multiplier):
    """``coeffs``: per item dict of the 22 eigen coefficient names."""
    num, channels, height, width = src.shape
    d = src.astype(np.float32).reshape(-1).copy()
    ev, ma, ml = eigen["eigvec"], eigen["max_abs_eig"], eigen["max_l"]
    for index in range(num * height * width):
        x, y, n = index % width, (index // width) % height, index // width // height
        k = {a: f(b) for a, b in coeffs[n].items()}
        rgb = [f(d[((n * channels + c) * width + x) * height + y] - eigen["mean_rgb"][c]) for c in range(3)]
        eig = [f(0)] * 3
        for c in range(3):
            eig[c] = f(ev[3 * c] * rgb[0] + ev[3 * c + 1] * rgb[1] + ev[3 * c + 2] * rgb[2])
            if ma[c] > f(1e-2):
                eig[c] = f(eig[c] / ma[c])
                eig[c] = _cs(k[f"pow_nomean{c}"], eig[c])
                eig[c] = f(eig[c] + k[f"add_nomean{c}"])
                eig[c] = f(eig[c] * k[f"mult_nomean{c}"])
        eig = [f(eig[c] + eigen["mean_eig"][c]) for c in range(3)]
        if ma[0] > f(1e-2):
            eig[0] = _cs(k["pow_withmean0"], eig[0])
            eig[0] = f(f(eig[0] + k["add_withmean0"]) * k["mult_withmean0"])
        s = f(math.sqrt(eig[1] * eig[1] + eig[2] * eig[2]))
        s1 = s
        if s > f(1e-2):
            s1 = f(float(s1) ** float(k["pow_withmean1"]))
            s1 = f(max(f(s1 + k["add_withmean1"]), f(0)))
            s1 = f(s1 * k["mult_withmean1"])
        if k["col_angle"] != 0:
            a = k["col_angle"]
            t1 = f(f(math.cos(a)) * eig[1] - f(math.sin(a)) * eig[2])
            t2 = f(f(math.sin(a)) * eig[1] + f(math.cos(a)) * eig[2])
            eig[1], eig[2] = t1, t2
        for c in range(3):
            if ma[c] > f(1e-2):
                eig[c] = f(eig[c] * ma[c])
        l1 = f(0)
        if ml > f(1e-2):
            l1 = f(f(math.sqrt(eig[0] ** 2 + eig[1] ** 2 + eig[2] ** 2)) / ml)
        if s > f(1e-2):
            eig[1] = f(f(eig[1] / s) * s1)
            eig[2] = f(f(eig[2] / s) * s1)
        if ml > f(1e-2):
            ln = f(math.sqrt(eig[0] ** 2 + eig[1] ** 2 + eig[2] ** 2))
            l1 = f(float(l1) ** float(k["lmult_pow"]))
            v = f(l1 + k["lmult_add"])
            l1 = v if v > 0 else f(0)
            l1 = f(f(l1 * k["lmult_mult"]) * ml)
            if ln > f(1e-2):
                for c in range(3):
                    eig[c] = f(f(eig[c] / ln) * l1)
                    if eig[c] > ma[c]:
                        eig[c] = ma[c]
        for c in range(3):
            v = f(ev[c] * eig[0] + ev[3 + c] * eig[1] + ev[6 + c] * eig[2])
            v = v if v < f(max_multiplier) else f(max_multiplier)
            v = v if v > 0 else f(0)
            d[((n * channels + c) * width + x) * height + y] = v
    return d.reshape(src.shape)


def apply_effects(src, eff, max_multiplier):
    """``eff``: per item (shadow_angle, shadow_distance, shadow_strength)."""
    num, channels, height, width = src.shape
    d = src.astype(np.float32).reshape(-1).copy()
    for index in range(d.size):
        x, y = index % width, (index // width) % height
        n = index // width // height // channels
        ang, dist, strength = eff[n]
        nx, ny = f(math.cos(ang)), f(math.sin(ang))
        v = d[index]
        if f((x - width // 2) * nx + (y - height // 2) * ny - f(dist)) > 0:
            v = f(v - f(strength))
        d[index] = clamp(v, 0, max_multiplier)
    return d.reshape(src.shape)


def warp_data(src, m1, m2, dest_h, dest_w):
    """WarpData: ``m1`` image 1's matrices, ``m2`` the inverses of image 2's (lists of 6 float32)."""
    num, _, height, width = src.shape
    s = src.astype(np.float32).reshape(-1)
    count = s.size
    out = np.zeros(num * 2 * dest_h * dest_w, dtype=np.float32)
    for index in range(num * dest_h * dest_w):
        x, y, n = f(index % dest_w), f((index // dest_w) % dest_h), index // dest_w // dest_h
        a, b = m1[n], m2[n]
        xp1 = f(x * a[0] + y * a[2] + a[4])
        yp1 = f(x * a[1] + y * a[3] + a[5])
        ox = width * (height * (2 * n + 0) + int(yp1 + f(0.5))) + int(xp1 + f(0.5))
        oy = width * (height * (2 * n + 1) + int(yp1 + f(0.5))) + int(xp1 + f(0.5))
        xp2 = f(xp1 + s[min(max(ox, 0), count - 1)])
        yp2 = f(yp1 + s[min(max(oy, 0), count - 1)])
        xp3 = f(xp2 * b[0] + yp2 * b[2] + b[4])
        yp3 = f(xp2 * b[1] + yp2 * b[3] + b[5])
        out[dest_w * (dest_h * (2 * n + 0) + int(y)) + int(x)] = xp3 - x
        out[dest_w * (dest_h * (2 * n + 1) + int(y)) + int(x)] = yp3 - y
    return out.reshape(num, 2, dest_h, dest_w)
