"""Running out of memory, reported as Caffe users need it: which net, on which device, during what,
and what its blobs and parameters take."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from neocaffe.graph.errors import NetError
from neocaffe.layers.blob_shape import allocation_failure, describe_bytes

if TYPE_CHECKING:
    from neocaffe.graph.net import Net


def out_of_memory(net: "Net", what: str, err: BaseException) -> NetError:
    """An allocator's failure during ``what``, as an error naming the net, its largest blob and
    what its blobs and parameters take in all."""
    sizes = {n: math.prod(s) * 4 for n, s in net.blob_shapes.items()}
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    big = max(sizes, key=sizes.__getitem__) if sizes else None
    largest = f"; its largest blob is '{big}' {net.blob_shapes[big]} ({describe_bytes(sizes[big])})" if big else ""
    return NetError(f"{net.source}: net '{net.name}' ran out of memory on {net.device} during {what}: its "
                    f"blobs take {describe_bytes(sum(sizes.values()))} and its parameters "
                    f"{describe_bytes(params)}{largest}; expected them to fit (use a smaller batch_size "
                    f"or input shape). {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


class reported:
    """``with reported(net, what):`` an allocator's failure inside becomes ``out_of_memory``'s error;
    other errors pass (a class, not a generator: it wraps every forward)."""

    __slots__ = ("net", "what")

    def __init__(self, net: "Net", what: str) -> None:
        self.net, self.what = net, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: Any) -> None:
        if isinstance(err, (MemoryError, RuntimeError)) and allocation_failure(err):
            raise out_of_memory(self.net, self.what, err) from err


__all__ = ["out_of_memory", "reported"]
