"""The base layer: blob-count contracts, parameter blobs, shape inference, phase.

A layer is a ``torch.nn.Module`` built from its ``LayerParameter`` (the only configuration) and the
shapes of its bottoms. ``forward(*bottoms)`` returns its tops; gradients come from autograd, with
``torch.autograd.Function`` subclasses wherever Caffe's backward differs from the mathematical one
(ReLU at 0, MAX-pool ties, Sparsify, ...). Parameter blobs live in ``self.blobs`` in Caffe's order and
Caffe's shapes, so ``.caffemodel`` files map onto them one to one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

Shape = tuple[int, ...]

TRAIN = 0  # caffe_pb2.TRAIN
TEST = 1  # caffe_pb2.TEST


@dataclass
class Example:
    """A small, valid configuration of a layer type for the registry-wide contract test.

    ``param``: the LayerParameter in prototxt text (name, type, bottoms, tops and the type's
    parameters). ``bottoms``: one array per bottom (float64 values; integer-valued where the layer
    reads labels or indices). ``grad_bottoms``: indices of the bottoms a float64 gradient check
    covers (``()`` for none, e.g. Accuracy). ``grad_params``: also check parameter gradients.
    ``phase``: net phase. ``gradcheck_eps``/``atol``: for kinks (e.g. ReLU at 0) keep inputs away
    from them rather than loosening tolerances.
    """

    param: str
    bottoms: list[Any]
    grad_bottoms: tuple[int, ...] = (0,)
    grad_params: bool = True
    phase: int = 1
    atol: float = 1e-6
    #: called on the built layer before its forward (e.g. MemoryData's ``reset`` with arrays)
    prepare: Callable[[Any], None] | None = None
    #: what the layer is told of the net around it, for types that declare ``takes_net``
    net: NetSoFar | None = None


@dataclass(frozen=True)
class NetSoFar:
    """What a layer type that declares ``takes_net`` is told, at construction, of the net it is built
    into (Caffe hands such layers ``net_``, e.g. HED's Crop, which walks the layers below it).

    ``written``: the NetParameter as written (every phase, before filtering). ``layers``: the
    LayerParameters of the layers wired before this one, in order, split layers included (their
    ``bottom``/``top`` are the wired blob names: Caffe's ``bottom_vecs``/``top_vecs`` at LayerSetUp).
    ``shapes``: the shape of every blob made so far.
    """

    written: Any
    layers: tuple[Any, ...] = ()
    shapes: Mapping[str, Shape] = field(default_factory=dict)


class LayerSetupError(ValueError):
    """A layer's configuration or bottoms are not what its type accepts."""


@dataclass
class TopRef:
    """The value a top blob holds when this layer's backward runs, for layers whose Caffe backward
    reads top data: when later layers work in place on that blob, the data is theirs (``sp_conv5``
    then ``relu5`` in place on ``conv5``: Sparsify's backward sees relu(conv5)). The executor that ran
    the layer fills it; ``None`` means the layer's own output.
    """

    value: Tensor | None = None

    def get(self, own: Tensor) -> Tensor:
        return own if self.value is None else self.value


@dataclass(frozen=True)
class LayerCall:
    """What one run of a layer may know of the net around it, passed explicitly by the executor
    (``layer(*bottoms, call=call)``) to layer types that declare ``takes_call``.

    ``tops``: one :class:`TopRef` per top (empty: the layer's own outputs). ``accumulate``: the
    executor's backward accumulates parameter diffs into ``param.grad`` (Caffe's semantics), so a
    layer may add its parameter diff there in place, as Caffe's gemm with beta = 1 does, and give
    autograd None for it. Outside an executor (``torch.autograd.grad``, gradcheck) both stay off.
    """

    tops: tuple[TopRef, ...] = ()
    accumulate: bool = False

    def top(self, j: int) -> TopRef:
        return self.tops[j] if j < len(self.tops) else TopRef()


#: a run with nothing known of the net around the layer
PLAIN = LayerCall()


@dataclass(frozen=True)
class BuildContext:
    """Facts of the run a net is built for, passed to every layer at construction.

    ``rank`` / ``world``: data-parallel processes (data layers of a train net read slice ``rank`` of
    every ``world`` batches; see :mod:`neocaffe.data.shard`). ``data_workers``: worker processes per
    data layer (0: read in process; None: ``NEOCAFFE_DATA_WORKERS``, else by the source's size; see
    :func:`neocaffe.data.prefetch.default_workers`).
    """

    rank: int = 0
    world: int = 1
    data_workers: int | None = None

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world) and world >= 1; received rank {self.rank}, world {self.world}")
        if self.data_workers is not None and self.data_workers < 0:
            raise ValueError(f"data_workers must be >= 0 or None; received {self.data_workers}")


def accumulates_in_place(param: Tensor, call: LayerCall) -> bool:
    """Whether a backward may add ``param``'s diff into ``param.grad`` itself (see :class:`LayerCall`)."""
    return call.accumulate and param.grad is not None and not param.grad.requires_grad


class Layer(nn.Module):
    """Base class of every Caffe layer.

    Subclasses set the blob-count contract (Caffe's ``ExactNumBottomBlobs`` etc.), implement
    ``setup`` (LayerSetUp: read the param, create ``self.blobs``), ``reshape`` (top shapes from
    bottom shapes) and ``forward``.
    """

    type_name: ClassVar[str] = ""
    exact_bottoms: ClassVar[int | None] = None
    min_bottoms: ClassVar[int | None] = None
    max_bottoms: ClassVar[int | None] = None
    exact_tops: ClassVar[int | None] = None
    min_tops: ClassVar[int | None] = None
    max_tops: ClassVar[int | None] = None
    #: loss layers get ``loss_weight: 1`` on top 0 by default (Caffe's LossLayer)
    is_loss: ClassVar[bool] = False
    #: Caffe allows this layer's top to be its bottom (in place)
    allow_in_place: ClassVar[bool] = True
    #: data layers produce tensors on the host; the net moves them to its device
    produces_host_data: ClassVar[bool] = False
    #: ``forward`` takes a keyword ``call`` (:class:`LayerCall`): its backward reads top data or
    #: accumulates parameter diffs in place
    takes_call: ClassVar[bool] = False
    #: the top's shape depends on the bottoms' values, not only on their shapes (a detection list): a
    #: traced graph would keep one input's row count, so the frozen mode runs such a net on the lean path
    value_dependent_shape: ClassVar[bool] = False
    #: the builder passes ``net`` (:class:`NetSoFar`): ``setup`` reads it as ``self.net_so_far``
    #: (None when the layer is built alone); it is dropped after setup
    takes_net: ClassVar[bool] = False

    def __init__(self, param: Any, bottom_shapes: Sequence[Shape], phase: int = TEST,
                 context: BuildContext | None = None, net: NetSoFar | None = None) -> None:
        super().__init__()
        self.param = param
        self.name: str = param.name
        self.phase = phase
        self.context = context if context is not None else BuildContext()
        self.blobs = nn.ParameterList()
        self.n_tops = len(param.top)  # plain int: forward code read by torch.compile avoids protobuf
        self._check_blob_counts(len(bottom_shapes), len(param.top))
        self.net_so_far = net
        self.setup([tuple(int(d) for d in s) for s in bottom_shapes])
        self.net_so_far = None

    # -- contract -------------------------------------------------------------------------------
    def _check_blob_counts(self, n_bottom: int, n_top: int) -> None:
        def bad(what: str, n: int, rule: str, k: int) -> LayerSetupError:
            return LayerSetupError(
                f"layer '{self.name}' ({self.type_name}) takes {rule} {k} {what} blob(s); received {n}"
            )

        for what, n, exact, lo, hi in (
            ("bottom", n_bottom, self.exact_bottoms, self.min_bottoms, self.max_bottoms),
            ("top", n_top, self.exact_tops, self.min_tops, self.max_tops),
        ):
            if exact is not None and n != exact:
                raise bad(what, n, "exactly", exact)
            if lo is not None and n < lo:
                raise bad(what, n, "at least", lo)
            if hi is not None and n > hi:
                raise bad(what, n, "at most", hi)

    def error(self, message: str) -> LayerSetupError:
        """An error naming this layer and its type."""
        return LayerSetupError(f"layer '{self.name}' ({self.type_name}): {message}")

    # -- to override ----------------------------------------------------------------------------
    def setup(self, bottom_shapes: list[Shape]) -> None:
        """Caffe's LayerSetUp: read the layer's parameter message, create parameter blobs."""

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """Top shapes for these bottom shapes (Caffe's Reshape). Default: every top like bottom 0."""
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, *bottoms: Tensor) -> Tensor | tuple[Tensor, ...] | list[Tensor]:  # noqa: D102
        raise NotImplementedError

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """For the lean inference path (nothing recorded): a function of bottoms shaped, typed and
        placed like ``bottoms`` that returns what ``forward`` returns, bit for bit, with the per-call
        decisions (geometry, kernel choice) taken once here. It may hold the parameter blobs (the
        Parameter objects, never their data: weights copied in, reassigned or shared later are what it
        reads). None: the path calls ``forward``."""
        return None

    def weights_changed(self) -> None:
        """Its blobs' values were (or may have been) written in place (``Net.weights_changed``): drop
        whatever was derived from them (e.g. ``conv_mode``'s squeezed weights). Most layers derive nothing."""

    def lean_kernel_in_place(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """As ``lean_kernel``, for a layer whose top is its bottom (``top == bottom``) when the lean
        path knows no other blob holds that tensor: the function may overwrite bottom 0 and return it,
        with ``forward``'s values bit for bit (Caffe's in-place layers, without a new tensor).
        None: the path runs ``lean_kernel`` or ``forward`` instead."""
        return None

    @classmethod
    def examples(cls) -> list[Example]:
        """Configurations the contract test runs through this type (at least one per type)."""
        raise NotImplementedError(f"layer type {cls.type_name} defines no contract examples")

    # -- helpers --------------------------------------------------------------------------------
    def add_blob(self, value: Tensor) -> nn.Parameter:
        """Append a parameter blob (float32, Caffe's shape) and return it."""
        p = nn.Parameter(value.detach().to(torch.float32).contiguous())
        self.blobs.append(p)
        return p

    def resume_state(self) -> dict | None:
        """What this layer must carry across a snapshot for a resumed run to continue exactly (a data
        layer's read position and seeds); None: nothing. Plain Python values and tensors only."""
        return None

    def load_resume_state(self, state: dict) -> None:
        """Continue from ``resume_state()``'s result (called after setup, before the next forward)."""

    def allow_force_backward(self, bottom: int) -> bool:
        """Whether ``force_backward`` gives bottom ``bottom`` a diff (Caffe's AllowForceBackward)."""
        return True

    def default_loss_weights(self) -> list[float]:
        """Loss weight per top when the prototxt sets none (Caffe: 1 on top 0 of loss layers)."""
        n = len(self.param.top)
        return [1.0 if (self.is_loss and i == 0) else 0.0 for i in range(n)]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, type={self.type_name!r}"


def legacy_shape(shape: Shape, layer: Layer, what: str = "bottom") -> tuple[int, int, int, int]:
    """Caffe's Blob::num/channels/height/width (LegacyShape): axes past the last count as 1; a blob of
    more than 4 axes is an error naming ``what``."""
    if len(shape) > 4:
        raise layer.error(f"{what} must have at most 4 axes (Caffe's legacy num, channels, height, width); "
                          f"received shape {tuple(shape)}")
    return tuple(int(d) for d in shape) + (1,) * (4 - len(shape))  # type: ignore[return-value]


def canonical_axis(axis: int, n_axes: int, layer: Layer, field: str = "axis") -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end. ``field`` names the
    parameter in the error (e.g. ``convolution_param.axis``)."""
    if not -n_axes <= axis < max(n_axes, 1):
        raise layer.error(f"{field} {axis} out of range for a {n_axes}-D bottom")
    return axis + n_axes if axis < 0 else axis
