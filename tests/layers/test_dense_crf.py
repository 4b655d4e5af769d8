"""DeepLab's DenseCRF (hszhao/PSPNet ``densecrf_layer.cpp`` over its permutohedral lattice) against
marginals computed by the fork's own C++ (``tests/layers/data/README.md``), bit for bit; the log output,
the padded area, several images, the errors, and DeepLab's CRF test net (MatRead -> DenseCRF with the
image and its data_dim -> MatWrite)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.dense_crf import fast_exp
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

REFERENCE = Path(__file__).parent / "data" / "densecrf_fork_reference.npz"


def _layer(fields, shapes, bottoms=3):
    names = ' bottom: "x" bottom: "d"' + (' bottom: "im"' if bottoms == 3 else "")
    p = text_format.Parse(f'name: "crf" type: "DenseCRF"{names} top: "y" dense_crf_param {{ {fields} }}',
                          caffe_pb2.LayerParameter())
    return get_layer_class("DenseCRF")(p, shapes)


def _case(z, k):
    def g(n):
        return z[f"c{k}_{n}"]
    has_im = f"c{k}_image" in z
    fields = f"max_iter: {int(g('max_iter'))} " + " ".join(
        f"pos_w: {a} pos_xy_std: {b}" for a, b in zip(g("pos_w"), g("pos_std")))
    if has_im:
        fields += " " + " ".join(f"bi_w: {a} bi_xy_std: {b} bi_rgb_std: {c}"
                                 for a, b, c in zip(g("bi_w"), g("bi_xy"), g("bi_rgb")))
    return g, has_im, fields


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("output_probability", [True, False])
def test_marginals_equal_the_forks_bit_for_bit(k, output_probability):
    z = np.load(REFERENCE)
    g, has_im, fields = _case(z, k)
    h, w, m, ph, pw = (int(g(n)) for n in ("h", "w", "m", "ph", "pw"))
    shapes = [(1, m, ph, pw), (1, 1, 1, 2)] + ([(1, 3, ph, pw)] if has_im else [])
    layer = _layer(fields + f" output_probability: {str(output_probability).lower()}", shapes, len(shapes))
    args = [torch.from_numpy(g("scores")[None]), torch.tensor([[[[h, w]]]], dtype=torch.float32)]
    if has_im:
        args.append(torch.from_numpy(g("image")[None]))
    out = layer(*args)[0].numpy()
    q = g("q")
    want = q if output_probability else np.log(np.maximum(q, np.finfo(np.float32).tiny).astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(out[:, :h, :w], want)
    assert (out[:, h:, :] == 0).all() and (out[:, :, w:] == 0).all()  # outside the image: 0, as the fork's memset


def test_fast_exp_is_the_forks_approximation():
    x = torch.tensor([-25.0, -20.5, -6.0, -1.0, -0.3, 0.0, 0.5, 3.0, 21.0])
    y = fast_exp(x)
    assert y[0] == 0 and y[1] == 0 and y[-1] == 0 and y[5] == 1  # |x| > 20: 0 (both signs); exp(0) = 1
    np.testing.assert_allclose(y[2:-1].numpy(), np.exp(x[2:-1].numpy()), rtol=2e-6)  # close to exp, not equal
    assert not torch.equal(y[2:-1], torch.exp(x[2:-1]))


def test_several_images_each_with_its_own_features_and_size():
    """Image 1 of a batch is inferred as it would be alone (the fork would take image 0's colours)."""
    g = np.random.default_rng(5)
    x = torch.from_numpy(g.standard_normal((2, 3, 8, 9)).astype(np.float32))
    im = torch.from_numpy(g.uniform(-100, 100, (2, 3, 8, 9)).astype(np.float32))
    dims = torch.tensor([8.0, 9.0, 6.0, 7.0]).reshape(2, 1, 1, 2)
    fields = "max_iter: 4 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 10 bi_rgb_std: 20"
    both = _layer(fields, [(2, 3, 8, 9), (2, 1, 1, 2), (2, 3, 8, 9)])(x, dims, im)
    alone = _layer(fields, [(1, 3, 8, 9), (1, 1, 1, 2), (1, 3, 8, 9)])(x[1:], dims[1:], im[1:])
    np.testing.assert_array_equal(both[1].numpy(), alone[0].numpy())
    assert (both[1, :, 6:] == 0).all() and float(both[1, :, :6, :7].sum(0).sub(1).abs().max()) < 1e-5


def test_errors_name_what_was_received_and_expected():
    with pytest.raises(LayerSetupError, match=r"bi_w, bi_xy_std and bi_rgb_std need the same number of values; "
                                              r"received 1, 1, 0"):
        _layer("bi_w: 1 bi_xy_std: 2", [(1, 2, 3, 3), (1, 1, 1, 2), (1, 3, 3, 3)])
    with pytest.raises(LayerSetupError, match=r"an image is given \(bottom 2\) but no bilateral kernel"):
        _layer("pos_w: 1 pos_xy_std: 2", [(1, 2, 3, 3), (1, 1, 1, 2), (1, 3, 3, 3)])
    layer = _layer("bi_w: 1 bi_xy_std: 2 bi_rgb_std: 3", [(1, 2, 3, 3), (1, 1, 1, 2), (1, 3, 3, 3)])
    with pytest.raises(LayerSetupError, match=r"bottom 2 \(image\) must be \(1, 3, 3, 3\), a colour image of the "
                                              r"scores' size; received \(1, 1, 3, 3\)"):
        layer.reshape([(1, 2, 3, 3), (1, 1, 1, 2), (1, 1, 3, 3)])


def test_deeplab_crf_test_net(tmp_path):
    """DeepLab's test_crf layout: ImageSegData (label_type NONE, padded crop) gives the image and its
    data_dim, MatRead the saved scores, DenseCRF refines them, MatWrite saves the result per list id."""
    import cv2

    from neocaffe.graph.net import Net
    from neocaffe.io.matfile import read_blob_mat, write_blobs_mat
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import TEST

    g = np.random.default_rng(6)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), g.integers(0, 256, (9, 11, 3), dtype=np.uint8))
        write_blobs_mat(tmp_path / f"im{i}_blob_0.mat", {"data": g.standard_normal((1, 4, 12, 12)).astype(np.float32)})
    (tmp_path / "list.txt").write_text("/im0.png\n/im1.png\n")
    (tmp_path / "ids.txt").write_text("im0\nim1\n")
    (tmp_path / "out").mkdir()
    net = Net(read_net(f"""
layer {{ name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
  image_data_param {{ root_folder: "{tmp_path}" source: "{tmp_path}/list.txt" label_type: NONE batch_size: 1 }}
  transform_param {{ crop_size: 12 mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 }} }}
layer {{ name: "fc8" type: "MatRead" top: "fc8" mat_read_param {{ prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt" }} }}
layer {{ name: "crf" type: "DenseCRF" bottom: "fc8" bottom: "data_dim" bottom: "data" top: "crf"
  dense_crf_param {{ max_iter: 10 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 121 bi_rgb_std: 5 }} }}
layer {{ name: "out" type: "MatWrite" bottom: "crf" mat_write_param {{ prefix: "{tmp_path}/out/" source: "{tmp_path}/ids.txt" }} }}
layer {{ name: "silence" type: "Silence" bottom: "label" }}
"""), TEST)
    try:
        for _ in range(2):
            net.forward()
    finally:
        net.close()
    for i in range(2):
        q = read_blob_mat(tmp_path / "out" / f"im{i}_blob_0.mat")
        assert q.shape == (1, 4, 12, 12)
        np.testing.assert_allclose(q[0, :, :9, :11].sum(0), 1, atol=1e-5)  # marginals on the image
        assert (q[0, :, 9:, :] == 0).all() and (q[0, :, :, 11:] == 0).all()  # the padding: 0


@pytest.mark.gpu
def test_on_cuda_equals_the_fork_within_rounding():
    """On CUDA the splat's index_add sums in no fixed order: the marginals agree to 1e-5."""
    z = np.load(REFERENCE)
    g, has_im, fields = _case(z, 3)
    h, w, m, ph, pw = (int(g(n)) for n in ("h", "w", "m", "ph", "pw"))
    layer = _layer(fields, [(1, m, ph, pw), (1, 1, 1, 2), (1, 3, ph, pw)]).to("cuda")
    out = layer(torch.from_numpy(g("scores")[None]).cuda(), torch.tensor([[[[h, w]]]], device="cuda"),
                torch.from_numpy(g("image")[None]).cuda())
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out[0, :, :h, :w].cpu().numpy(), g("q"), rtol=0, atol=1e-5)
