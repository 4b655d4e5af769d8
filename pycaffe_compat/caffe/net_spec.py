"""``caffe.net_spec``: write nets in Python (``caffe.NetSpec``, ``caffe.layers`` as ``L``,
``caffe.params`` as ``P``, ``caffe.to_proto``), producing the NetParameter pycaffe produces.

``L.Convolution(bottom, kernel_size=3, num_output=8)`` makes a layer; keyword arguments go to the
layer's own ``<type>_param`` message when it has the field and to the LayerParameter otherwise
(arguments ending in ``param``, e.g. ``param=[dict(lr_mult=1)]``, ``transform_param=dict(...)``,
always go to the LayerParameter). Dicts fill messages, lists fill repeated fields (a single value
given to a repeated field becomes a one-element list). ``ntop`` sets the number of tops (0 returns
the layer itself, 1 a Top, more a tuple of Tops); ``in_place=True`` makes the tops the bottoms.

Names: tops assigned to a NetSpec take the attribute name; others are named ``<Type><k>`` with a
counter per type, in the order ``to_proto`` meets them. A layer takes the name of its first top
(or its own NetSpec name when it has no tops). ``str(proto)`` is the prototxt text.

Beyond pycaffe, Deconvolution and Im2col take convolution_param's fields as keywords, tuples count as lists, an empty list is a no-op, and protobuf messages may be
given where pycaffe wants dicts; everything pycaffe accepts gives the same NetParameter.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from google.protobuf.message import Message

from caffe.proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "assign_proto", "param_name_dict"]


def param_name_dict() -> dict[str, str]:
    """Layer type -> prefix of its ``<prefix>_param`` field, found from the parameter message
    names (``ConvolutionParameter`` in ``convolution_param`` gives Convolution -> convolution).
    Where two fields share a message the first declared wins: ``NormalizeParameter`` is SSD's
    ``norm_param`` before happynear's ``normalize_param``, which a NetSpec user names explicitly."""
    out: dict[str, str] = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if not field.name.endswith("_param") or field.message_type is None:
            continue
        type_name = field.message_type.name
        if type_name.endswith("Parameter"):
            out.setdefault(type_name[: -len("Parameter")], field.name[: -len("_param")])
    return out


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def assign_proto(proto: Any, name: str, val: Any) -> None:
    """Set field ``name`` of message ``proto`` from a Python value: dicts fill sub-messages,
    lists (of values or of dicts) extend repeated fields, a lone value given to a repeated
    field is treated as a one-element list."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not _is_seq(val):
        val = [val]
    if _is_seq(val):
        if not val:
            return
        if isinstance(val[0], dict):
            for item in val:
                sub = field.add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
        elif isinstance(val[0], Message):
            for item in val:
                field.add().CopyFrom(item)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(field, k, v)
    elif isinstance(val, Message):
        field.CopyFrom(val)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer (``fn``'s top number ``n``)."""

    def __init__(self, fn: "Function", n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> Any:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params: dict[str, Any]) -> None:
        self.fn._update(params)

    def _to_proto(self, layers: "OrderedDict[Any, Any]", names: dict[Any, str], autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, its bottom Tops and its parameters."""

    def __init__(self, type_name: str, inputs: tuple, params: dict[str, Any]) -> None:
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = int(self.params.pop("ntop", 1))
        self.in_place = bool(self.params.pop("in_place", False))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _auto_name(self, autonames: Counter) -> str:
        autonames[self.type_name] += 1
        return f"{self.type_name}{autonames[self.type_name]}"

    def _top_name(self, top: Top, names: dict[Any, str], autonames: Counter) -> str:
        if top not in names:
            names[top] = top.fn._auto_name(autonames)
        return names[top]

    def _layer_name(self, names: dict[Any, str], autonames: Counter) -> str:
        if self not in names:
            names[self] = (self._top_name(self.tops[0], names, autonames) if self.ntop > 0
                           else self._auto_name(autonames))
        return names[self]

    def _update(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def _to_proto(self, layers: "OrderedDict[Any, Any]", names: dict[Any, str], autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._layer_name(names, autonames)
        own = _param_names.get(self.type_name) or _SHARED_PARAMS.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_proto(layer, key, value)
                continue
            target = getattr(layer, own + "_param") if own else None
            if target is not None and key in type(target).DESCRIPTOR.fields_by_name:
                assign_proto(target, key, value)
            else:
                assign_proto(layer, key, value)
        layers[self] = layer


def to_proto(*tops: Top) -> Any:
    """A NetParameter with every layer needed to compute ``tops`` (all names automatic)."""
    layers: "OrderedDict[Any, Any]" = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops: ``n.conv1 = L.Convolution(n.data, ...)``; ``n.to_proto()`` names every
    assigned top (and top-less layer) after its attribute."""

    def __init__(self) -> None:
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self.tops[name]

    def __setitem__(self, key: str, value: Any) -> None:
        self.tops[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.tops[key]

    def __delitem__(self, key: str) -> None:
        del self.tops[key]

    def __delattr__(self, name: str) -> None:
        del self.tops[name]

    def keys(self) -> list[str]:
        return list(self.tops.keys())

    def vals(self) -> list[Any]:
        return list(self.tops.values())

    def update(self, name: str, params: dict[str, Any]) -> None:
        """Add or change parameters of the layer behind top ``name``."""
        self.tops[name]._update(params)

    def to_proto(self, verbose: bool = False) -> Any:
        """The NetParameter of every assigned top. ``verbose`` is NVCaffe's (caffe-jacinto's scripts pass
        it); NVCaffe ignores it, so does this."""
        names: dict[Any, str] = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: "OrderedDict[Any, Any]" = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.<Type>(*bottoms, **params)``: a layer of any type name."""

    def __getattr__(self, type_name: str) -> Any:
        if type_name.startswith("__") and type_name.endswith("__"):
            raise AttributeError(type_name)

        def make(*args: Any, **kwargs: Any) -> Any:
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        make.__name__ = type_name
        return make


class _ParamEnums:
    def __init__(self, prefix: str) -> None:
        self._message = getattr(caffe_pb2, prefix + "Parameter")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(self._message, name)


class Parameters:
    """``P.<Type>.<CONSTANT>``: enum values of ``<Type>Parameter``, e.g. ``P.Pooling.MAX``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _ParamEnums(name)


_param_names = param_name_dict()
# Beyond pycaffe: layer types that read another type's message take its fields as keywords too
# (``L.Deconvolution(x, num_output=8, kernel_size=4)``; pycaffe needs ``convolution_param=dict(...)``).
_SHARED_PARAMS = {"Deconvolution": "convolution", "Im2col": "convolution", "ReLU6": "relu6"}
layers = Layers()
params = Parameters()
