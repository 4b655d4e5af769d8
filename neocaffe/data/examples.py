"""Tiny data sources for the layer contract examples: an LMDB, PNG images with a list, an HDF5 list, a video."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np

_FOLDER: str | None = None


def example_folder() -> str:
    """A temporary folder with a tiny LMDB, image list and HDF5 list for the contract examples."""
    global _FOLDER
    if _FOLDER is not None and os.path.isdir(_FOLDER):
        return _FOLDER
    import cv2
    import h5py

    from neocaffe.data.datum import array_to_datum
    from neocaffe.data.db_writer import DBWriter

    folder = tempfile.mkdtemp(prefix="neocaffe_data_examples_")
    g = np.random.default_rng(0)
    with DBWriter(os.path.join(folder, "lmdb"), "lmdb") as db, open(os.path.join(folder, "list.txt"), "w") as lst:
        for i in range(5):
            img = g.integers(0, 256, (3, 6, 7), dtype=np.uint8)
            db.put(f"{i:08d}_{i}", array_to_datum(img, i).SerializeToString())
            cv2.imwrite(os.path.join(folder, f"img{i}.png"), img.transpose(1, 2, 0))
            lst.write(f"img{i}.png {i}\n")
    with h5py.File(os.path.join(folder, "a.h5"), "w") as f:
        f["data"] = g.standard_normal((3, 2, 2)).astype(np.float32)
        f["label"] = np.arange(3, dtype=np.float32)
    with open(os.path.join(folder, "h5list.txt"), "w") as f:
        f.write(os.path.join(folder, "a.h5") + "\n")
    _FOLDER = folder
    atexit.register(shutil.rmtree, folder, True)
    return folder


_ANNOTATED: str | None = None


def annotated_example() -> str:
    """A tiny LMDB of AnnotatedDatums (encoded PNGs with one or two boxes) for AnnotatedData's example."""
    global _ANNOTATED
    if _ANNOTATED is not None and os.path.isdir(_ANNOTATED):
        return _ANNOTATED
    from neocaffe.data.datum import encode_array_to_datum
    from neocaffe.data.db_writer import DBWriter
    from neocaffe.proto import caffe_pb2

    path = os.path.join(example_folder(), "annotated_lmdb")
    g = np.random.default_rng(1)
    with DBWriter(path, "lmdb") as db:
        for i in range(4):
            anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            anno.datum.CopyFrom(encode_array_to_datum(g.integers(0, 256, (3, 10, 14), dtype=np.uint8), -1, "png"))
            for k in range(1 + i % 2):
                grp = anno.annotation_group.add(group_label=1 + k)
                a = grp.annotation.add(instance_id=0)
                a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = 0.1 + 0.1 * k, 0.2, 0.6 + 0.2 * k, 0.9
            db.put(f"{i:08d}_img{i}.png", anno.SerializeToString())
    _ANNOTATED = path
    return path


def dense_example() -> str:
    """A pair list for DenseImageData's example: the example folder's images, each with a label image
    of its size (values 0..11, written once)."""
    import cv2

    folder = example_folder()
    path = os.path.join(folder, "dense_list.txt")
    if not os.path.exists(path):
        g = np.random.default_rng(2)
        with open(path, "w") as f:
            for i in range(5):
                cv2.imwrite(os.path.join(folder, f"lab{i}.png"), g.integers(0, 12, (6, 7), dtype=np.uint8))
                f.write(f"img{i}.png lab{i}.png\n")
    return path


def window_example() -> str:
    """A window file for WindowData's example: three 12 x 16 colour images of the example folder, each
    with foreground windows (overlap >= 0.5, classes 1 and 2), background ones and one in between
    (dropped), some touching the image's edge (written once)."""
    import cv2

    folder = example_folder()
    path = os.path.join(folder, "windows.txt")
    if not os.path.exists(path):
        g = np.random.default_rng(3)
        with open(path, "w") as f:
            for i in range(3):
                cv2.imwrite(os.path.join(folder, f"win{i}.png"), g.integers(0, 256, (12, 16, 3), dtype=np.uint8))
                rows = [(1 + i % 2, 0.8, 2, 1, 9, 8), (2, 0.5, 0, 0, 15, 11), (0, 0.1, 5, 3, 13, 10),
                        (0, 0.2, 0, 6, 6, 11), (1, 0.3, 3, 3, 8, 8)]
                f.write(f"# {i}\nwin{i}.png\n3\n12\n16\n{len(rows)}\n")
                f.writelines(" ".join(str(v) for v in r) + "\n" for r in rows)
    return path


def write_video(path: str, frames: list[np.ndarray] | np.ndarray, fps: float = 10.0) -> None:
    """``frames`` (H x W x 3 uint8, BGR) as an MJPG video at ``path`` (an ``.avi``)."""
    import cv2

    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not out.isOpened():
        raise OSError(f"OpenCV cannot write an MJPG video at {path}")
    try:
        for f in frames:
            out.write(np.ascontiguousarray(f))
    finally:
        out.release()


def read_video(path: str) -> list[np.ndarray]:
    """Every frame OpenCV reads from the video at ``path`` (BGR uint8), in order."""
    import cv2

    cap = cv2.VideoCapture(path)
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(frame)
    finally:
        cap.release()


def video_example() -> str:
    """A video for VideoData's example: 18 frames of 12 x 16 colour noise (written once)."""
    path = os.path.join(example_folder(), "video.avi")
    if not os.path.exists(path):
        write_video(path, np.random.default_rng(4).integers(0, 256, (18, 12, 16, 3), dtype=np.uint8))
    return path


def c3d_example() -> tuple[str, str, str]:
    """C3D-v1.0's VideoData examples (written once): a list of two frame folders (``%06d.jpg`` frames 1-6 of
    9 x 11 colour noise) with start frames and labels, a list of clips of the video example, and a C3D 5-D
    mean (1 x 3 x 3 x 8 x 10, the fork's BlobProto numbering)."""
    import cv2

    from neocaffe.io.binaryproto import write_blobproto

    folder = os.path.join(example_folder(), "c3d")
    frames, videos, mean = (os.path.join(folder, n) for n in ("frames.txt", "videos.txt", "mean.binaryproto"))
    if not os.path.exists(mean):
        g = np.random.default_rng(5)
        for clip in ("a", "b"):
            os.makedirs(os.path.join(folder, clip), exist_ok=True)
            for i in range(1, 7):
                cv2.imwrite(os.path.join(folder, clip, f"{i:06d}.jpg"), g.integers(0, 256, (9, 11, 3), dtype=np.uint8))
        with open(frames, "w") as f:
            f.write(f"{folder}/a/ 1 0\n{folder}/a/ 3 1\n{folder}/b/ 2 2\n")
        with open(videos, "w") as f:
            f.writelines(f"{video_example()} {s} {s % 3}\n" for s in (0, 5, 10))
        write_blobproto(mean, g.uniform(80, 140, (1, 3, 3, 8, 10)).astype(np.float32), legacy=True)
    return frames, videos, mean
