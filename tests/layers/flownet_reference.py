"""Loop-by-loop NumPy ports of the FlowNet 2.0 layers (lmb-freiburg/flownet2 @ b92e198b56b0e52e1ba0a5a98dc0e39fa5ae70cc)
and PWC-Net's Warp (NVlabs/PWC-Net @ 07df6eb, ``Caffe/warping_code/warp_layer.cu``), independent of
``neocaffe.layers.flownet*``. One function per kernel: flat arrays, the kernels' index arithmetic and their float32
(``float``) geometry. Where a kernel reads outside its buffer (Correlation1D ``single_direction: -1``, marked),
the port reads 0, as neocaffe does.

Sources: ``src/caffe/layers/correlation_layer.cu`` (CorrelateData, CorrelateDataBackward0/1, CorrelateDataSubtract,
CorrelateDataBackward0Subtract/1Subtract), ``correlation_layer1d.cu`` (the same with x_shift), ``channel_norm_layer.cpp``,
``resample_layer.cu`` (InterpolationKernel, NearestNeighborKernel), ``flow_warp_layer.cpp``, ``downsample_layer.cu``
(DownsampleFeatures), ``accum_layer.cpp``, ``mean_layer.cpp``, ``neg_relu_layer.cpp``, ``l1loss_layer.cu``,
``lpq_loss_layer.cu`` with ``power_layer.cpp``.
"""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


# -- Correlation / Correlation1D ------------------------------------------------------------------------------------
def _rearrange(x, pad_h, pad_w):
    """blob_rearrange_kernel2: NCHW -> zero-padded NHWC."""
    n, c, h, w = x.shape
    out = np.zeros((n, h + 2 * pad_h, w + 2 * pad_w, c), dtype=x.dtype)
    for i in range(n):
        for ch in range(c):
            for xy in range(h * w):
                out[i, xy // w + pad_h, xy % w + pad_w, ch] = x[i, ch, xy // w, xy % w]
    return out


def _at(buf, i, y, x, ch):
    """One element of a rearranged blob; outside the row reads 0 (the marked Correlation1D case)."""
    if 0 <= y < buf.shape[1] and 0 <= x < buf.shape[2]:
        return buf[i, y, x, ch]
    return buf.dtype.type(0)


def corr_params(shape, p, one_d):
    """The Reshape arithmetic and the Forward_gpu setup (x_shift) of either layer; p: dict of the fields."""
    n, c, h, w = shape
    k, md, pad, s1, s2 = p["kernel_size"], p["max_displacement"], p.get("pad", 0), p.get("stride_1", 1), p.get("stride_2", 1)
    kr = (k - 1) // 2
    border = md + kr
    if one_d:
        ph, pw = h, w + 2 * pad
        th = int(math.ceil(f32(ph - kr * 2) / f32(s1)))
    else:
        ph, pw = h + 2 * pad, w + 2 * pad
        th = int(math.ceil(f32(ph - border * 2) / f32(s1)))
    tw = int(math.ceil(f32(pw - border * 2) / f32(s1)))
    rad = md // s2
    sd = p.get("single_direction", 0) if one_d else 0
    gw = rad + 1 if sd != 0 else 2 * rad + 1
    x_shift = -gw if sd == -1 else (0 if sd == 1 else -rad)
    tc = gw if one_d else gw * gw
    return dict(k=k, kr=kr, md=md, pad=pad, s1=s1, s2=s2, th=th, tw=tw, tc=tc, gw=gw, rad=rad, x_shift=x_shift,
                ph=ph, pw=pw, n=n, c=c, h=h, w=w, one_d=one_d)


def _offsets(g, top_channel):
    if g["one_d"]:
        return 0, (top_channel % g["gw"] + g["x_shift"]) * g["s2"]
    return ((top_channel // g["gw"] - g["rad"]) * g["s2"], (top_channel % g["gw"] - g["rad"]) * g["s2"])


def corr_forward(b0, b1, p, one_d=False, subtract=False):
    g = corr_params(b0.shape, p, one_d)
    pad_h = 0 if one_d else g["pad"]
    r0, r1 = _rearrange(b0, pad_h, g["pad"]), _rearrange(b1, pad_h, g["pad"])
    top = np.zeros((g["n"], g["tc"], g["th"], g["tw"]), dtype=b0.dtype)
    k, kr, md, c = g["k"], g["kr"], g["md"], g["c"]
    sumelems = f32(k * k * c) if not subtract else f32((2 * kr + 1) * (2 * kr + 1) * c)
    for item in range(g["n"]):
        for y in range(g["th"]):
            for x in range(g["tw"]):
                x1 = x * g["s1"] + md
                y1 = y * g["s1"] + (0 if one_d else md)
                for tcn in range(g["tc"]):
                    s2p, s2o = _offsets(g, tcn)
                    total = b0.dtype.type(0)
                    for j in range(k):
                        for i in range(k):
                            for ch in range(c):
                                v0 = _at(r0, item, y1 + j, x1 + i, ch)
                                v1 = _at(r1, item, y1 + s2p + j, x1 + s2o + i, ch)
                                total += abs(v0 - v1) if subtract else v0 * v1
                    top[item, tcn, y, x] = total / sumelems
    return top


def _ceil_div(v, s1):
    """The kernels' ROUND_OFF trick: ceil(v / s1) for negative v too."""
    ro = 50000
    return (v + ro * s1 - 1) // s1 + 1 - ro


def _floor_div(v, s1):
    ro = 50000
    return (v + ro * s1) // s1 - ro


def corr_backward(b0, b1, top_diff, p, one_d=False, subtract=False):
    """CorrelateDataBackward0/1 (or the Subtract forms) for every item; returns (diff0, diff1) in NCHW."""
    g = corr_params(b0.shape, p, one_d)
    pad_h = 0 if one_d else g["pad"]
    r0, r1 = _rearrange(b0, pad_h, g["pad"]), _rearrange(b1, pad_h, g["pad"])
    n, c, h, w = b0.shape
    d0, d1 = np.zeros_like(b0), np.zeros_like(b1)
    kr, md, s1, th, tw = g["kr"], g["md"], g["s1"], g["th"], g["tw"]
    ymd = 0 if one_d else md
    sumelems = f32((2 * kr + 1) * (2 * kr + 1) * c)
    for item in range(n):
        for ch in range(c):
            for mm in range(h):
                for ll in range(w):
                    m, l = mm + pad_h, ll + g["pad"]
                    # bottom 0
                    s = b0.dtype.type(0)
                    xmin, ymin = _ceil_div(l - 2 * kr - md, s1), _ceil_div(m - 2 * kr - ymd, s1)
                    xmax, ymax = _floor_div(l - md, s1), _floor_div(m - ymd, s1)
                    if xmax >= 0 and ymax >= 0 and xmin <= tw - 1 and ymin <= th - 1:
                        xmin, xmax, ymin, ymax = max(0, xmin), min(tw - 1, xmax), max(0, ymin), min(th - 1, ymax)
                        for tcn in range(g["tc"]):
                            s2p, s2o = _offsets(g, tcn)
                            if subtract:
                                v0 = _at(r0, item, m + s2p, l + s2o, ch)
                                v1 = _at(r1, item, m + s2p, l + s2o, ch)
                                f = 1.0 if v0 >= v1 else -1.0
                            else:
                                f = _at(r1, item, m + s2p, l + s2o, ch)
                            for yy in range(ymin, ymax + 1):
                                for xx in range(xmin, xmax + 1):
                                    s += top_diff[item, tcn, yy, xx] * f
                    d0[item, ch, mm, ll] = s / sumelems
                    # bottom 1
                    s = b0.dtype.type(0)
                    for tcn in range(g["tc"]):
                        s2p, s2o = _offsets(g, tcn)
                        xmin, ymin = _ceil_div(l - 2 * kr - md - s2o, s1), _ceil_div(m - 2 * kr - ymd - s2p, s1)
                        xmax, ymax = _floor_div(l - md - s2o, s1), _floor_div(m - ymd - s2p, s1)
                        if xmax >= 0 and ymax >= 0 and xmin <= tw - 1 and ymin <= th - 1:
                            xmin, xmax, ymin, ymax = max(0, xmin), min(tw - 1, xmax), max(0, ymin), min(th - 1, ymax)
                            if subtract:
                                v0 = _at(r0, item, m - s2p, l - s2o, ch)
                                v1 = _at(r1, item, m - s2p, l - s2o, ch)
                                f = -1.0 if v0 >= v1 else 1.0
                            else:
                                f = _at(r0, item, m - s2p, l - s2o, ch)
                            for yy in range(ymin, ymax + 1):
                                for xx in range(xmin, xmax + 1):
                                    s += top_diff[item, tcn, yy, xx] * f
                    d1[item, ch, mm, ll] = s / sumelems
    return d0, d1


# -- ChannelNorm -------------------------------------------------------------------------------------------------
def channel_norm_forward(x):
    n, c, h, w = x.shape
    top = np.zeros((n, 1, h, w), dtype=x.dtype)
    for i in range(n):
        for xx in range(w):
            for y in range(h):
                norm = x.dtype.type(0)
                for ch in range(c):
                    norm += x[i, ch, y, xx] * x[i, ch, y, xx]
                top[i, 0, y, xx] = np.sqrt(norm)
    return top


def channel_norm_backward(x, top, top_diff):
    d = np.zeros_like(x)
    n, c, h, w = x.shape
    for i in range(n):
        for xx in range(w):
            for y in range(h):
                for ch in range(c):
                    d[i, ch, y, xx] = top_diff[i, 0, y, xx] * x[i, ch, y, xx] / (top[i, 0, y, xx] + 1e-9)
    return d


# -- Resample (CUDA kernels) ---------------------------------------------------------------------------------------
def _round(v):
    """CUDA round(): half away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _cubic(x):
    x = abs(x)
    if x <= 1.0:
        return x * x * (f32(1.5) * x - f32(2.5)) + f32(1.0)
    if x < 2.0:
        return x * (x * (f32(-0.5) * x + f32(2.5)) - f32(4.0)) + f32(2.0)
    return f32(0.0)


def _triangle(x):
    if -1 <= x < 0:
        return x + f32(1)
    if 0 <= x <= 1:
        return f32(1) - x
    return f32(0)


def resample_forward(x, out_h, out_w, kind="LINEAR", antialias=True):
    n, c, h, w = x.shape
    fx, fy = f32(w) / f32(out_w), f32(h) / f32(out_h)
    top = np.zeros((n, c, out_h, out_w), dtype=x.dtype)
    flat = x.reshape(n * c, h, w)
    if kind == "NEAREST":
        for cc in range(n * c):
            for yo in range(out_h):
                for xo in range(out_w):
                    xi = f32(xo) * fx + fy / f32(2) - f32(0.5)
                    yi = f32(yo) * fy + fx / f32(2) - f32(0.5)
                    # the kernel's flat read: a column past the row reads the next row's pixel; past the blob
                    # (where the fork reads outside it) clamped to the blob, as neocaffe
                    k = min(max(cc * h * w + _round(yi) * w + _round(xi), 0), x.size - 1)
                    top.reshape(n * c, out_h, out_w)[cc, yo, xo] = x.reshape(-1)[k]
        return top
    cubic = kind == "CUBIC"
    kw = 4 if cubic else 2
    aa = ((fx > 1) or (fy > 1)) and antialias
    ax = f32(1) / (fx if aa else f32(1))
    ay = f32(1) / (fy if aa else f32(1))
    rx = 2 if fx < 1 else int(math.ceil(f32(kw) / ax))
    ry = 2 if fy < 1 else int(math.ceil(f32(kw) / ay))
    coeff = _cubic if cubic else _triangle
    out = top.reshape(n * c, out_h, out_w)
    for cc in range(n * c):
        for yo in range(out_h):
            for xo in range(out_w):
                xi = f32(xo) * fx + fy / f32(2) - f32(0.5)
                yi = f32(yo) * fy + fx / f32(2) - f32(0.5)
                xr, yr = _round(xi), _round(yi)
                s, ws = x.dtype.type(0), x.dtype.type(0)
                for yy in range(yr - ry, yr + ry + 1):
                    for xx in range(xr - rx, xr + rx + 1):
                        if yy < 0 or xx < 0 or yy >= h or xx >= w:
                            continue
                        dx, dy = f32(xi - f32(xx)), f32(yi - f32(yy))
                        wt = f32(ax * coeff(f32(ax * dx))) * f32(ay * coeff(f32(ay * dy)))
                        s += x.dtype.type(wt) * flat[cc, yy, xx]
                        ws += x.dtype.type(wt)
                out[cc, yo, xo] = 0 if ws == 0 else s / ws
    return top


# -- FlowWarp (CPU) -------------------------------------------------------------------------------------------------
def flow_warp_forward(img, flow, nan_fill=False):
    n, c, h, w = img.shape
    out = np.zeros_like(img)
    fill = np.nan if nan_fill else 0
    for i in range(n):
        for x in range(w):
            for y in range(h):
                x2 = f32(x) + f32(flow[i, 0, y, x])
                y2 = f32(y) + f32(flow[i, 1, y, x])
                if x2 >= 0 and y2 >= 0 and x2 < w and y2 < h:
                    xl, yt = int(x2), int(y2)
                    xr, yb = min(xl + 1, w - 1), min(yt + 1, h - 1)
                    al, be = f32(x2 - xl), f32(y2 - yt)
                    for ch in range(c):
                        out[i, ch, y, x] = ((1 - al) * (1 - be) * img[i, ch, yt, xl] + al * (1 - be) * img[i, ch, yt, xr]
                                            + (1 - al) * be * img[i, ch, yb, xl] + al * be * img[i, ch, yb, xr])
                else:
                    out[i, :, y, x] = fill
    return out


def flow_warp_backward(img, flow, top_diff):
    """Backward_cpu, with the flow diff of out-of-image pixels 0 (Backward_gpu's cudaMemset)."""
    n, c, h, w = img.shape
    di, df = np.zeros_like(img), np.zeros_like(flow)
    for i in range(n):
        for x in range(w):
            for y in range(h):
                x2 = f32(x) + f32(flow[i, 0, y, x])
                y2 = f32(y) + f32(flow[i, 1, y, x])
                if x2 >= 0 and y2 >= 0 and x2 < w and y2 < h:
                    xl, yt = int(x2), int(y2)
                    xr, yb = min(xl + 1, w - 1), min(yt + 1, h - 1)
                    al, be = f32(x2 - xl), f32(y2 - yt)
                    for ch in range(c):
                        t = top_diff[i, ch, y, x]
                        di[i, ch, yt, xl] += t * (1 - al) * (1 - be)
                        di[i, ch, yt, xr] += t * al * (1 - be)
                        di[i, ch, yb, xl] += t * (1 - al) * be
                        di[i, ch, yb, xr] += t * al * be
                    gam = f32(yb - y2)
                    s = 0.0
                    for ch in range(c):
                        tmp = gam * (img[i, ch, yt, xr] - img[i, ch, yt, xl]) + (1 - gam) * (img[i, ch, yb, xr] - img[i, ch, yb, xl])
                        s += top_diff[i, ch, y, x] * tmp
                    df[i, 0, y, x] = s
                    gam = f32(xr - x2)
                    s = 0.0
                    for ch in range(c):
                        tmp = gam * (img[i, ch, yb, xl] - img[i, ch, yt, xl]) + (1 - gam) * (img[i, ch, yb, xr] - img[i, ch, yt, xr])
                        s += top_diff[i, ch, y, x] * tmp
                    df[i, 1, y, x] = s
    return di, df


# -- PWC-Net Warp (CUDA) ------------------------------------------------------------------------------------------
def warp_forward(u, flow, oh, ow):
    n, c, h, w = u.shape
    v = np.zeros((n, c, oh, ow), dtype=u.dtype)
    for i in range(n):
        for j in range(c):
            for s in range(oh):
                for t in range(ow):
                    x = t + flow[i, 0, s, t]
                    y = s + flow[i, 1, s, t]
                    if 0 <= x <= w - 1 and 0 <= y <= h - 1:
                        fx, fy, cx, cy = math.floor(x), math.floor(y), math.ceil(x), math.ceil(y)
                        ax, ay = x - fx, y - fy
                        pic = u[i, j]
                        v[i, j, s, t] = ((1 - ax) * (1 - ay) * pic[fy, fx] + ax * (1 - ay) * pic[fy, cx]
                                         + (1 - ax) * ay * pic[cy, fx] + ax * ay * pic[cy, cx])
    return v


def warp_backward(u, flow, dv):
    n, c, h, w = u.shape
    oh, ow = dv.shape[2:]
    du, dflow = np.zeros_like(u), np.zeros_like(flow)
    for i in range(n):
        for j in range(c):
            pic = u[i, j]
            for s in range(oh):
                for t in range(ow):
                    x = t + flow[i, 0, s, t]
                    y = s + flow[i, 1, s, t]
                    if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                        continue
                    fx, fy, cx, cy = math.floor(x), math.floor(y), math.ceil(x), math.ceil(y)
                    ax, ay = x - fx, y - fy
                    g = dv[i, j, s, t]
                    dflow[i, 0, s, t] += ((1 - ay) * pic[fy, cx] - (1 - ay) * pic[fy, fx] + ay * pic[cy, cx] - ay * pic[cy, fx]) * g
                    dflow[i, 1, s, t] += ((1 - ax) * pic[cy, fx] - (1 - ax) * pic[fy, fx] + ax * pic[cy, cx] - ax * pic[fy, cx]) * g
                    if fx == cx:
                        tl = bl = tr = br = 0.0
                        if fx - 1 >= 0:
                            tl, bl = pic[fy, fx] - pic[fy, fx - 1], pic[cy, fx] - pic[cy, fx - 1]
                        if fx + 1 <= w - 1:
                            tr, br = pic[fy, fx + 1] - pic[fy, fx], pic[cy, fx + 1] - pic[cy, fx]
                        dflow[i, 0, s, t] += ((1 - ay) * (tr + tl) / 2.0 + ay * (br + bl) / 2.0) * g
                    if fy == cy:
                        tl = tr = bl = br = 0.0
                        if fy - 1 >= 0:
                            tl, tr = pic[fy, fx] - pic[fy - 1, fx], pic[fy, cx] - pic[fy - 1, cx]
                        if fy + 1 <= h - 1:
                            bl, br = pic[fy + 1, fx] - pic[fy, fx], pic[fy + 1, cx] - pic[fy, cx]
                        dflow[i, 1, s, t] += ((1 - ax) * (bl + tl) / 2.0 + ax * (br + tr) / 2.0) * g
                    du[i, j, fy, fx] += (1 - ax) * (1 - ay) * g
                    du[i, j, fy, cx] += ax * (1 - ay) * g
                    du[i, j, cy, fx] += (1 - ax) * ay * g
                    du[i, j, cy, cx] += ax * ay * g
    return du, dflow


# -- Downsample (CUDA) --------------------------------------------------------------------------------------------
def downsample_forward(x, th, tw):
    n, c, bh, bw = x.shape
    if bh == th and bw == tw:
        return x.copy()
    ws, hs = f32(bw - 1) / f32(tw - 1), f32(bh - 1) / f32(th - 1)
    wr, hr = int(math.ceil(ws)), int(math.ceil(hs))
    top = np.zeros((n, c, th, tw), dtype=x.dtype)
    for i in range(n):
        for ch in range(c):
            for dy in range(th):
                for dx in range(tw):
                    botx = f32(f32(dx) / f32(tw - 1)) * f32(bw - 1)
                    boty = f32(f32(dy) / f32(th - 1)) * f32(bh - 1)
                    ix, iy = _round(botx), _round(boty)
                    val = wsum = nan = f32(0)
                    for yo in range(-hr, hr + 1):
                        by = iy + yo
                        for xo in range(-wr, wr + 1):
                            bx = ix + xo
                            if 0 <= bx < bw and 0 <= by < bh:
                                smp = f32(x[i, ch, by, bx])
                                wt = f32(max(f32(0), f32(1) - f32(abs(f32(bx) - botx) / ws))
                                         * max(f32(0), f32(1) - f32(abs(f32(by) - boty) / hs)))
                                if smp != smp:
                                    nan += wt
                                    smp = f32(0)
                                    wt = f32(0)
                                val += smp * wt
                                wsum += wt
                    with np.errstate(divide="ignore", invalid="ignore"):
                        top[i, ch, dy, dx] = np.nan if nan / wsum > 0.5 else val / wsum
    return top


# -- Accum (CPU) ---------------------------------------------------------------------------------------------------
def accum_forward(bottoms, th, tw):
    outs = []
    for b in bottoms:
        n, c, bh, bw = b.shape
        flat = b.reshape(-1)
        count = flat.size
        o = np.zeros((n, c, th, tw), dtype=b.dtype)
        for i in range(n):
            for ch in range(c):
                cn = i * c + ch
                for hh in range(th):
                    for ww in range(tw):
                        xpos = f32(f32(ww) / f32(tw - 1)) * f32(bw - 1)
                        ypos = f32(f32(hh) / f32(th - 1)) * f32(bh - 1)
                        tlx, tly = math.floor(xpos), math.floor(ypos)
                        off = bw * (bh * cn + tly) + tlx
                        get = (lambda k: flat[k] if k < count else b.dtype.type(0))  # index == count: weight 0
                        xd, yd = f32(xpos - tlx), f32(ypos - tly)
                        o[i, ch, hh, ww] = ((1 - xd) * (1 - yd) * flat[off] + xd * yd * get(min(off + 1 + bw, count))
                                            + (1 - xd) * yd * get(min(off + bw, count)) + xd * (1 - yd) * get(min(off + 1, count)))
        outs.append(o)
    return np.concatenate(outs, 1)


def accum_backward(bottoms, top_diff):
    th, tw = top_diff.shape[2:]
    diffs, c0 = [], 0
    for b in bottoms:
        n, c, bh, bw = b.shape
        d = np.zeros(b.size, dtype=b.dtype)
        count = b.size
        for i in range(n):
            for ch in range(c):
                cn = i * c + ch
                for hh in range(th):
                    for ww in range(tw):
                        xpos = f32(f32(ww) / f32(tw - 1)) * f32(bw - 1)
                        ypos = f32(f32(hh) / f32(th - 1)) * f32(bh - 1)
                        tlx, tly = math.floor(xpos), math.floor(ypos)
                        off = bw * (bh * cn + tly) + tlx
                        xd, yd = f32(xpos - tlx), f32(ypos - tly)
                        t = top_diff[i, c0 + ch, hh, ww]
                        d[off] += (1 - xd) * (1 - yd) * t
                        if tlx + 1 < bw:
                            d[min(off + 1, count)] += xd * (1 - yd) * t
                        if tly + 1 < bh:
                            d[min(off + bw, count)] += (1 - xd) * yd * t
                        if tlx + 1 < bw and tly + 1 < bh:
                            d[min(off + 1 + bw, count)] += xd * yd * t
        diffs.append(d.reshape(b.shape))
        c0 += c
    return diffs


# -- Mean, NegReLU ------------------------------------------------------------------------------------------------
def mean_forward(x, values, subtract, input_scale=1.0, mean_scale=1.0, output_scale=1.0, mean_blob=None):
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    dim = c * h * w
    flat, o = x.reshape(n, dim), out.reshape(n, dim)
    for i in range(n):
        for j in range(dim):
            if mean_blob is not None:
                m = mean_blob.reshape(-1)[j % mean_blob.size]
            else:
                m = values[(j // (h * w)) % len(values)]
            m = -m if subtract else m
            o[i, j] = output_scale * (input_scale * flat[i, j] + mean_scale * m)
    return out


def neg_relu(x, slope, top_diff):
    y, d = np.zeros_like(x), np.zeros_like(x)
    for i, v in np.ndenumerate(x):
        y[i] = min(v, 0) + slope * max(v, 0)
        d[i] = top_diff[i] * ((v < 0) + slope * (v >= 0))
    return y, d


# -- Caffe's PowerLayer (the losses' inner layers) ----------------------------------------------------------------
def power_forward(x, power, scale=1.0, shift=0.0):
    if power * scale == 0:
        return np.full_like(x, 1.0 if power == 0 else shift ** power)
    t = x * scale + shift if (scale != 1 or shift != 0) else x.copy()
    return t ** power if power != 1 else t


def power_backward(x, y, top_diff, power, scale=1.0, shift=0.0):
    ds = power * scale
    if ds == 0 or power == 1:
        d = np.full_like(x, ds)
    elif power == 2:
        d = ds * scale * x + (ds * shift if shift != 0 else 0)
    elif shift == 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = power * (y / x)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = y / (x * scale + shift) * ds
    return d * top_diff if ds != 0 else d


# -- L1Loss (CUDA) ------------------------------------------------------------------------------------------------
def l1_loss(b0, b1, p, top_diff=1.0):
    """Forward_gpu and Backward_gpu; returns (loss, diff wrt b0) (b1 gets the negative)."""
    diff = (b0 - b1) if b1 is not None else b0.copy()
    n, c = diff.shape[:2]
    mask = (diff == diff).astype(diff.dtype)
    coeff = (mask * mask).sum() / c if p.get("normalize_by_num_entries") else n
    plateau = p.get("plateau", 0.0)
    alpha = top_diff / coeff
    if p.get("l2_per_location"):
        diff = np.where(mask > 0.5, diff, 0)
        sq = power_forward(diff, 2.0)
        # the 1x1 Convolution's constant filler value: a float proto field, so float32 1 / C in either Dtype
        wgt = diff.dtype.type(f32(1) / f32(c)) if p.get("l2_prescale_by_channels") else diff.dtype.type(1)
        ssum = (sq * wgt).sum(1, keepdims=True)
        pl = np.ones_like(ssum)
        if plateau > 0:
            pl = (np.abs(ssum) >= plateau * plateau).astype(ssum.dtype)
            ssum = np.where(pl > 0.5, ssum, 0)
        eps = p.get("epsilon", float(f32(0.01)))
        root = power_forward(ssum, 0.5, 1.0, eps)
        loss = root.sum() / coeff
        dsum = power_backward(ssum, root, np.full_like(root, alpha), 0.5, 1.0, eps)
        dsum = np.where(pl > 0.5, dsum, 0)
        dsq = np.broadcast_to(dsum * wgt, diff.shape)
        ddiff = power_backward(diff, sq, dsq, 2.0)
    else:
        if plateau > 0:
            mask = np.where(np.abs(diff) < plateau, 0, mask)
        diff = np.where(mask > 0.5, diff, 0)
        sign = np.where(diff > 0, 1.0, -1.0).astype(diff.dtype)
        loss = (diff * sign).sum() / coeff
        ddiff = alpha * sign
    ddiff = np.where(mask > 0.5, ddiff, 0)
    return loss, ddiff


def lpq_loss(b0, b1, p, q, pe, qe, prescale=False, by_entries=False, top_diff=1.0):
    diff = (b0 - b1) if b1 is not None else b0.copy()
    n, c = diff.shape[:2]
    mask = (diff == diff).astype(diff.dtype)
    coeff = (mask * mask).sum() / c if by_entries else n
    diff = np.where(mask > 0.5, diff, 0)
    sign = np.where(diff > 0, 1.0, -1.0).astype(diff.dtype)
    a = diff * sign
    pout = power_forward(a, p, 1.0, pe)
    wgt = diff.dtype.type(f32(1) / f32(c) if prescale else 1.0)
    ssum = (pout * wgt).sum(1, keepdims=True)
    qout = power_forward(ssum, q, 1.0, qe)
    loss = qout.sum() / coeff
    alpha = top_diff / coeff
    dsum = power_backward(ssum, qout, np.full_like(qout, alpha), q, 1.0, qe)
    dp = np.broadcast_to(dsum * wgt, a.shape)
    da = power_backward(a, pout, dp, p, 1.0, pe)
    ddiff = np.where(mask > 0.5, da * sign, 0)
    return loss, ddiff
