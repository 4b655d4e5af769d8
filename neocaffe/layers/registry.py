"""The layer registry: Caffe type string -> layer class (``@register_layer("ReLU")``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from neocaffe.layers.base import Layer

_LAYERS: dict[str, type["Layer"]] = {}
T = TypeVar("T", bound=type)


class UnknownLayerError(ValueError):
    """A prototxt names a layer type that no module registered."""


def register_layer(type_name: str) -> Callable[[T], T]:
    """Class decorator registering a layer under Caffe's ``LayerParameter.type`` string."""

    def deco(cls: T) -> T:
        if type_name in _LAYERS:
            raise ValueError(
                f"layer type '{type_name}' registered twice: {_LAYERS[type_name].__module__} and {cls.__module__}"
            )
        cls.type_name = type_name  # type: ignore[attr-defined]
        _LAYERS[type_name] = cls  # type: ignore[assignment]
        return cls

    return deco


def _ensure_loaded() -> None:
    import neocaffe.layers  # noqa: F401  (imports every layer module)


def get_layer_class(type_name: str, layer_name: str = "", where: str = "") -> type["Layer"]:
    """The class for ``type_name``; the error lists the known types (Caffe's LayerRegistry message)."""
    _ensure_loaded()
    try:
        return _LAYERS[type_name]
    except KeyError:
        loc = f" ({where})" if where else ""
        raise UnknownLayerError(
            f"Unknown layer type '{type_name}' in layer '{layer_name}'{loc}; known types: {', '.join(layer_types())}"
        ) from None


def check_layer_types(net_param: Any, source: Any = None,
                      included: Callable[[Any], bool] | None = None) -> None:
    """Raise one `UnknownLayerError` naming every layer of ``net_param`` whose type is not registered,
    not only the first. ``source``: the net's ``NetSource`` (from ``read_net_with_source``: each
    layer's ``file:line:col``) or a file name. ``included``: which layers count (e.g. those the
    NetState keeps; Caffe never creates the others). A net builder calls this before it creates any
    layer."""
    _ensure_loaded()
    where = getattr(source, "where", None)
    filename = getattr(source, "filename", source) or ""
    unknown = []
    for i, lp in enumerate(net_param.layer):
        if lp.type in _LAYERS or (included is not None and not included(lp)):
            continue
        unknown.append((where(i) if where is not None else filename, lp))
    if not unknown:
        return
    known = f"known types: {', '.join(layer_types())}"
    if len(unknown) == 1:
        loc, lp = unknown[0]
        raise UnknownLayerError(f"Unknown layer type '{lp.type}' in layer '{lp.name}'"
                                f"{f' ({loc})' if loc else ''}; {known}")
    lines = [f"{loc + ': ' if loc else ''}unknown layer type '{lp.type}' in layer '{lp.name}'" for loc, lp in unknown]
    raise UnknownLayerError(f"{filename or '<net>'}: {len(unknown)} unknown layer types:\n  " + "\n  ".join(lines)
                            + f"\n{known}")


def layer_types() -> list[str]:
    """Every registered type string, sorted (pycaffe's ``caffe.layer_type_list()``)."""
    _ensure_loaded()
    return sorted(_LAYERS)
