"""``classify``: BVLC Caffe's ``python/classify.py`` as a command, on ``caffe.Classifier``.

Usage: classify [flags] INPUT OUTPUT.npy
  INPUT: an image file, a folder (its ``*.EXT`` images, in sorted order), a ``.npy`` array of
  H x W x K images, or a ``.txt`` list (one image path per line, a label after it ignored, as
  convert_imageset's lists; relative paths are tried from the working directory, then from the
  list's folder).

Caffe's flags and defaults: --model_def, --pretrained_model, --gpu, --center_only (else the ten-crop
average), --images_dim H,W (256,256), --mean_file (a K x H x W ``.npy``, reduced to its per-channel
means as BVLC's script does; a ``.binaryproto`` is read too; '' for none), --input_scale,
--raw_scale (255), --channel_swap (2,1,0; '' for none; not applied to a one-channel net), --ext
(jpg), --labels_file + --print_results (top-5 of the first input). Ours: --labels FILE --top K
print each input's top K classes (``synset_words.txt``: one class per line).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Sequence

import numpy as np

__all__ = ["main", "load_inputs", "load_mean", "read_labels", "top_k", "IMAGENET_MEAN"]

# BVLC's ILSVRC-2012 mean, shipped with the package as BVLC's pycaffe ships it (imagenet/README.md)
IMAGENET_MEAN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet", "ilsvrc_2012_mean.npy")


def load_mean(path: str) -> np.ndarray:
    """The per-channel mean (K,) of a K x H x W mean in a ``.npy`` (BVLC's ``.mean(1).mean(1)``) or a
    ``.binaryproto`` (compute_image_mean's output); a 1-D ``.npy`` is taken as it is."""
    if not os.path.isfile(path):
        raise SystemExit(f"classify: mean file '{path}' not found; pass --mean_file '' for no mean subtraction")
    if path.endswith(".binaryproto"):
        from caffe import io as caffe_io
        from caffe.proto import caffe_pb2

        blob = caffe_pb2.BlobProto()
        with open(path, "rb") as f:
            blob.ParseFromString(f.read())
        arr = caffe_io.blobproto_to_array(blob)
        arr = arr[0] if arr.ndim == 4 else arr
    else:
        arr = np.load(path)
    if arr.ndim == 1:
        return arr
    if arr.ndim != 3:
        raise SystemExit(f"classify: mean file '{path}' holds shape {arr.shape}; expected K x H x W or (K,)")
    return arr.mean(1).mean(1)


def _list_paths(list_file: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(list_file))
    paths = []
    with open(list_file) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # convert_imageset's lists: "path label", the label after the last space
            name = line.rsplit(" ", 1)[0] if " " in line and line.rsplit(" ", 1)[1].lstrip("-").isdigit() else line
            paths.append(name if os.path.exists(name) else os.path.join(base, name))
    return paths


def load_inputs(input_file: str, ext: str, color: bool) -> tuple[list[str], Sequence[np.ndarray]]:
    """(names, images) from a ``.npy``, a folder of ``*.ext``, a ``.txt`` list or one image file;
    images are H x W x K float32 in [0, 1] (``caffe.io.load_image``)."""
    from caffe import io as caffe_io

    input_file = os.path.expanduser(input_file)
    if input_file.endswith("npy"):
        print(f"Loading file: {input_file}")
        arr = np.load(input_file)
        return [f"{input_file}[{i}]" for i in range(len(arr))], arr
    if os.path.isdir(input_file):
        print(f"Loading folder: {input_file}")
        paths = sorted(glob.glob(input_file + "/*." + ext))
    elif input_file.endswith(".txt"):
        print(f"Loading list: {input_file}")
        paths = _list_paths(input_file)
    else:
        print(f"Loading file: {input_file}")
        paths = [input_file]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"classify: {len(missing)} input image(s) not found, first: {missing[0]}")
    return paths, [caffe_io.load_image(p, color=color) for p in paths]


def read_labels(path: str) -> list[str]:
    """One class per line (``synset_words.txt``: ``n01440764 tench, Tinca tinca``), in class order."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of ``probs`` (C,), largest first (ties: lower index)."""
    return np.argsort(-probs, kind="stable")[:k]


def _parser(pycaffe_dir: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="classify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input_file", help="Input image, directory, .txt list, or npy.")
    ap.add_argument("output_file", help="Output npy filename.")
    ap.add_argument("--model_def", default=os.path.join(pycaffe_dir, "../models/bvlc_reference_caffenet/deploy.prototxt"),
                    help="Model definition file.")
    ap.add_argument("--pretrained_model", default=os.path.join(
        pycaffe_dir, "../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel"),
        help="Trained model weights file.")
    ap.add_argument("--gpu", action="store_true", help="Switch for gpu computation.")
    ap.add_argument("--center_only", action="store_true",
                    help="Predict from the center crop alone instead of averaging the ten crops (default).")
    ap.add_argument("--images_dim", default="256,256", help="Canonical 'height,width' dimensions of input images.")
    mean = os.path.join(pycaffe_dir, "caffe/imagenet/ilsvrc_2012_mean.npy")
    ap.add_argument("--mean_file", default=mean if os.path.exists(mean) else IMAGENET_MEAN,
                    help="Data set image mean of [Channels x Height x Width] dimensions (numpy array or "
                         ".binaryproto). Set to '' for no mean subtraction.")
    ap.add_argument("--input_scale", type=float, help="Multiply input features by this scale to finish preprocessing.")
    ap.add_argument("--raw_scale", type=float, default=255.0, help="Multiply raw input by this scale before preprocessing.")
    ap.add_argument("--channel_swap", default="2,1,0",
                    help="Order to permute input channels. The default converts RGB -> BGR.")
    ap.add_argument("--ext", default="jpg", help="Image file extension to take when a directory is given.")
    ap.add_argument("--labels_file", default=os.path.join(pycaffe_dir, "../data/ilsvrc12/synset_words.txt"),
                    help="Readable label definition file (for --print_results).")
    ap.add_argument("--print_results", action="store_true", help="Print the first input's top 5 classes.")
    ap.add_argument("--labels", default=None, help="Class names, one per line (synset_words.txt); with --top.")
    ap.add_argument("--top", type=int, default=5, help="With --labels: print each input's top K classes.")
    return ap


def main(argv: Sequence[str] | None = None, pycaffe_dir: str | None = None) -> int:
    """Run classify; ``pycaffe_dir`` anchors the default paths as BVLC's ``python/`` folder does
    (default: ``./python``, i.e. run from a Caffe-style checkout's root)."""
    import caffe

    pycaffe_dir = pycaffe_dir if pycaffe_dir is not None else os.path.join(os.getcwd(), "python")
    args = _parser(pycaffe_dir).parse_args(argv)
    image_dims = [int(s) for s in args.images_dim.split(",")]
    mean = load_mean(args.mean_file) if args.mean_file else None
    channel_swap = [int(s) for s in args.channel_swap.split(",")] if args.channel_swap else None
    if args.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")
    for what, path in (("--model_def", args.model_def), ("--pretrained_model", args.pretrained_model)):
        if not os.path.isfile(path):
            raise SystemExit(f"classify: {what} '{path}' not found")
    classifier = caffe.Classifier(args.model_def, args.pretrained_model, image_dims=image_dims,
                                  input_scale=args.input_scale, raw_scale=args.raw_scale)
    in_ = classifier.inputs[0]
    channels = int(classifier.blobs[in_].data.shape[1])
    if mean is not None:
        classifier.transformer.set_mean(in_, mean)
    if channel_swap is not None and channels != 1:  # a gray net has no channels to swap
        classifier.transformer.set_channel_swap(in_, channel_swap)
    names, inputs = load_inputs(args.input_file, args.ext, color=channels != 1)
    print(f"Classifying {len(inputs)} inputs.")
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print(f"Done in {time.time() - start:.2f} s.")
    if args.print_results:
        labels = sorted(read_labels(args.labels_file))  # BVLC sorts by synset id
        names_only = [" ".join(l.split(" ")[1:]).split(",")[0] for l in labels]
        print([(names_only[i], f"{predictions[0][i]:.5f}") for i in top_k(predictions[0], 5)])
    if args.labels:
        labels = read_labels(args.labels)
        if len(labels) != predictions.shape[1]:
            raise SystemExit(f"classify: {args.labels} has {len(labels)} labels but the net outputs "
                             f"{predictions.shape[1]} classes")
        for name, probs in zip(names, predictions):
            print(name)
            for i in top_k(probs, args.top):
                print(f"  {probs[i]:.5f}  {labels[i]}")
    print(f"Saving results into {args.output_file}")
    np.save(args.output_file, predictions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
