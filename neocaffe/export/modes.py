"""Opt-in inference speed modes for a built Net (fp32 eager stays the default and Caffe-exact).

==================  =================================================================================
mode                what it does, and how far it may move the numbers
==================  =================================================================================
``fold_bn``         Convolution/InnerProduct + BatchNorm + Scale folded into one layer at load
                    (:mod:`neocaffe.export.fold`, float64 folding): outputs within ~1e-6 of the
                    output's scale; the folded BatchNorm/Scale layers and their blobs are gone.
``channels_last``   NHWC layout of 4-D weights and input blobs (oneDNN's preferred layout on the CPU):
                    the same arithmetic in another order, within float32 rounding.
``frozen``          per input shape, the fastest of the lean path, the layers traced, frozen and
                    optimised for inference, and for small nets the layers as one C call
                    (:mod:`neocaffe.graph.frozen`): fused and prepacked kernels, within 1e-5 of the
                    output's scale (3e-5 for oneDNN's optimized graph); only the outputs are computed.
``threads``         ``torch.set_num_threads(threads)`` (0: leave PyTorch's default).
==================  =================================================================================

The modes come from arguments (pycaffe's ``caffe.Net(..., fold_bn=True)``, ``caffe test -fold_bn``)
or, unset there, the environment: ``NEOCAFFE_FOLD_BN``, ``NEOCAFFE_CHANNELS_LAST``,
``NEOCAFFE_FROZEN``, ``NEOCAFFE_THREADS``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("neocaffe.export")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class InferenceModeError(ValueError):
    """A mode given a value it does not take."""


def _env_bool(name: str) -> bool:
    v = os.environ.get(name, "").strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise InferenceModeError(f"{name} must be one of 1/0/true/false/yes/no/on/off; received '{v}'")


@dataclass(frozen=True)
class InferenceModes:
    """The opt-in inference modes of one net (see the module docstring)."""

    fold_bn: bool = False
    channels_last: bool = False
    frozen: bool = False
    threads: int = 0

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise InferenceModeError(f"threads must be >= 0; received {self.threads}")

    @classmethod
    def resolve(cls, fold_bn: bool | None = None, channels_last: bool | None = None,
                frozen: bool | None = None, threads: int | None = None) -> "InferenceModes":
        """The modes given, the environment's where one is None."""
        env_threads = os.environ.get("NEOCAFFE_THREADS", "").strip()
        try:
            threads = threads if threads is not None else int(env_threads or 0)
        except ValueError:
            raise InferenceModeError(f"NEOCAFFE_THREADS must be an integer; received '{env_threads}'") from None
        return cls(fold_bn if fold_bn is not None else _env_bool("NEOCAFFE_FOLD_BN"),
                   channels_last if channels_last is not None else _env_bool("NEOCAFFE_CHANNELS_LAST"),
                   frozen if frozen is not None else _env_bool("NEOCAFFE_FROZEN"), threads)

    @property
    def any(self) -> bool:
        return self.fold_bn or self.channels_last or self.frozen or self.threads > 0

    def names(self) -> list[str]:
        out = [n for n in ("fold_bn", "channels_last", "frozen") if getattr(self, n)]
        return out + ([f"threads={self.threads}"] if self.threads else [])

    def apply(self, net: Any) -> Any:
        """``net`` in these modes: a new Net when ``fold_bn`` folds something, else ``net`` itself."""
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.fold_bn:
            from neocaffe.export.fold import fold_net

            folded, chains = fold_net(net)
            if chains:
                log.info("fold_bn: %d chains folded (%s)", len(chains),
                         ", ".join("+".join([c.layer, *c.removed]) for c in chains[:4]) + (" ..." if len(chains) > 4 else ""))
                folded.set_keep_blob_diffs(net.keep_blob_diffs)
                net = folded
        if self.channels_last:
            net.set_memory_format(torch.channels_last)
        if self.frozen:
            net.set_frozen(True)
        return net


__all__ = ["InferenceModes", "InferenceModeError"]
