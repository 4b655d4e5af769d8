"""ssd_detect: run an SSD deploy net over a list of images or videos and print the detections (SSD's C++
example, weiliu89/caffe branch ssd ``examples/ssd/ssd_detect.cpp``, built as ``build/examples/ssd/ssd_detect.bin``;
same flags and output).

    ssd_detect [FLAGS] model_file weights_file list_file

Flags: ``--mean_file`` (a ``.binaryproto``; its per-channel mean is used) or ``--mean_value`` (default
``104,117,123``; clear it to give a mean file, as the fork requires), ``--file_type`` ``image`` or ``video``,
``--out_file`` (default stdout), ``--confidence_threshold`` (default 0.01). As the fork: the net must have
one input of 1 or 3 channels and one output (DetectionOutput's rows); each whitespace-separated entry of
``list_file`` is read with ``cv::imread(file, -1)`` (an image) or frame by frame with ``cv::VideoCapture``
(a video; ``Process N frames from <file>`` is logged at its end), preprocessed as Caffe's classification
example (channel conversion, bilinear resize to the input, float, mean subtracted), run at batch 1, and
every detection row whose first value is not -1 and whose score is at least the threshold is printed as

    <file> <label> <score> <xmin> <ymin> <xmax> <ymax>             (images)
    <file>_<frame, 6 digits> <label> <score> <xmin> ...            (videos)

with the score as C++ prints a float (6 significant digits) and the box corners scaled to the image's
pixels in float32 and truncated toward zero. Ours: one ``--mean_value`` for a 3-channel net is used for
every channel (the fork reads past its one value); a file that cannot be read is an error naming it and the
tool stops with status 1 after the lines already printed (the fork aborts); the device is the CPU unless
``NEOCAFFE_SSD_DETECT_GPU=<id>`` names a CUDA device (the fork uses the GPU whenever built with CUDA).
"""
from __future__ import annotations

import logging
import sys
from typing import Iterator, Sequence, TextIO

import cv2
import numpy as np

from neocaffe.cli.log import run_logged
from neocaffe.flags import Flag, parse_command
from neocaffe.tools.cpp_examples import (ERRORS, ClassificationError, ExampleNet, imread_unchanged, read_mean_values,
                                         select_device)

__all__ = ["detections", "format_detection", "mean_from_values", "run", "main"]

log = logging.getLogger("neocaffe.tools.ssd_detect")

GPU_ENV = "NEOCAFFE_SSD_DETECT_GPU"
FLAGS = {
    "mean_file": Flag(str, "", "The mean file used to subtract from the input image."),
    "mean_value": Flag(str, "104,117,123", "One value or one per image channel, separated by ','; "
                                           "either mean_file or mean_value, not both."),
    "file_type": Flag(str, "image", "The file type in the list_file: image or video."),
    "out_file": Flag(str, "", "If provided, store the detection results in the out_file."),
    "confidence_threshold": Flag(float, 0.01, "Only store detections with score higher than the threshold."),
}
USAGE = "Do detection using SSD mode.\nUsage:\n    ssd_detect [FLAGS] model_file weights_file list_file\n"


def mean_from_values(text: str, channels: int) -> np.ndarray:
    """``--mean_value``: comma-separated floats (``atof``: an unreadable item is 0), one or ``channels``."""
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            values.append(0.0)
    if len(values) not in (1, channels):
        raise ClassificationError(f"--mean_value={text!r}: Specify either 1 mean_value or as many as channels: "
                                  f"{channels}")
    return np.array(values * channels if len(values) == 1 else values, np.float32)


def detections(rows: np.ndarray, threshold: float) -> Iterator[np.ndarray]:
    """The rows (7 float32 values) the fork prints: first value not -1, score at least ``threshold``."""
    for d in rows.reshape(-1, 7):
        if d[0] != -1 and d[2] >= np.float32(threshold):
            yield d


def format_detection(name: str, d: np.ndarray, cols: int, rows: int) -> str:
    """One output line: ``name label score xmin ymin xmax ymax`` (see the module docstring)."""
    f32 = np.float32
    box = [int(d[3] * f32(cols)), int(d[4] * f32(rows)), int(d[5] * f32(cols)), int(d[6] * f32(rows))]
    return f"{name} {int(d[1])} {float(d[2]):g} {box[0]} {box[1]} {box[2]} {box[3]}\n"


def _frames(path: str) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ClassificationError(f"Failed to open video: {path}")
    count = 0
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                log.info("Process %d frames from %s", count, path)
                return
            yield img
            count += 1
    finally:
        cap.release()


def run(model_file: str, weights_file: str, list_file: str, *, mean_file: str = "",
        mean_value: str = "104,117,123", file_type: str = "image", out_file: str = "",
        confidence_threshold: float = 0.01, out: TextIO | None = None) -> int:
    """The example's main; returns the number of lines printed."""
    if file_type not in ("image", "video"):
        raise ClassificationError(f"Unknown file_type: {file_type} (expected image or video)")
    if mean_file and mean_value:
        raise ClassificationError("Cannot specify mean_file and mean_value at the same time "
                                  "(give --mean_value= with --mean_file)")
    detector = ExampleNet(model_file, weights_file, select_device(GPU_ENV))
    mean = (read_mean_values(mean_file, detector.channels) if mean_file
            else mean_from_values(mean_value, detector.channels))
    try:
        with open(list_file, encoding="utf-8", errors="surrogateescape") as f:
            files = f.read().split()
    except OSError as e:
        raise ClassificationError(f"Unable to open list file {list_file}: {e.strerror or e}") from None
    sink = open(out_file, "w", encoding="utf-8", errors="surrogateescape") if out_file else None
    stream = sink or out or sys.stdout
    printed = 0
    try:
        for name in files:
            if file_type == "image":
                img = imread_unchanged(name)
                if img is None or img.size == 0:
                    raise ClassificationError(f"Unable to decode image {name}")
                frames = [(name, img)]
            else:
                frames = ((f"{name}_{k:06d}", img) for k, img in enumerate(_frames(name)))
            for label, img in frames:
                rows = detector.run(img, mean, name).cpu().numpy().astype(np.float32)
                for d in detections(rows, confidence_threshold):
                    stream.write(format_detection(label, d, img.shape[1], img.shape[0]))
                    printed += 1
            stream.flush()
    finally:
        if sink is not None:
            sink.close()
        detector.net.close()
    return printed


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status)."""
    parsed = parse_command("ssd_detect", USAGE, FLAGS, list(sys.argv[1:] if argv is None else argv), 3)
    if parsed is None:
        return 1
    values, positional, _ = parsed
    return run_logged(lambda: run(*positional[:3], **values), ERRORS, log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
