"""NetState rules: which layers a net of a given phase, level and stages holds (Caffe's FilterNet)."""
from __future__ import annotations

from typing import Any, Iterable

from neocaffe.proto import caffe_pb2


def make_state(phase: int, level: int = 0, stages: Iterable[str] = (), base: Any = None) -> Any:
    """A NetState: ``base`` (e.g. ``NetParameter.state``) with phase and level set, stages appended."""
    state = caffe_pb2.NetState()
    if base is not None:
        state.CopyFrom(base)
    state.phase = phase
    state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    return state


def state_meets_rule(state: Any, rule: Any) -> bool:
    """Caffe's StateMeetsRule: phase, min/max level, all of ``stage``, none of ``not_stage``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer: Any, state: Any) -> bool:
    """Whether ``layer`` (LayerParameter) belongs to a net in ``state``."""
    if len(layer.include) and len(layer.exclude):
        raise ValueError(
            f"layer '{layer.name}': specify either include rules or exclude rules; not both"
        )
    if len(layer.include):
        return any(state_meets_rule(state, r) for r in layer.include)
    return not any(state_meets_rule(state, r) for r in layer.exclude)


def filter_net(net: Any, state: Any, kept: list[int] | None = None) -> Any:
    """A copy of ``net`` (NetParameter) holding only the layers ``state`` includes; ``kept``, if
    given, receives their indices in ``net``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for k, layer in enumerate(net.layer):
        if layer_included(layer, state):
            out.layer.add().CopyFrom(layer)
            if kept is not None:
                kept.append(k)
    out.state.CopyFrom(state)
    return out
