"""DeformableConvolution (unsky/Deformable-ConvNets-caffe @ e0f7abd) against NumPy loop ports of the fork's
``deformable_im2col.cu`` kernels (im2col, col2im, col2im_coord) and its ``Backward_gpu`` GEMMs, float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


# -- loop ports of the fork's kernels (one image) -------------------------------------------------
def _bilinear(im, base, data_width, height, width, h, w):
    """deformable_im2col_bilinear on ``im`` (flat) from the shifted pointer ``base``."""
    h_low, w_low = math.floor(h), math.floor(w)
    if h_low >= height - 1:
        h_high = h_low = height - 1
        h = float(h_low)
    else:
        h_high = h_low + 1
    if w_low >= width - 1:
        w_high = w_low = width - 1
        w = float(w_low)
    else:
        w_high = w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    v1 = im[base + h_low * data_width + w_low]
    v2 = im[base + h_low * data_width + w_high]
    v3 = im[base + h_high * data_width + w_low]
    v4 = im[base + h_high * data_width + w_high]
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def _geom(H, W, g):
    kh, kw, ph, pw, sh, sw, dh, dw = g
    return (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1, (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1


def im2col_port(x, off, g, dg):
    kh, kw, ph, pw, sh, sw, dh, dw = g
    C, H, W = x.shape
    hc, wc = _geom(H, W, g)
    offf, cpg = off.reshape(-1), C // dg
    col = np.zeros(C * kh * kw * hc * wc)
    for c_im in range(C):
        im = x[c_im].reshape(-1)
        for h_col in range(hc):
            for w_col in range(wc):
                dgi = c_im // cpg
                h_in, w_in = h_col * sh - ph, w_col * sw - pw
                ob = dgi * 2 * kh * kw * hc * wc
                for i in range(kh):
                    for j in range(kw):
                        oh = offf[ob + ((2 * (i * kw + j)) * hc + h_col) * wc + w_col]
                        ow = offf[ob + ((2 * (i * kw + j) + 1) * hc + h_col) * wc + w_col]
                        h_im, w_im = h_in + i * dh + oh, w_in + j * dw + ow
                        val = 0.0
                        if h_im >= 0 and w_im >= 0 and h_im < H and w_im < W:
                            val = _bilinear(im, h_in * W + w_in, W, H - h_in, W - w_in, i * dh + oh, j * dw + ow)
                        col[((c_im * kh * kw + i * kw + j) * hc + h_col) * wc + w_col] = val
    return col.reshape(C * kh * kw, hc * wc)


def _gradient_weight(ah, aw, h, w, H, W):
    if ah < 0 or ah > H or aw < 0 or aw > W:
        return 0.0
    ah, aw = max(ah, 0.0), max(aw, 0.0)
    hl, wl = int(ah), int(aw)
    if hl >= H - 1:
        hh = hl = H - 1
        ah = float(hl)
    else:
        hh = hl + 1
    if wl >= W - 1:
        wh = wl = W - 1
        aw = float(wl)
    else:
        wh = wl + 1
    if h == hl:
        if w == wl:
            return (h + 1 - ah) * (w + 1 - aw)
        if w == wh:
            return (h + 1 - ah) * (aw + 1 - w)
    elif h == hh:
        if w == wl:
            return (ah + 1 - h) * (w + 1 - aw)
        if w == wh:
            return (ah + 1 - h) * (aw + 1 - w)
    return 0.0


def col2im_port(col, off, shape, g, dg):
    """deformable_col2im over every column (the fork launches C*kh*kw threads only: see the layer's docs)."""
    kh, kw, ph, pw, sh, sw, dh, dw = g
    C, H, W = shape
    hc, wc = _geom(H, W, g)
    colf, offf, cpg = col.reshape(-1), off.reshape(-1), C // dg
    grad = np.zeros(C * H * W)
    for index in range(C * kh * kw * hc * wc):
        j = (index // wc // hc) % kw
        i = (index // wc // hc // kw) % kh
        c = index // wc // hc // kw // kh
        dgi = c // cpg
        w_out, h_out = index % wc, (index // wc) % hc
        w_in, h_in = w_out * sw - pw, h_out * sh - ph
        ob = dgi * 2 * kh * kw * hc * wc
        oh = offf[ob + ((2 * (i * kw + j)) * hc + h_out) * wc + w_out]
        ow = offf[ob + ((2 * (i * kw + j) + 1) * hc + h_out) * wc + w_out]
        inv_h, inv_w = h_in + i * dh + oh, w_in + j * dw + ow
        cur_h, cur_w = int(inv_h), int(inv_w)  # C's truncation
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                y, xx = cur_h + dy, cur_w + dx
                if 0 <= y < H and 0 <= xx < W and abs(inv_h - y) < 1 and abs(inv_w - xx) < 1:
                    grad[(c * H + y) * W + xx] += _gradient_weight(inv_h, inv_w, y, xx, H, W) * colf[index]
    return grad.reshape(C, H, W)


def _coordinate_weight(ah, aw, H, W, im, bp_dir):
    if ah < 0 or ah > H or aw < 0 or aw > W:
        return 0.0
    hl, wl = int(ah), int(aw)
    if hl >= H - 1:
        hh = hl = H - 1
        ah = float(hl)
    else:
        hh = hl + 1
    if wl >= W - 1:
        wh = wl = W - 1
        aw = float(wl)
    else:
        wh = wl + 1
    if bp_dir == 0:
        return (-(wl + 1 - aw) * im[hl, wl] - (aw - wl) * im[hl, wh]
                + (wl + 1 - aw) * im[hh, wl] + (aw - wl) * im[hh, wh])
    return (-(hl + 1 - ah) * im[hl, wl] + (hl + 1 - ah) * im[hl, wh]
            - (ah - hl) * im[hh, wl] + (ah - hl) * im[hh, wh])


def col2im_coord_port(col, x, off, g, dg):
    """deformable_col2im_coord with 2*kh*kw*dg*Ho*Wo threads (the fork's launch says kh*kh)."""
    kh, kw, ph, pw, sh, sw, dh, dw = g
    C, H, W = x.shape
    hc, wc = _geom(H, W, g)
    colf, offf = col.reshape(-1), off.reshape(-1)
    cpg = C * kh * kw // dg  # per deformable group, in column channels
    grad = np.zeros(2 * kh * kw * dg * hc * wc)
    for index in range(grad.size):
        w, h, c = index % wc, (index // wc) % hc, index // wc // hc
        dgi = c // (2 * kh * kw)
        col_base, im_ch = dgi * cpg * wc * hc, dgi * cpg // kh // kw
        ob = dgi * 2 * kh * kw * hc * wc
        offset_c = c - dgi * 2 * kh * kw
        val, cnt, col_c = 0.0, 0, offset_c // 2
        while col_c < cpg:
            col_pos = (col_c * hc + h) * wc + w
            j = (col_pos // wc // hc) % kw
            i = (col_pos // wc // hc // kw) % kh
            w_out, h_out = col_pos % wc, (col_pos // wc) % hc
            oh = offf[ob + ((2 * (i * kw + j)) * hc + h_out) * wc + w_out]
            ow = offf[ob + ((2 * (i * kw + j) + 1) * hc + h_out) * wc + w_out]
            inv_h, inv_w = h_out * sh - ph + i * dh + oh, w_out * sw - pw + j * dw + ow
            if inv_h < 0 or inv_w < 0 or inv_h >= H or inv_w >= W:
                inv_h = inv_w = -1.0
            val += _coordinate_weight(inv_h, inv_w, H, W, x[im_ch + cnt], offset_c % 2) * colf[col_base + col_pos]
            cnt += 1
            col_c += kh * kw
        grad[index] = val
    return grad


def layer_port(x, off, wt, bias, top_diff, g, group, dg, image0_top_diff=False):
    """Forward_gpu / Backward_gpu: top, dx, doffset, dweight, dbias. ``image0_top_diff``: the fork's
    weight GEMM, which pairs every image's columns with image 0's top diff."""
    N, C, H, W = x.shape
    O = wt.shape[0]
    hc, wc = _geom(H, W, g)
    wg = wt.reshape(group, O // group, -1)
    top = np.zeros((N, O, hc * wc))
    dx, doff, dw = np.zeros_like(x), np.zeros((N, off[0].size)), np.zeros_like(wg)
    for n in range(N):
        col = im2col_port(x[n], off[n], g, dg).reshape(group, -1, hc * wc)
        top[n] = np.einsum("gok,gkl->gol", wg, col).reshape(O, -1) + (0 if bias is None else bias[:, None])
        td = top_diff[0 if image0_top_diff else n].reshape(group, O // group, -1)
        dw += np.einsum("gol,gkl->gok", td, col)
        cd = np.einsum("gok,gol->gkl", wg, top_diff[n].reshape(group, O // group, -1)).reshape(-1, hc * wc)
        coord = col2im_coord_port(cd, x[n], off[n], g, dg)
        doff[n, : coord.size] = coord
        dx[n] = col2im_port(cd, off[n], (C, H, W), g, dg)
    db = None if bias is None else top_diff.sum((0, 2, 3))
    return top.reshape(N, O, hc, wc), dx, doff.reshape(off.shape), dw.reshape(wt.shape), db


# -- helpers ---------------------------------------------------------------------------------------
def _layer(params, shapes, name="dc"):
    lp = text_format.Parse(f'name: "{name}" type: "DeformableConvolution" bottom: "x" bottom: "off" top: "y" '
                           f'deformable_convolution_param {{ {params} }}', caffe_pb2.LayerParameter())
    return get_layer_class("DeformableConvolution")(lp, shapes).double()


def _run(layer, x, off, td):
    for p in layer.blobs:
        p.grad = None
    xt, ot = torch.tensor(x, requires_grad=True), torch.tensor(off, requires_grad=True)
    y = layer(xt, ot)
    y.backward(torch.tensor(td))
    return y.detach().numpy(), xt.grad.numpy(), ot.grad.numpy(), [p.grad.numpy() for p in layer.blobs]


FILL = 'weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.5 }'
CASES = [  # params, x shape, geometry (kh, kw, ph, pw, sh, sw, dh, dw), group, dg, offset scale, grid
    ("num_output: 4 kernel_size: 3 pad: 1 group: 2 deformable_group: 2", (2, 4, 5, 4),
     (3, 3, 1, 1, 1, 1, 1, 1), 2, 2, 1.5, None),
    ("num_output: 2 kernel_size: 3 pad: 2 dilation: 2 deformable_group: 1", (1, 3, 4, 5),
     (3, 3, 2, 2, 1, 1, 2, 2), 1, 1, 2.0, 0.5),  # offsets on a half grid: samples exactly at H - 1, H, -1, 0
    ("num_output: 3 kernel_h: 2 kernel_w: 3 stride: 2 pad: 1 deformable_group: 2", (1, 2, 5, 6),
     (2, 3, 1, 1, 2, 2, 1, 1), 1, 2, 1.2, None),  # fewer outputs than offset pixels: read from the front
]


@pytest.mark.parametrize("params,shape,g,group,dg,scale,grid", CASES)
def test_forward_and_diffs_match_the_fork_kernels(params, shape, g, group, dg, scale, grid):
    r = np.random.default_rng(sum(shape))
    x = r.standard_normal(shape)
    off = scale * r.standard_normal((shape[0], 2 * g[0] * g[1] * dg) + shape[2:])
    if grid:
        off = np.round(off / grid) * grid
    layer = _layer(f"{params} {FILL}", [x.shape, off.shape])
    wt, b = (p.detach().numpy() for p in layer.blobs)
    ho, wo = _geom(shape[2], shape[3], g)
    td = r.standard_normal((shape[0], wt.shape[0], ho, wo))
    top, dx, doff, (dw, db) = _run(layer, x, off, td)
    want = layer_port(x, off, wt, b, td, g, group, dg)
    for got, exp in zip((top, dx, doff, dw, db), want):
        np.testing.assert_allclose(got, exp, rtol=1e-10, atol=1e-12)


def test_the_forks_weight_diff_agrees_for_one_image_only():
    r = np.random.default_rng(1)
    g = (3, 3, 1, 1, 1, 1, 1, 1)
    layer = _layer(f"num_output: 2 kernel_size: 3 pad: 1 deformable_group: 1 {FILL}", [(2, 2, 4, 4), (2, 18, 4, 4)])
    wt, b = (p.detach().numpy() for p in layer.blobs)
    x, off, td = r.standard_normal((2, 2, 4, 4)), r.standard_normal((2, 18, 4, 4)), r.standard_normal((2, 2, 4, 4))
    one = _run(layer, x[:1], off[:1], td[:1])[3][0]
    np.testing.assert_allclose(one, layer_port(x[:1], off[:1], wt, b, td[:1], g, 1, 1, True)[3], rtol=1e-10)
    two = _run(layer, x, off, td)[3][0]
    assert not np.allclose(two, layer_port(x, off, wt, b, td, g, 1, 1, True)[3])


@pytest.mark.parametrize("params,dg,n_off", [("num_output: 4 kernel_size: 3 pad: 1 group: 2", 2, 36),
                                              ("num_output: 3 kernel_h: 3 kernel_w: 2 stride: 2 pad: 2 dilation: 2", 1, 12)])
def test_zero_offsets_equal_convolution(params, dg, n_off):
    r = np.random.default_rng(2)
    x = r.standard_normal((2, 4, 7, 6))
    off = np.zeros((2, n_off, 7, 6))
    layer = _layer(f"{params} deformable_group: {dg} {FILL}", [x.shape, off.shape])
    clp = text_format.Parse(f'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ {params} }}',
                            caffe_pb2.LayerParameter())
    conv = get_layer_class("Convolution")(clp, [x.shape]).double()
    for a, b in zip(conv.blobs, layer.blobs):
        a.data.copy_(b.data)
    xt, xc = torch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, yc = layer(xt, torch.tensor(off)), conv(xc)
    np.testing.assert_allclose(y.detach().numpy(), yc.detach().numpy(), rtol=1e-12, atol=1e-12)
    td = torch.tensor(r.standard_normal(y.shape))
    y.backward(td)
    yc.backward(td)
    np.testing.assert_allclose(xt.grad.numpy(), xc.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), conv.blobs[0].grad.numpy(), rtol=1e-12, atol=1e-12)


def test_gradient_check_away_from_the_kinks():
    r = np.random.default_rng(3)
    layer = _layer(f"num_output: 2 kernel_size: 3 pad: 1 group: 1 deformable_group: 2 {FILL}", [(1, 2, 4, 4), (1, 36, 4, 4)])
    x = torch.tensor(r.standard_normal((1, 2, 4, 4)), requires_grad=True)
    # fractional parts in [0.2, 0.8] and no sample within 0.2 of the border: the function is smooth there
    off = torch.tensor(np.round(r.uniform(-0.6, 0.6, (1, 36, 4, 4))) + r.uniform(0.2, 0.8, (1, 36, 4, 4)) - 0.5,
                       requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, off), eps=1e-6, atol=1e-6)


def test_offset_diff_ignores_the_jump_at_the_border():
    """A 1x1 tap sampled just left of the image reads 0 and gets offset diff 0, though the value jumps
    to the pixel at 0 (the fork's get_coordinate_weight)."""
    layer = _layer('num_output: 1 kernel_size: 1 deformable_group: 1 bias_term: false weight_filler { type: "constant" value: 1 }',
                   [(1, 1, 1, 3), (1, 2, 1, 3)])
    x = torch.tensor([[[[5.0, 6.0, 7.0]]]])
    off = torch.zeros(1, 2, 1, 3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        off[0, 1, 0, 0] = -1e-3  # x-offset of output 0: samples w = -0.001
        off[0, 1, 0, 2] = 0.5    # output 2 samples w = 2.5: clamped to the last column
    y = layer(x.double(), off)
    assert y[0, 0, 0, 0].item() == 0.0 and y[0, 0, 0, 2].item() == 7.0
    y.sum().backward()
    assert off.grad[0, 1, 0, 0].item() == 0.0 and off.grad[0, 1, 0, 2].item() == 0.0
    assert off.grad[0, 1, 0, 1].item() == 1.0  # inside: 7 - 6


@pytest.mark.parametrize("params,shapes,match", [
    ("num_output: 2 kernel_size: 3 pad: 1 deformable_group: 1", [(1, 2, 4, 4), (1, 9, 4, 4)],
     r"offset bottom must be \(N, 2\*kernel_h\*kernel_w\*deformable_group = 18, H, W\).*received shape \(1, 9, 4, 4\)"),
    ("num_output: 2 kernel_size: 3 pad: 1 deformable_group: 1", [(1, 2, 4, 4), (1, 18, 2, 2)],
     r"height and width must equal the data's \(4, 4\); received \(2, 2\)"),
    ("num_output: 2 kernel_size: 3 pad: 1", [(1, 2, 4, 4), (1, 72, 4, 4)], "deformable_group = 4 does not divide the 2"),
    ("num_output: 3 kernel_size: 3 group: 2 deformable_group: 1", [(1, 2, 4, 4), (1, 18, 4, 4)],
     "group = 2 does not divide num_output = 3"),
    ("kernel_size: 3 deformable_group: 1", [(1, 2, 4, 4), (1, 18, 4, 4)], "num_output must be set"),
    ("num_output: 2 kernel_size: 3 deformable_group: 1", [(2, 4, 4), (2, 18, 4)], r"must be 4-D.*\(2, 4, 4\)"),
    ("num_output: 2 kernel_size: 3 deformable_group: 1 axis: 2", [(1, 2, 4, 4), (1, 18, 4, 4)], "axis must be 1"),
    ("num_output: 2 kernel_size: 3 pad: 3 deformable_group: 1", [(1, 2, 4, 4), (1, 18, 4, 4)],
     r"output \(8 x 8\) has more positions"),
])
def test_errors_name_the_layer_and_what_was_received(params, shapes, match):
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer(params, shapes, name="bad").reshape(shapes)
    assert "bad" in str(e.value)


def test_the_fork_defaults():
    p = caffe_pb2.DeformableConvolutionParameter()
    assert (p.deformable_group, p.group, p.bias_term, p.axis) == (4, 1, True, 1)
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["deformable_convolution_param"].number == 999


# The res5a block of unsky/Deformable-ConvNets-caffe @ e0f7abd,
# deformable_conv_faster-rcnn/models/pascal_voc/ResNet50/faster_rcnn_end2end/train.prototxt (lines 2870-3170,
# res5a_branch1 to res5a_relu), trimmed: widths 1024/512/2048 -> 8/8/16, the frozen BatchNorm + Scale pairs
# left out, an Input and a EuclideanLoss around it. The offset conv and the DeformableConvolution as written.
RES5A = '''
layer { name: "input" type: "Input" top: "res4f" top: "target"
  input_param { shape { dim: 1 dim: 8 dim: 6 dim: 7 } shape { dim: 1 dim: 16 dim: 6 dim: 7 } } }
layer { bottom: "res4f" top: "res5a_branch1" name: "res5a_branch1" type: "Convolution"
  convolution_param { num_output: 16 kernel_size: 1 pad: 0 stride: 1 bias_term: false } param { lr_mult: 1.0 } }
layer { bottom: "res4f" top: "res5a_branch2a" name: "res5a_branch2a" type: "Convolution"
  convolution_param { num_output: 8 kernel_size: 1 pad: 0 stride: 1 bias_term: false } param { lr_mult: 1.0 } }
layer { bottom: "res5a_branch2a" top: "res5a_branch2a" name: "res5a_branch2a_relu" type: "ReLU" }
###defor
layer {
  name: "res5a_branch2b_offset"
  type: "Convolution"
  bottom: "res5a_branch2a"
  top: "res5a_branch2b_offset"
  convolution_param {
    num_output: 72
    kernel_size: 3
    stride: 1
    dilation: 2
    pad: 2
    weight_filler {
      type: "constant"
      value: 0
    }
    bias_filler {
      type: "constant"
      value: 0
    }
  }
      param {
        lr_mult: 1.0
    }
        param {
        lr_mult: 1.0
    }
}
layer {
  name: "res5a_branch2b"
  type: "DeformableConvolution"
  bottom: "res5a_branch2a"
  bottom: "res5a_branch2b_offset"
  top: "res5a_branch2b"
  deformable_convolution_param {
    num_output: 8
    kernel_size: 3
    stride: 1
    pad: 2
    dilation: 2
    deformable_group: 4
    bias_term: false
  }
      param {
        lr_mult: 1.0
    }
}
###
layer { bottom: "res5a_branch2b" top: "res5a_branch2b" name: "res5a_branch2b_relu" type: "ReLU" }
layer { bottom: "res5a_branch2b" top: "res5a_branch2c" name: "res5a_branch2c" type: "Convolution"
  convolution_param { num_output: 16 kernel_size: 1 pad: 0 stride: 1 bias_term: false } param { lr_mult: 1.0 } }
layer { bottom: "res5a_branch1" bottom: "res5a_branch2c" top: "res5a" name: "res5a" type: "Eltwise" }
layer { bottom: "res5a" top: "res5a" name: "res5a_relu" type: "ReLU" }
layer { name: "loss" type: "EuclideanLoss" bottom: "res5a" bottom: "target" top: "loss" }
'''


def test_res5a_block_builds_runs_and_trains(tmp_path):
    (tmp_path / "train.prototxt").write_text(RES5A)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.02 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 5')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    r = np.random.default_rng(4)
    for name in ("res5a_branch1", "res5a_branch2a", "res5a_branch2b", "res5a_branch2c"):  # "pretrained" weights
        w = net.params[name][0].data
        w[...] = r.standard_normal(w.shape) / np.sqrt(np.prod(w.shape[1:]))
    assert not net.params["res5a_branch2b_offset"][0].data.any()  # the fork starts from zero offsets
    net.blobs["res4f"].data[...] = r.standard_normal((1, 8, 6, 7))
    net.blobs["target"].data[...] = np.abs(r.standard_normal((1, 16, 6, 7)))
    assert net.blobs["res5a_branch2b"].data.shape == (1, 8, 6, 7)
    first = float(net.forward()["loss"])
    net.backward()
    assert np.abs(net.params["res5a_branch2b_offset"][0].diff).max() > 0  # the offsets get a diff
    solver.step(15)
    last = float(net.forward()["loss"])
    assert last < 0.8 * first, (first, last)
    assert np.abs(net.params["res5a_branch2b_offset"][0].data).max() > 0  # and learn
