"""Loop-by-loop NumPy ports of Cysu/caffe ``faster-rcnn`` @ aed38841ae4282d90575186b87c3287620913722,
``src/caffe/layers/labeled_matching_layer.cpp`` and ``unlabeled_matching_layer.cpp`` (CPU code), float32
as the fork's ``Dtype``: the reference of tests/layers/test_oim.py."""
from __future__ import annotations

import numpy as np

f32 = np.float32


def gemm_nt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """caffe_cpu_gemm(NoTrans, Trans, M, N, K, 1, a, b, 0, c), one dot product at a time (float64 sums,
    rounded to float32 once, as BLAS may)."""
    m, n = a.shape[0], b.shape[0]
    c = np.zeros((m, n), f32)
    for i in range(m):
        for j in range(n):
            c[i, j] = f32(np.dot(a[i].astype(np.float64), b[j].astype(np.float64)))
    return c


def gemm_nn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """caffe_cpu_gemm(NoTrans, NoTrans, M, K, N, 1, a, b, 0, c)."""
    return gemm_nt(a, np.ascontiguousarray(b.T))


class LabeledMatchingRef:
    """LabeledMatchingLayer: LayerSetUp (zero blobs), Forward_cpu, Backward_cpu."""

    def __init__(self, num_classes: int, k: int, momentum: float = 0.5) -> None:
        self.n = num_classes
        self.momentum = f32(momentum)
        self.weight = np.zeros((num_classes, k), f32)
        self.tstamp = np.zeros(num_classes, f32)

    def forward(self, x: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = x.shape[0]
        xf = x.reshape(m, -1).astype(f32)
        scores = gemm_nt(xf, self.weight)
        flat = label.reshape(-1)
        top_label = flat.astype(f32).copy()
        for i in range(m):
            v = int(flat[i])  # static_cast<int>
            if v < 0 or v >= self.n:
                top_label[i] = f32(-1.0)
        return scores, top_label.reshape(label.shape)

    def backward(self, diff: np.ndarray, x: np.ndarray, label: np.ndarray, update: bool = True) -> np.ndarray:
        m = x.shape[0]
        xf = x.reshape(m, -1).astype(f32)
        dx = gemm_nn(diff.astype(f32), self.weight)
        if update:
            flat = label.reshape(-1)
            for j in range(self.n):
                self.tstamp[j] = f32(self.tstamp[j] + f32(1.0))
            a = f32(f32(1.0) - self.momentum)
            for i in range(m):
                v = int(flat[i])
                if v < 0 or v >= self.n:
                    continue
                for k in range(xf.shape[1]):  # caffe_cpu_axpby: y = a x + b y
                    self.weight[v, k] = f32(f32(a * xf[i, k]) + f32(self.momentum * self.weight[v, k]))
                self.tstamp[v] = f32(0.0)
        return dx.reshape(x.shape)


class UnlabeledMatchingRef:
    """UnlabeledMatchingLayer: LayerSetUp (zero queue, tail 0), Forward_cpu, Backward_cpu."""

    def __init__(self, queue_size: int, k: int) -> None:
        self.q = queue_size
        self.tail = 0
        self.weight = np.zeros((queue_size, k), f32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return gemm_nt(x.reshape(x.shape[0], -1).astype(f32), self.weight)

    def backward(self, diff: np.ndarray, x: np.ndarray, label: np.ndarray, update: bool = True) -> np.ndarray:
        m = x.shape[0]
        xf = x.reshape(m, -1).astype(f32)
        dx = gemm_nn(diff.astype(f32), self.weight)
        if update:
            flat = label.reshape(-1)
            for i in range(m):
                if int(flat[i]) != -1:
                    continue
                self.weight[self.tail] = xf[i]  # caffe_copy(K, ...)
                self.tail += 1
                if self.tail >= self.q:
                    self.tail = 0
        return dx.reshape(x.shape)
