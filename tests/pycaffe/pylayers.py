"""User Python layers for test_python_layer (pycaffe's test modules define the same ones)."""
from __future__ import annotations

import numpy as np

import caffe


class SimpleLayer(caffe.Layer):
    """A layer that just multiplies by ten."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ExceptionLayer(caffe.Layer):
    """A layer for checking exceptions from Python."""

    def setup(self, bottom, top):
        raise RuntimeError


class ParameterLayer(caffe.Layer):
    """A layer that just multiplies by ten, with a learnable blob."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    """A layer whose output is its phase."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class SimpleParamLayer(caffe.Layer):
    """Multiplies by the number in its param_str."""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("Parameter string must be a legible float")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


class QuadrantDataLayer(caffe.Layer):
    """A Python data layer: batches of 8x8 images whose bright quadrant is the label."""

    def setup(self, bottom, top):
        self.batch = int(self.param_str or 16)
        self.rs = np.random.RandomState(0)

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 1, 8, 8)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        y = self.rs.randint(4, size=self.batch)
        x = self.rs.rand(self.batch, 1, 8, 8) * 0.5
        for k, c in enumerate(y):
            r, q = divmod(int(c), 2)
            x[k, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1
        top[0].data[...] = x
        top[1].data[...] = y

    def backward(self, top, propagate_down, bottom):
        pass
