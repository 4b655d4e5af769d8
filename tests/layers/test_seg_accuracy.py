"""DeepLab's SegAccuracy (hszhao/PSPNet ``seg_accuracy_layer.cpp`` + ``confusion_matrix.cpp``) against a
plain-loop port of the fork: per pixel (value, class) partial_sort, ignore labels, the confusion
matrix's accuracy / avgRecall(false) / avgJaccard, ``reset: false`` accumulation, and the errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def _fork_confusion(scores, labels, ignore, matrix=None):
    n, c, h, w = scores.shape
    m = np.zeros((c, c), np.int64) if matrix is None else matrix
    for i in range(n):
        for y in range(h):
            for x in range(w):
                pairs = sorted(((scores[i, k, y, x], k) for k in range(c)), reverse=True)
                gt = int(labels[i, 0, y, x])  # static_cast<int>: truncation
                if gt in ignore:
                    continue
                assert 0 <= gt < c
                m[gt, pairs[0][1]] += 1
    return m


def _fork_scores(m):
    c = m.shape[0]
    total, diag = m.sum(), np.trace(m)
    acc = 0.0 if total == 0 else diag / total
    rec, k = 0.0, 0
    for i in range(c):
        if m[i].sum() > 0:
            rec += m[i, i] / m[i].sum()
            k += 1
    rec = 0.0 if k == 0 else rec / k
    jac = 0.0
    for i in range(c):
        inter, union = m[i, i], m[i].sum() + m[:, i].sum() - m[i, i]
        jac += 1.0 if inter == union else inter / union
    return [acc, rec, jac / c]


def _layer(shape, fields=""):
    param = text_format.Parse(f'name: "acc" type: "SegAccuracy" bottom: "x" bottom: "l" top: "a" '
                              f"seg_accuracy_param {{ {fields} }}", caffe_pb2.LayerParameter())
    return get_layer_class("SegAccuracy")(param, [shape, (shape[0], 1) + tuple(shape[2:])])


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_forks_confusion_matrix(seed):
    g = np.random.default_rng(seed)
    scores = g.integers(-2, 3, (3, 5, 4, 6)).astype(np.float32)  # small integers: many ties
    labels = g.integers(0, 5, (3, 1, 4, 6)).astype(np.float32) + 0.5 * (seed % 2)  # x.5 truncates
    labels[g.random(labels.shape) < 0.2] = 255
    labels[0, 0, 0, :3] = 4  # class 4 seen; a class may be absent, counting 1 in avgJaccard
    layer = _layer(scores.shape, "ignore_label: 255")
    out = layer(torch.from_numpy(scores), torch.from_numpy(labels))
    assert out.shape == (1, 1, 1, 3) and out.dtype == torch.float32
    want = _fork_scores(_fork_confusion(scores, labels, {255}))
    np.testing.assert_allclose(out.reshape(3).numpy(), np.float32(want), rtol=0, atol=0)


def test_reset_false_accumulates_over_forwards():
    g = np.random.default_rng(7)
    batches = [(g.standard_normal((2, 3, 3, 3)).astype(np.float32),
                g.integers(0, 3, (2, 1, 3, 3)).astype(np.float32)) for _ in range(3)]
    acc, fresh = _layer((2, 3, 3, 3), "reset: false"), _layer((2, 3, 3, 3))
    m = None
    for s, lab in batches:
        m = _fork_confusion(s, lab, set(), m)
        got = acc(torch.from_numpy(s), torch.from_numpy(lab)).reshape(3).numpy()
        np.testing.assert_array_equal(got, np.float32(_fork_scores(m)))
    last = fresh(torch.from_numpy(batches[-1][0]), torch.from_numpy(batches[-1][1])).reshape(3).numpy()
    np.testing.assert_array_equal(last, np.float32(_fork_scores(_fork_confusion(*batches[-1], set()))))


def test_several_ignore_labels_and_an_all_ignored_batch():
    scores = torch.randn(1, 2, 2, 2)
    labels = torch.tensor([[[[0, 255], [254, 1]]]], dtype=torch.float32)
    layer = _layer((1, 2, 2, 2), "ignore_label: 255 ignore_label: 254")
    out = layer(scores, labels).reshape(3)
    m = _fork_confusion(scores.numpy(), labels.numpy(), {254, 255})
    np.testing.assert_array_equal(out.numpy(), np.float32(_fork_scores(m)))
    empty = layer(scores, torch.full((1, 1, 2, 2), 255.0)).reshape(3).tolist()
    assert empty == [0.0, 0.0, 1.0]  # the fork: 0 accuracy and recall, every class "intersection == union"


def test_unexpected_labels_and_bad_shapes_are_errors():
    layer = _layer((1, 3, 2, 2), "ignore_label: 255")
    labels = torch.tensor([[[[0, 1], [3, 2]]]], dtype=torch.float32)
    with pytest.raises(LayerSetupError, match=r"layer 'acc'.*unexpected label 3 at num 0, row 1, col 0; expected "
                                              r"0..2 or an ignore_label \[255\]"):
        layer(torch.randn(1, 3, 2, 2), labels)
    with pytest.raises(LayerSetupError, match=r"the label must be \(N, 1, H, W\) of the scores' N, H, W: scores "
                                              r"\(1, 3, 2, 2\), expected label \(1, 1, 2, 2\); received \(1, 1, 2, 3\)"):
        layer.reshape([(1, 3, 2, 2), (1, 1, 2, 3)])
