"""neocaffe.data.transfer.PinAhead: a thread that pins batch k + 1's data while batch k trains.

On the CPU the pinning is stood in for by a copy (``Tensor.pin_memory`` needs CUDA); what is checked
is the part that is not CUDA's: the batches come in order and equal to the prefetcher's own, the
workers' shared buffers go back as each batch is copied (else the workers would wait forever for a
free slot), ``position`` counts what was handed out, an error arrives in its place in the order,
and after ``close`` reading goes on at ``position``. The CUDA case is in the gpu test below.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from neocaffe.data.datum import DatumError
from neocaffe.data.prefetch import Prefetcher
from neocaffe.data.transfer import PinAhead


class Counting:
    """Batch k: data filled with k (in the worker's shared buffers when it has them), label k."""

    alloc = None

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def make(self, k: int) -> dict:
        if k == self.fail_at:
            raise DatumError(f"record {k} is damaged")
        data = self.alloc((2, 3), np.uint8) if self.alloc is not None else np.empty((2, 3), np.uint8)
        data[...] = k % 256
        return {"data": data, "labels": np.array([k], np.float32)}


class CopyingPin:
    """Stands in for ``Tensor.pin_memory``: a copy, made on the pinning thread."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        self.threads.add(threading.current_thread().name)
        return t.clone()


def _pinned(maker: Counting, workers: int = 2, start: int = 0) -> tuple[PinAhead, CopyingPin]:
    pin = CopyingPin()
    return PinAhead(Prefetcher(maker, workers, depth=2, name="d", start=start), "cpu", pin=pin), pin


def test_batches_come_in_order_copied_off_the_shared_buffers_which_go_back():
    ahead, pin = _pinned(Counting())
    try:
        # 40 batches through rings of a few slots each: only slots given back let the workers go on
        for k in range(40):
            batch = ahead.next()
            assert "_slot" not in batch and batch["data"].shape == (2, 3)
            assert int(batch["data"][0, 0]) == k and float(batch["labels"][0]) == k
            ahead.release(batch)
            assert ahead.position == k + 1
        assert pin.threads == {"neocaffe-pin-d"}  # the copies ran on the pinning thread
        deadline = time.monotonic() + 10
        while ahead.source.position < ahead.position + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        # read ahead: two queued and one waiting for room (never more), and the position does not count them
        assert ahead.source.position == ahead.position + 3
    finally:
        ahead.close()


def test_close_then_next_reads_on_at_the_position_handed_out():
    ahead, _ = _pinned(Counting(), start=5)
    try:
        assert [int(ahead.next()["labels"][0]) for _ in range(3)] == [5, 6, 7]
        ahead.close()  # batches 8, 9, ... were pinned ahead: they are dropped, not skipped
        assert ahead.position == 8 and ahead.source.position == 8
        assert [int(ahead.next()["labels"][0]) for _ in range(3)] == [8, 9, 10]
    finally:
        ahead.close()


def test_an_error_of_the_source_is_raised_in_its_place_as_itself():
    ahead, _ = _pinned(Counting(fail_at=3))
    try:
        assert [int(ahead.next()["labels"][0]) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(DatumError, match="record 3 is damaged"):
            ahead.next()
        assert ahead.position == 3
    finally:
        ahead.close()


def test_a_pin_ahead_dropped_without_close_ends_its_thread_and_workers():
    """A net dropped without close(): the thread holds no reference to its PinAhead, whose finalizer
    stops the thread; the prefetcher, then unreferenced, stops its worker processes."""
    import gc
    import multiprocessing

    ahead, _ = _pinned(Counting())
    for _ in range(3):
        ahead.next()
    names = {"neocaffe-pin-d"}
    assert any(t.name in names for t in threading.enumerate())
    assert any(p.name.startswith("neocaffe-d-") for p in multiprocessing.active_children())
    del ahead
    gc.collect()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (any(t.name in names for t in threading.enumerate())
                                           or any(p.name.startswith("neocaffe-d-")
                                                  for p in multiprocessing.active_children())):
        gc.collect()
        time.sleep(0.05)
    assert not any(t.name in names for t in threading.enumerate()), "the pin-memory thread still runs"
    assert not any(p.name.startswith("neocaffe-d-") for p in multiprocessing.active_children()), "workers remain"


def _data_net(folder, n: int) -> str:
    """A Data layer over a new LMDB of ``n`` random 3 x 9 x 9 datums (labels 0..n-1) in ``folder``."""
    from neocaffe.data.datum import array_to_datum
    from neocaffe.data.db_writer import DBWriter

    g = np.random.default_rng(0)
    with DBWriter(str(folder / "db"), "lmdb") as db:
        for i in range(n):
            db.put(f"{i:03d}", array_to_datum(g.integers(0, 255, (3, 9, 9), dtype=np.uint8), i).SerializeToString())
    return (f'layer {{ name: "data" type: "Data" top: "data" top: "label" data_param {{ source: "{folder / "db"}" '
            f'batch_size: 4 backend: LMDB }} transform_param {{ crop_size: 7 mirror: true scale: 0.5 }} }}')


@pytest.mark.gpu
def test_on_cuda_a_data_layer_pins_ahead_and_gives_what_the_cpu_gives(tmp_path):
    """A Data layer on CUDA with workers reads through a PinAhead whose batches are pinned; the tops
    equal the CPU net's, and the snapshot position is the number of forwards."""
    from neocaffe import rng
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import BuildContext

    text = _data_net(tmp_path, 40)
    nets = []
    for device in ("cpu", "cuda"):
        rng.set_seed(7)  # the same crops and mirrors
        nets.append(Net(read_net(text), 0, source="<test>", device=device, context=BuildContext(data_workers=2)))
    try:
        for _ in range(12):
            for net in nets:
                net.forward()
            torch.testing.assert_close(nets[1].blob_data["data"].cpu(), nets[0].blob_data["data"], rtol=0, atol=0)
            torch.testing.assert_close(nets[1].blob_data["label"].cpu(), nets[0].blob_data["label"], rtol=0, atol=0)
        layer = nets[1].layer("data")
        assert isinstance(layer._prefetcher, PinAhead)
        assert layer.resume_state()["batch"] == 12
    finally:
        for net in nets:
            net.layer("data").close()


def test_a_data_layer_reading_through_pin_ahead_gives_the_same_batches_and_resume_position(tmp_path, monkeypatch):
    """The layer side on the CPU: a Data layer whose prefetcher is wrapped in PinAhead (as on CUDA; a
    copy stands in for pinning) gives the plain layer's tops, records the number of forwards as its
    read position, and a net resumed from that position reads on as the plain one does."""
    from neocaffe import rng
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import BuildContext
    from neocaffe.layers.prefetched import PrefetchedLayer

    text = _data_net(tmp_path, 30)

    def net() -> Net:
        rng.set_seed(3)
        return Net(read_net(text), 0, source="<test>", context=BuildContext(data_workers=2))

    def run(n: Net, k: int) -> list[torch.Tensor]:
        out = []
        for _ in range(k):
            n.forward()
            out.append(torch.cat([n.blob_data["data"].flatten(), n.blob_data["label"]]))
        return out

    plain = net()
    want = run(plain, 14)
    plain.layer("data").close()
    new_prefetcher = PrefetchedLayer._new_prefetcher
    monkeypatch.setattr(PrefetchedLayer, "_new_prefetcher",
                        lambda self: PinAhead(new_prefetcher(self), "cpu", pin=CopyingPin()))
    pinned = net()
    try:
        got = run(pinned, 9)
        layer = pinned.layer("data")
        assert isinstance(layer._prefetcher, PinAhead)
        state = layer.resume_state()
        assert state["batch"] == 9
    finally:
        pinned.layer("data").close()
    resumed = net()
    try:
        resumed.layer("data").load_resume_state(state)
        got += run(resumed, 5)
    finally:
        resumed.layer("data").close()
    for k, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"batch {k}"
