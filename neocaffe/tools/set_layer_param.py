"""Set one field on every layer of a type in a net prototxt (the fork's ``set_layer_param.py``),
e.g. the Sparsify coefficient of all Sparsify layers.

Usage: set_layer_param --net_template NET --layer_type Sparsify --param_value 1e-3
       [--param_name coef] [--output OUT]
``--param_name`` is a field of the type's parameter message (``coef`` of ``sparsify_param``) or a
dotted path from the LayerParameter (``convolution_param.num_output``). The default output is
``generated.prototxt`` beside the template, as in the fork.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from neocaffe.io.prototxt import read_net, write_prototxt

#: the field set when --param_name is omitted, per layer type
DEFAULT_FIELD = {"Sparsify": "coef", "Dropout": "dropout_ratio", "SymmetricRectify": "thre_decay"}


def _param_message_name(layer_type: str) -> str:
    """``Sparsify`` -> ``sparsify_param``, ``InnerProduct`` -> ``inner_product_param``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", layer_type).lower() + "_param"


def _convert(field: FieldDescriptor, text: str) -> Any:
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return float(text)
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"field {field.name} is a bool; received '{text}'")
        return text.lower() in ("true", "1")
    if field.type == FieldDescriptor.TYPE_STRING:
        return text
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_name[text].number if text in field.enum_type.values_by_name else int(text)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        raise ValueError(f"field {field.name} is a message; name one of its scalar fields")
    return int(text)


def set_layer_param(net: Any, layer_type: str, param_name: str, value: str) -> int:
    """Set ``param_name`` to ``value`` on every layer of ``layer_type``; returns how many changed."""
    path = param_name.split(".") if "." in param_name else [_param_message_name(layer_type), param_name]
    count = 0
    for layer in net.layer:
        if layer.type != layer_type:
            continue
        msg = layer
        for part in path[:-1]:
            if part not in msg.DESCRIPTOR.fields_by_name:
                raise ValueError(f"layer '{layer.name}' ({layer_type}): no field '{part}' in {msg.DESCRIPTOR.name}")
            msg = getattr(msg, part)
        field = msg.DESCRIPTOR.fields_by_name.get(path[-1])
        if field is None:
            known = ", ".join(msg.DESCRIPTOR.fields_by_name)
            raise ValueError(f"{msg.DESCRIPTOR.name} has no field '{path[-1]}'; fields: {known}")
        if field.is_repeated:
            getattr(msg, path[-1])[:] = [_convert(field, value)]
        else:
            setattr(msg, path[-1], _convert(field, value))
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net_template", required=True)
    ap.add_argument("--layer_type", required=True)
    ap.add_argument("--param_value", required=True)
    ap.add_argument("--param_name", default=None)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    name = args.param_name or DEFAULT_FIELD.get(args.layer_type)
    if not name:
        ap.error(f"--param_name is required for layer type {args.layer_type}")
    try:
        net = read_net(args.net_template, upgrade=False)
        n = set_layer_param(net, args.layer_type, name, args.param_value)
    except (ValueError, OSError) as e:
        print(f"set_layer_param: {e}", file=sys.stderr)
        return 1
    if n == 0:
        print(f"set_layer_param: {args.net_template}: no layer of type {args.layer_type}", file=sys.stderr)
        return 1
    out = Path(args.output) if args.output else Path(args.net_template).parent / "generated.prototxt"
    try:
        write_prototxt(net, out)  # atomic: a failed write leaves any previous file as it was
    except OSError as e:
        print(f"set_layer_param: cannot write {out}: {e}", file=sys.stderr)
        return 1
    print(f"set {name} = {args.param_value} on {n} {args.layer_type} layer(s) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
