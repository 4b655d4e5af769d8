"""Write scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside the package) as PNG
files plus Caffe image lists, ready for ``convert_imageset``.

Usage: python prepare.py OUT_DIR   ->  OUT_DIR/images/*.png, OUT_DIR/train.txt, OUT_DIR/test.txt
A fixed random 360 images (20%, seed 0) are the test set; the rest train, listed in a fixed shuffled
order (seed 1), so ``convert_imageset`` needs no ``--shuffle`` (Caffe's draws from an unseeded generator,
which made every run of the main job train on another order and end at another accuracy).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits


def main(out: str) -> None:
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    n_test = 360
    lines = []
    for i, (img, label) in enumerate(zip(images, digits.target)):
        name = f"digit_{i:04d}.png"
        cv2.imwrite(str(root / "images" / name), img)
        lines.append(f"{name} {int(label)}\n")
    order = np.random.default_rng(0).permutation(len(lines))
    test = set(order[:n_test].tolist())
    train = [lines[i] for i in np.random.default_rng(1).permutation(len(lines)) if i not in test]
    (root / "train.txt").write_text("".join(train))
    (root / "test.txt").write_text("".join(lines[i] for i in sorted(test)))
    print(f"wrote {len(lines)} images to {root / 'images'}: {len(lines) - n_test} train, {n_test} test")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data")
