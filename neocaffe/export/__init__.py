"""Export a Net for deployment: ONNX (checked by onnxruntime), ``torch.export`` programs, BatchNorm folding.

```python
from neocaffe.export import load_deploy_net, export_onnx, export_pt2, fold_net
net = load_deploy_net("deploy.prototxt", "weights.caffemodel", batch=1)
export_onnx(net, "model.onnx")                    # opset=17, dynamic_batch=False
export_pt2(net, "model.pt2", dynamic_batch=True)  # torch.export.load("model.pt2").module()(x)["prob"]
folded, chains = fold_net(net)                    # Conv/IP + BatchNorm + Scale as one layer
```
The ONNX side needs the optional extra ``pip install neocaffe[onnx]`` (onnx, onnxruntime).
"""
from __future__ import annotations

from typing import Any

from neocaffe.export.deploy import load_deploy_net, parse_shapes, replace_data_layers
from neocaffe.export.fold import FoldedChain, affine_rule, fold_batchnorm, fold_net
from neocaffe.export.registry import ExportError, LayerNode, onnx_emitter

__all__ = ["load_deploy_net", "parse_shapes", "replace_data_layers", "fold_batchnorm", "fold_net", "affine_rule",
           "FoldedChain", "ExportError", "LayerNode", "onnx_emitter", "export_onnx", "export_pt2",
           "exportable_types"]


def export_onnx(net: Any, path: Any = None, **kwargs: Any) -> Any:
    """See :func:`neocaffe.export.onnx.export_onnx` (imported on use: onnx is an optional extra)."""
    from neocaffe.export.onnx import export_onnx as run

    return run(net, path, **kwargs)


def export_pt2(net: Any, path: Any = None, **kwargs: Any) -> Any:
    """See :func:`neocaffe.export.pt2.export_pt2`."""
    from neocaffe.export.pt2 import export_pt2 as run

    return run(net, path, **kwargs)


def exportable_types() -> list[str]:
    """Layer types with an ONNX exporter."""
    from neocaffe.export.onnx import exportable_types as run

    return run()
