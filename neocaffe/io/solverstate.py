"""Solver snapshots: ``.solverstate`` (SolverState binary) and ``.solverstate.h5``.

Binary SolverState fields read: ``iter``=1, ``learned_net``=2, ``history``=3 (BlobProto),
``current_step``=4 (SGDSolver::SnapshotSolverStateToBinaryProto / RestoreSolverStateFromBinaryProto), and SSD's
``minimum_loss``=5 (float) and ``iter_last_event``=6 (int32) of its ``plateau`` policy (weiliu89/caffe ``ssd``).
HDF5 (SnapshotSolverStateToHDF5): int32[1] datasets ``iter`` and ``current_step``, string ``learned_net``,
group ``history/<i>`` with one dataset per history blob; SSD's float[1] ``minimum_loss`` and int32[1]
``iter_last_event``. Those two are None when a file lacks them, and written only when not None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .binaryproto import LegacyShape, decode_blob, encode_blob
from .errors import CaffeFileError
from .files import atomic_output, atomic_path, is_hdf5, mapped_file
from .hdf5 import open_h5, read_numbered
from .wire import I32, LEN, VARINT, WireError, as_int32, decode_string, field_header, file_error, iter_fields, varint

__all__ = ["SolverState", "read_solverstate", "write_solverstate", "write_solverstate_h5"]


@dataclass
class SolverState:
    """A solver snapshot. ``history`` is in net parameter order (Adam/AdaDelta keep 2 per parameter);
    legacy-format blobs are 4-D with their dims in ``history_legacy_shapes``. ``learned_net`` is None
    when the file has none (Caffe then keeps the current weights). ``minimum_loss``/``iter_last_event``: SSD's
    ``plateau`` bookkeeping, None when absent (SSD then reads the proto defaults 1e38 and 0)."""

    iter: int
    learned_net: str | None
    history: list[np.ndarray]
    current_step: int = 0
    history_legacy_shapes: list[LegacyShape | None] = field(default_factory=list)
    minimum_loss: float | None = None
    iter_last_event: int | None = None

    def __post_init__(self) -> None:
        if not self.history_legacy_shapes:
            self.history_legacy_shapes = [None] * len(self.history)


def _decode(buf: object, fd: int | None = None) -> SolverState:
    it, step, learned, spans, minimum, last = 0, 0, None, [], None, None
    wires = {1: VARINT, 2: LEN, 3: LEN, 4: VARINT, 5: I32, 6: VARINT}
    for f, _, a, b in iter_fields(buf, 0, len(buf), "SolverState", wires):
        if f == 1:
            it = as_int32(a)
        elif f == 2:
            learned = decode_string(buf, a, b, "SolverState.learned_net")
        elif f == 3:
            spans.append((a, b))
        elif f == 4:
            step = as_int32(a)
        elif f == 5:
            minimum = float(np.frombuffer(bytes(buf[a:b]), dtype="<f4")[0])
        elif f == 6:
            last = as_int32(a)
    blobs = [decode_blob(buf, a, b, what=f"BlobProto (history {i})", fd=fd) for i, (a, b) in enumerate(spans)]
    return SolverState(it, learned, [x.data for x in blobs], step, [x.legacy_shape for x in blobs], minimum, last)


def _read_h5(name: str) -> SolverState:
    import h5py

    with open_h5(name, "Caffe HDF5 solver state") as h5:
        missing = [k for k in ("iter", "current_step", "history") if k not in h5]
        if missing:
            raise CaffeFileError(name, f"missing {', '.join(missing)}",
                                 expected="iter, current_step, learned_net and history/<i>",
                                 received=f"top-level entries {sorted(h5.keys())}")
        values = {}
        for key in ("iter", "current_step"):
            arr = np.asarray(h5[key][()]).reshape(-1)
            if arr.size != 1 or arr.dtype.kind not in "iu":
                raise CaffeFileError(name, f"'{key}' is not one integer", expected="int32[1]",
                                     received=f"{arr.dtype}{list(arr.shape)}")
            values[key] = int(arr[0])
        plateau = []
        for key, kinds in (("minimum_loss", "f"), ("iter_last_event", "iu")):
            arr = np.asarray(h5[key][()]).reshape(-1) if key in h5 else None
            if arr is not None and (arr.size != 1 or arr.dtype.kind not in kinds):
                raise CaffeFileError(name, f"'{key}' is not one {'number' if kinds == 'f' else 'integer'}",
                                     expected="float[1]" if kinds == "f" else "int32[1]",
                                     received=f"{arr.dtype}{list(arr.shape)}")
            plateau.append(None if arr is None else (float(np.float32(arr[0])) if kinds == "f" else int(arr[0])))
        learned = None
        if "learned_net" in h5:
            raw = h5["learned_net"][()]
            learned = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        history = h5["history"]
        if not isinstance(history, h5py.Group):
            raise CaffeFileError(name, "'history' is not a group", expected="group history/<i>")
        arrays = read_numbered(name, history, "history")
    return SolverState(values["iter"], learned, arrays, values["current_step"], [], *plateau)


def read_solverstate(path: str | os.PathLike[str]) -> SolverState:
    """Read a solver state, binary or HDF5 (recognised by content, not extension)."""
    name = os.fspath(path)
    if is_hdf5(name):
        return _read_h5(name)
    with mapped_file(name) as (buf, fd):
        if len(buf) == 0:
            raise CaffeFileError(name, "empty file", expected="a binary SolverState (.solverstate)")
        try:
            return _decode(buf, fd)
        except WireError as exc:
            raise file_error(name, exc, "SolverState", buf) from None


def write_solverstate(path: str | os.PathLike[str], state: SolverState) -> None:
    """Write a binary SolverState atomically, fields in the order C++ protobuf writes them."""
    with atomic_output(path) as f:
        f.write(field_header(1, VARINT) + varint(state.iter))
        if state.learned_net is not None:
            raw = state.learned_net.encode("utf-8")
            f.write(field_header(2, LEN, len(raw)) + raw)
        legacy = state.history_legacy_shapes or [None] * len(state.history)
        for arr, leg in zip(state.history, legacy):
            chunks, n = encode_blob(arr, legacy=leg is not None)
            f.write(field_header(3, LEN, n))
            for c in chunks:
                f.write(c)
        f.write(field_header(4, VARINT) + varint(state.current_step))
        if state.minimum_loss is not None:
            f.write(field_header(5, I32) + np.array([state.minimum_loss], dtype="<f4").tobytes())
        if state.iter_last_event is not None:
            f.write(field_header(6, VARINT) + varint(state.iter_last_event))


def _write_string(h5: object, key: str, text: str) -> None:
    """A scalar fixed-length NUL-terminated string dataset, as H5LTmake_dataset_string writes it."""
    import h5py

    raw = text.encode("utf-8")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(h5.id, key.encode(), tid, space)  # type: ignore[attr-defined]
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw) + 1}"))


def write_solverstate_h5(path: str | os.PathLike[str], state: SolverState) -> None:
    """Write a solver state in Caffe's HDF5 layout, atomically."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
            if state.learned_net is not None:
                _write_string(h5, "learned_net", state.learned_net)
            h5.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
            if state.iter_last_event is not None:  # SSD writes these two here, after current_step
                h5.create_dataset("iter_last_event", data=np.array([state.iter_last_event], dtype=np.int32))
            if state.minimum_loss is not None:
                h5.create_dataset("minimum_loss", data=np.array([state.minimum_loss], dtype=np.float32))
            group = h5.create_group("history")
            for i, arr in enumerate(state.history):
                group.create_dataset(str(i), data=np.ascontiguousarray(arr, dtype=np.float32))
