"""Input: blobs the user fills (``input_param { shape }``), kept between forwards."""
from __future__ import annotations

import torch
from torch import Tensor

from neocaffe.layers.base import Layer, Shape
from neocaffe.layers.blob_shape import proto_shape
from neocaffe.layers.registry import register_layer


@register_layer("Input")
class InputLayer(Layer):
    """Caffe's InputLayer: one shape for every top, or one per top (``input_param.shape``)."""

    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        shapes = [proto_shape(s, f"input_param.shape[{i}]") for i, s in enumerate(self.param.input_param.shape)]
        n_top = len(self.param.top)
        if len(shapes) not in (0, 1, n_top):
            raise self.error(
                f"input_param must give 0, 1 or {n_top} shapes (one per top); received {len(shapes)}"
            )
        self._n = n_top
        for j in range(n_top):
            shape = shapes[0] if len(shapes) == 1 else (shapes[j] if shapes else (0,))
            self.register_buffer(f"top{j}", torch.zeros(shape, dtype=torch.float32))

    def value(self, j: int) -> Tensor:
        return self._buffers[f"top{j}"]  # type: ignore[return-value]  (this layer's own table: no Module lookup)

    def set_value(self, j: int, value: Tensor) -> None:
        """Replace top ``j`` (copying in place when the shape is unchanged, so views stay valid)."""
        buf = self.value(j)
        if tuple(buf.shape) == tuple(value.shape) and buf.dtype == value.dtype and buf.device == value.device:
            if buf.data_ptr() != value.data_ptr():
                buf.copy_(value.detach())
        else:
            setattr(self, f"top{j}", value.detach().to(torch.float32).contiguous().clone())

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(self.value(j).shape) for j in range(self._n)]

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        return [self.value(j) for j in range(self._n)]

    @classmethod
    def examples(cls):  # noqa: D102
        from neocaffe.layers.base import Example

        return [
            Example('name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } }', [], grad_bottoms=()),
            Example('name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 } shape { dim: 1 dim: 4 } }', [], grad_bottoms=()),
        ]
