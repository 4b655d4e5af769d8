"""OpenPose's training records (ZheC/Realtime_Multi-Person_Pose_Estimation @ de8d6984, ``training/genLMDB.py``;
read as CMU-Perceptual-Computing-Lab/caffe_train @ 76dd9563 ``src/caffe/cpm_data_transformer.cpp`` ReadMetaData
and TransformJoints read them).

A record is a raw uint8 Datum of 6 channels (COCO) of H x W: the BGR image (0-2), the metadata plane (3), mask_miss
(4) and mask_all (5). The metadata plane holds rows of W bytes: 0 the dataset name (NUL-terminated); 1 height,
width (float32); 2 isValidation, numOtherPeople, people_index (uint8) then annolist_index, writeCount,
totalWriteCount (float32 at bytes 3, 7, 11); 3 objpos x, y; 4 scale_provided; 5-7 the joints' x, y, visibility
rows (``np_in_lmdb`` float32 each); then per other person its objpos row, one row of their scales, and per other
person its three joint rows. Coordinates are 1-based (MATLAB's): one is subtracted on reading.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neocaffe.data.datum import DatumError, array_to_datum

# COCO's 17 keypoints -> the 18 body parts of OpenPose (neck = mean of the shoulders), 1-based, as the fork
_COCO_A = (1, 6, 7, 9, 11, 6, 8, 10, 13, 15, 17, 12, 14, 16, 3, 2, 5, 4)
_COCO_B = (1, 7, 7, 9, 11, 6, 8, 10, 13, 15, 17, 12, 14, 16, 3, 2, 5, 4)
# MPI's 16 joints -> 15 parts (chest = mean of thorax and pelvis), 0-based, as the fork
_MPI_A = (9, 8, 12, 11, 10, 13, 14, 15, 2, 1, 0, 3, 4, 5, 7)
_MPI_B = (9, 8, 12, 11, 10, 13, 14, 15, 2, 1, 0, 3, 4, 5, 6)
#: body parts per ``num_parts`` (56: COCO's 18 parts + 19 limbs x 2; 43: MPI's 15 + 14 x 2)
PARTS = {56: 18, 43: 15}
#: joints of the record each ``num_parts`` reads (the highest index of its map)
NEEDS_IN_LMDB = {56: 17, 43: 16}


@dataclass
class People:
    """The annotated person (row 0) and the others: ``joints`` (K, P, 2) float32, ``vis`` (K, P) float32 (0
    occluded, 1 visible, 2 outside the image or unlabelled, 3 kept as written), ``objpos`` (2,) float32 (the
    person's centre), ``scale`` (the person's ``scale_provided``)."""

    joints: np.ndarray
    vis: np.ndarray
    objpos: np.ndarray
    scale: np.float32


def _floats(row: np.ndarray, start: int, n: int) -> np.ndarray:
    return np.frombuffer(row[start:start + 4 * n].tobytes(), dtype="<f4").copy()


def read_meta(meta: np.ndarray, np_in_lmdb: int, where: str) -> People:
    """The people of a record's metadata plane (H x W uint8), joints 0-based, visibility as the fork sets it."""
    h, w = meta.shape
    if w < max(4 * np_in_lmdb, 15):
        raise DatumError(f"{where}: records of width {w} cannot hold {np_in_lmdb} joints a row (np_in_lmdb); "
                         f"expected width >= {4 * np_in_lmdb} (genLMDB.py pads images to 68)")
    img_h, img_w = (int(v) for v in _floats(meta[1], 0, 2))  # the fork's Size(width, height) of floats
    nop = int(meta[2, 1].astype(np.int8))  # the fork reads a (signed) char
    if nop < 0:
        raise DatumError(f"{where}: numOtherPeople byte {meta[2, 1]} reads as {nop} (a signed char in the fork); "
                         "expected at most 127 other people")
    rows = 9 + 4 * nop if nop else 8
    if rows > h or 4 * nop > w:
        raise DatumError(f"{where}: {nop} other people need {rows} metadata rows of {4 * nop} bytes; the record "
                         f"is {h} x {w}")
    one = np.float32(1)
    objpos = _floats(meta[3], 0, 2) - one

    def person(r: int) -> tuple[np.ndarray, np.ndarray]:
        xy = np.stack([_floats(meta[r], 0, np_in_lmdb), _floats(meta[r + 1], 0, np_in_lmdb)], 1) - one
        return xy, _floats(meta[r + 2], 0, np_in_lmdb)

    joints, vis = [], []
    xy, v = person(5)
    for k in range(nop + 1):
        if k:
            xy, v = person(9 + nop + 3 * (k - 1))
        outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= img_w) | (xy[:, 1] >= img_h)
        out = np.where(v == 0, 0, 1).astype(np.float32)
        out[outside] = 2
        if k == 0:  # only the annotated person keeps a written 3 (and skips the image test then)
            out[v == 3] = 3
        joints.append(xy)
        vis.append(out)
    return People(np.stack(joints).astype(np.float32), np.stack(vis), objpos, _floats(meta[4], 0, 1)[0])


def body_joints(people: People, num_parts: int) -> People:
    """The fork's TransformJoints: COCO's 17 keypoints to 18 parts (``num_parts`` 56) or MPI's 16 to 15 (43)."""
    if num_parts == 56:
        a, b = np.array(_COCO_A) - 1, np.array(_COCO_B) - 1
    else:
        a, b = np.array(_MPI_A), np.array(_MPI_B)
    j, v = people.joints, people.vis
    joints = ((j[:, a] + j[:, b]) * np.float32(0.5)).astype(np.float32)
    va, vb = v[:, a], v[:, b]
    vis = ((va != 0) & (vb != 0)).astype(np.float32)
    if num_parts == 56:
        vis[(va == 3) | (vb == 3)] = 3
    vis[(va == 2) | (vb == 2)] = 2
    return People(joints, vis, people.objpos, people.scale)


def genlmdb_datum(img: np.ndarray, mask_miss: np.ndarray, mask_all: np.ndarray | None, objpos: tuple[float, float],
                  scale: float, joints: np.ndarray, others: list[tuple[tuple[float, float], float, np.ndarray]] = (),
                  dataset: str = "COCO", write_count: int = 0, total: int = 1) -> "object":
    """A Datum as genLMDB.py writes it: ``img`` H x W x 3 BGR uint8, the masks H x W uint8 (``mask_all`` None:
    MPI's 5 channels), ``joints`` (J, 3) of 1-based x, y and visibility (COCO's JSON: 1 visible, 0 occluded,
    2 unlabelled), ``others`` as (objpos, scale, joints). For tests and examples."""
    h, w = img.shape[:2]
    meta = np.zeros((h, w), np.uint8)

    def put(r: int, start: int, values: bytes) -> None:
        meta[r, start:start + len(values)] = np.frombuffer(values, np.uint8)

    f = lambda *v: np.asarray(v, "<f4").tobytes()  # noqa: E731
    put(0, 0, dataset.encode())
    put(1, 0, f(h, w))
    meta[2, :3] = (0, len(others), 0)
    put(2, 3, f(0.0))
    put(2, 7, f(write_count))
    put(2, 11, f(total))
    put(3, 0, f(*objpos))
    put(4, 0, f(scale))
    for i in range(3):
        put(5 + i, 0, f(*joints[:, i]))
    r = 8
    for pos, _, _ in others:
        put(r, 0, f(*pos))
        r += 1
    if others:
        put(r, 0, f(*[s for _, s, _ in others]))
        r += 1
    for _, _, jo in others:
        for i in range(3):
            put(r, 0, f(*jo[:, i]))
            r += 1
    planes = [img[..., 0], img[..., 1], img[..., 2], meta, mask_miss] + ([mask_all] if mask_all is not None else [])
    return array_to_datum(np.stack(planes).astype(np.uint8), 0)


def coco_person(g: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random COCO person for tests and examples: 17 x 3 (1-based x, y; visibility 0/1/2 as COCO's JSON)."""
    xy = np.stack([g.uniform(1, w, 17), g.uniform(1, h, 17)], 1)
    vis = g.choice([0.0, 1.0, 1.0, 1.0, 2.0], 17)
    xy[vis == 2] = 0  # COCO's unlabelled keypoints sit at (0, 0)
    return np.concatenate([xy, vis[:, None]], 1)


_EXAMPLE: str | None = None


def cpm_example() -> str:
    """A tiny LMDB of genLMDB.py records (40 x 68, one to three people) for CPMData's contract example."""
    global _EXAMPLE
    import os

    if _EXAMPLE is not None and os.path.isdir(_EXAMPLE):
        return _EXAMPLE
    from neocaffe.data.db_writer import DBWriter
    from neocaffe.data.examples import example_folder

    path = os.path.join(example_folder(), "cpm_lmdb")
    g = np.random.default_rng(5)
    with DBWriter(path, "lmdb") as db:
        for i in range(5):
            img = g.integers(0, 256, (40, 68, 3), dtype=np.uint8)
            miss = np.where(g.random((40, 68)) < 0.8, 255, 0).astype(np.uint8)
            others = [((float(g.uniform(5, 60)), float(g.uniform(5, 35))), 0.5, coco_person(g, 40, 68))
                      for _ in range(i % 3)]
            datum = genlmdb_datum(img, miss, np.zeros_like(miss), (34.0, 20.0), 0.6, coco_person(g, 40, 68), others,
                                  write_count=i, total=5)
            db.put(f"{i:07d}", datum.SerializeToString())
    _EXAMPLE = path
    return path


__all__ = ["NEEDS_IN_LMDB", "PARTS", "People", "body_joints", "coco_person", "cpm_example", "genlmdb_datum",
           "read_meta"]
