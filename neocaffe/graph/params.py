"""Learnable parameters: Caffe's ParamSpec multipliers kept on each parameter, sharing by name."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from neocaffe.proto import caffe_pb2

STRICT, PERMISSIVE = 0, 1  # ParamSpec.DimCheckMode


@dataclass(eq=False)
class ParamInfo:
    """A learnable parameter and its ParamSpec (``lr_mult``, ``decay_mult``, ``force_mult``, scnn
    multipliers) as the solver and regularizers read them, with what the scnn branch's regularizers read
    of the owning layer: ``group`` (``convolution_param.group`` when the layer has a ``convolution_param``,
    else 1, as the branch's ``Net::param_groups``), ``connectivity_mode``, ``layer_type``, and ``loads``
    (how many times weights were copied into the layer: the branch sets its connectivity masks then).

    Compared and hashed by identity (one object per learnable parameter of a net): the regularizers key
    what they compute once per parameter by the ParamInfo itself."""

    param: nn.Parameter
    layer: str
    index: int
    spec: Any  # caffe_pb2.ParamSpec (the owner's, merged with sharers' settings)
    group: int = 1
    connectivity_mode: int = 0  # LayerParameter.ConnectivityMode: CONNECTED, DISCONNECTED_ELTWISE, _GRPWISE
    layer_type: str = ""
    loads: int = 0

    @property
    def name(self) -> str:
        return f"{self.layer}/{self.index}"

    @property
    def lr_mult(self) -> float:
        return self.spec.lr_mult

    @property
    def decay_mult(self) -> float:
        return self.spec.decay_mult

    def mult(self, field: str, default: float = 0.0) -> float:
        """Any ParamSpec multiplier by name (e.g. ``force_mult``), ``default`` if the schema lacks it."""
        desc = self.spec.DESCRIPTOR.fields_by_name.get(field)
        return float(getattr(self.spec, field)) if desc is not None else default


class ParamShareError(ValueError):
    """Two layers share a parameter by name but disagree on its shape or multipliers."""


def _spec(layer_param: Any, k: int) -> Any:
    spec = caffe_pb2.ParamSpec()
    if k < len(layer_param.param):
        spec.CopyFrom(layer_param.param[k])
    return spec


def collect_params(layers: list[Any]) -> list[ParamInfo]:
    """Share parameters by ``param { name }`` (STRICT or PERMISSIVE) and list the learnable ones
    in Caffe's order (first appearance), each with its ParamSpec."""
    owners: dict[str, ParamInfo] = {}
    learnable: list[ParamInfo] = []
    for layer in layers:
        for k in range(len(layer.blobs)):
            spec = _spec(layer.param, k)
            blob = layer.blobs[k]
            if spec.name and spec.name in owners:
                owner = owners[spec.name]
                src, dst = tuple(owner.param.shape), tuple(blob.shape)
                if spec.share_mode == PERMISSIVE:
                    if math.prod(src) != math.prod(dst):
                        raise ParamShareError(
                            f"layer '{layer.name}': cannot share param '{spec.name}' owned by layer "
                            f"'{owner.layer}': count mismatch, owner shape {src}, sharer shape {dst}"
                        )
                    if src != dst:
                        raise ParamShareError(
                            f"layer '{layer.name}': PERMISSIVE sharing of '{spec.name}' between shapes "
                            f"{src} and {dst} is not supported; reshape the layers to the same shape"
                        )
                elif src != dst:
                    raise ParamShareError(
                        f"layer '{layer.name}': cannot share param '{spec.name}' owned by layer "
                        f"'{owner.layer}': shape mismatch, owner shape {src}, sharer shape {dst}"
                    )
                for field in ("lr_mult", "decay_mult"):
                    if spec.HasField(field):
                        if owner.spec.HasField(field) and getattr(owner.spec, field) != getattr(spec, field):
                            raise ParamShareError(
                                f"layer '{layer.name}': shared param '{spec.name}' has {field} "
                                f"{getattr(spec, field)} but its owner '{owner.layer}' has {getattr(owner.spec, field)}"
                            )
                        setattr(owner.spec, field, getattr(spec, field))
                layer.blobs[k] = owner.param
                continue
            lp = layer.param
            group = int(lp.convolution_param.group) if lp.HasField("convolution_param") else 1
            info = ParamInfo(blob, layer.name, k, spec, group, int(lp.connectivity_mode), lp.type)
            if spec.name:
                owners[spec.name] = info
            learnable.append(info)
    return learnable
