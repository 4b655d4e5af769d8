"""D-X-Y/caffe-faster-rcnn's JSON configuration (``FrcnnParam``) as a per-layer frozen object.

Semantics of D-X-Y/caffe-faster-rcnn, branch ``dev`` @ 1ae964d135bbfd9d04258b15b95c9dbb29a19149:
``src/caffe/FRCNN/util/frcnn_param.cpp`` (the keys, ``FrcnnParam::load_param``) and
``src/caffe/FRCNN/util/frcnn_config.cpp`` (the parsing rules): the file is one JSON object read with
boost's property tree; every value is a string (numbers written bare read the same); each key below is
required (the fork stops with ``Can not find target_key : <key>``); floats are read with C's ``atof``,
ints and flags with ``atoi`` (``"1.0"`` reads 1, ``"0.7"`` reads 0 for an int), vectors split on ``,``,
each piece through ``atof``. Line breaks inside a string (the fork's ``anchors``) are accepted, as boost
accepts them. Keys the fork does not read are ignored.

Deviation (process-wide state): in the fork ``FrcnnParam`` is a set of process-wide statics that the
``FrcnnRoiData`` layer (``window_data_param.config``) or ``test_frcnn``'s ``--default_c`` loads; every
FRCNN layer of every net in the process reads whatever was loaded last, so when two layers (or two
nets) name different files, the last load wins for all of them. Here each layer reads its file once at
setup into its own :class:`FrcnnConfig`: two data layers naming different files each keep their own, and
the other FRCNN layers take the file named by the nearest data layer before them in their net (see
``neocaffe/layers/_frcnn_common.py``), so nets built in one process do not change each other.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

_NUM = re.compile(r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan)", re.IGNORECASE)
_INT = re.compile(r"^\s*[+-]?\d+")


def atof(text: str) -> float:
    """C's ``atof``: the longest leading number, 0 when there is none."""
    m = _NUM.match(text)
    return float(m.group(0)) if m else 0.0


def atoi(text: str) -> int:
    """C's ``atoi``: the leading integer, 0 when there is none."""
    m = _INT.match(text)
    return int(m.group(0)) if m else 0


#: how each key is read: float, int, bool (atoi != 0), vector (comma-separated atof), str
_KINDS = {
    "scales": "vector", "max_size": "float", "batch_size": "float", "fg_fraction": "float", "fg_thresh": "float",
    "bg_thresh_hi": "float", "bg_thresh_lo": "float", "use_flipped": "bool", "bbox_reg": "bool",
    "bbox_thresh": "float", "snapshot_infix": "str", "bbox_normalize_targets": "bool",
    "bbox_inside_weights": "vector4", "bbox_normalize_means": "vector4", "bbox_normalize_stds": "vector4",
    "rpn_positive_overlap": "float", "rpn_negative_overlap": "float", "rpn_clobber_positives": "bool",
    "rpn_fg_fraction": "float", "rpn_batchsize": "int", "rpn_nms_thresh": "float", "rpn_pre_nms_top_n": "int",
    "rpn_post_nms_top_n": "int", "rpn_min_size": "float", "rpn_bbox_inside_weights": "vector4",
    "rpn_positive_weight": "float", "rpn_allowed_border": "float", "test_scales": "vector",
    "test_max_size": "float", "test_nms": "float", "test_bbox_reg": "boolf", "test_rpn_nms_thresh": "float",
    "test_rpn_pre_nms_top_n": "int", "test_rpn_post_nms_top_n": "int", "test_rpn_min_size": "float",
    "pixel_means": "vector3", "rng_seed": "int", "eps": "float", "inf": "float", "feat_stride": "int",
    "anchors": "vector", "test_score_thresh": "float", "n_classes": "int", "iter_test": "int",
}


@dataclass(frozen=True)
class FrcnnConfig:
    """One configuration file's values (the fork's ``FrcnnParam``). The defaults are the fork's
    ``examples/FRCNN/config/default_config.json``; a file read by :func:`load_frcnn_config` must give
    every key, as in the fork."""

    scales: tuple[float, ...] = (600.0,)
    max_size: float = 1000.0
    batch_size: float = 128.0
    fg_fraction: float = 0.25
    fg_thresh: float = 0.5
    bg_thresh_hi: float = 0.5
    bg_thresh_lo: float = 0.1
    use_flipped: bool = False
    bbox_reg: bool = True
    bbox_thresh: float = 0.5
    snapshot_infix: str = ""
    bbox_normalize_targets: bool = True
    bbox_inside_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    bbox_normalize_means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    bbox_normalize_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    rpn_positive_overlap: float = 0.7
    rpn_negative_overlap: float = 0.3
    rpn_clobber_positives: bool = False
    rpn_fg_fraction: float = 0.5
    rpn_batchsize: int = 256
    rpn_nms_thresh: float = 0.7
    rpn_pre_nms_top_n: int = 12000
    rpn_post_nms_top_n: int = 2000
    rpn_min_size: float = 16.0
    rpn_bbox_inside_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    rpn_positive_weight: float = -1.0
    rpn_allowed_border: float = 0.0
    test_scales: tuple[float, ...] = (600.0,)
    test_max_size: float = 1000.0
    test_nms: float = 0.3
    test_bbox_reg: bool = True
    test_rpn_nms_thresh: float = 0.7
    test_rpn_pre_nms_top_n: int = 6000
    test_rpn_post_nms_top_n: int = 300
    test_rpn_min_size: float = 16.0
    pixel_means: tuple[float, ...] = (102.9801, 115.9465, 122.7717)
    rng_seed: int = 3
    eps: float = 1e-14
    inf: float = 1e8
    feat_stride: int = 16
    anchors: tuple[float, ...] = (-84, -40, 100, 56, -176, -88, 192, 104, -360, -184, 376, 200,
                                  -56, -56, 72, 72, -120, -120, 136, 136, -248, -248, 264, 264,
                                  -36, -80, 52, 96, -80, -168, 96, 184, -168, -344, 184, 360)
    test_score_thresh: float = 0.2
    n_classes: int = 21
    iter_test: int = -1
    #: the file it was read from ("" for the defaults)
    path: str = ""

    @property
    def n_anchors(self) -> int:
        """``anchors.size() / 4``."""
        return len(self.anchors) // 4


def _value(kind: str, text: str) -> Any:
    if kind == "float":
        return atof(text)
    if kind == "int":
        return atoi(text)
    if kind == "bool":
        return atoi(text) != 0
    if kind == "boolf":  # test_bbox_reg: static_cast<bool>(extract_float(...))
        return atof(text) != 0.0
    if kind == "str":
        return text
    return tuple(atof(p) for p in text.split(","))


def parse_frcnn_config(text: str, path: str = "<string>") -> FrcnnConfig:
    """The configuration in JSON ``text`` (see the module docstring). ValueError naming ``path`` and the
    key when the text is not a JSON object or a key is missing or a fixed-length vector is too short."""
    try:
        obj = json.loads(text, strict=False)  # strict=False: line breaks inside strings, as boost reads them
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not a JSON object: {e.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object of FRCNN settings; received {type(obj).__name__}")
    values: dict[str, Any] = {"path": path}
    for key, kind in _KINDS.items():
        if key not in obj:
            raise ValueError(f"{path}: Can not find target_key : {key} (every key of FrcnnParam is required)")
        raw = obj[key]
        text_value = raw if isinstance(raw, str) else ("1" if raw is True else "0" if raw is False else str(raw))
        v = _value(kind.rstrip("34"), text_value)
        if kind[-1] in "34" and len(v) < int(kind[-1]):
            raise ValueError(f"{path}: '{key}' needs {kind[-1]} comma-separated values; received {raw!r}")
        values[key] = v[: int(kind[-1])] if kind[-1] in "34" else v
    return FrcnnConfig(**values)


def load_frcnn_config(path: str) -> FrcnnConfig:
    """Read the configuration file ``path`` (``window_data_param.config``). OSError/ValueError name it."""
    with open(path, encoding="utf-8") as f:
        return parse_frcnn_config(f.read(), path)


def config_keys() -> tuple[str, ...]:
    """The keys a configuration file must give (``FrcnnParam::load_param``'s order)."""
    return tuple(_KINDS)


assert set(_KINDS) == {f.name for f in fields(FrcnnConfig)} - {"path"}
