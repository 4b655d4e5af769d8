"""``caffe.io``: pycaffe's array/proto conversions, image loading, resizing and input Transformer.

Behaviour follows BVLC pycaffe (``python/caffe/io.py``) so that research scripts run unchanged.
pycaffe leans on scikit-image; neocaffe does not need it:

- ``load_image`` decodes with Pillow the way ``skimage.io.imread`` + ``img_as_float`` does
  (uint8 / 255, uint16 / 65535, no EXIF rotation; ``color=False`` uses skimage's ``rgb2gray``
  weights 0.2125 R + 0.7154 G + 0.0721 B after blending any alpha over white).
- ``resize_image`` reproduces ``skimage.transform.resize(order=1)`` as scikit-image >= 0.19
  computes it: half-pixel-centre linear interpolation, ``mode='reflect'`` borders, a Gaussian
  anti-aliasing prefilter (sigma = (in/out - 1) / 2, truncated at 4 sigma) on axes that shrink,
  and clipping to the input range, rounding intermediates to float32 where scipy.ndimage does.
  Checked against scikit-image 0.26: equal bit for bit in all but a few pixels in ten thousand,
  which differ by one float32 ulp (the order of the interpolation sums differs). Scripts written against scikit-image < 0.15
  (no anti-aliasing, zero-padded borders) saw different border and downsampling values.
  Images with a channel count other than 1 or 3 take pycaffe's ``scipy.ndimage.zoom`` path
  (corner-aligned linear interpolation), also reproduced in NumPy.
- ``Transformer.preprocess`` never writes into the caller's array (pycaffe's in-place
  ``raw_scale`` could, when the input was already float32 and no resize or channel swap copied it).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from caffe._resize import ndimage_zoom, scipy_resize, skimage_resize
from caffe.proto import caffe_pb2

__all__ = [
    "blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
    "arraylist_to_blobprotovecor_str", "blobprotovector_str_to_arraylist", "array_to_datum",
    "datum_to_array", "Transformer", "load_image", "resize_image", "oversample",
]


# ---------------------------------------------------------------------------------------------
# proto / datum / ndarray conversion
# ---------------------------------------------------------------------------------------------
def _has_legacy_dims(blob: Any) -> bool:
    return any(blob.HasField(f) for f in ("num", "channels", "height", "width"))


def blobproto_to_array(blob: Any, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff, with ``return_diff``) as a float64 array shaped by its legacy
    num/channels/height/width if any is set, else by ``shape.dim`` (no dims: a 0-d array, so a
    blob of one value gives a scalar and a blob of many a ValueError, as in pycaffe)."""
    if return_diff:
        values = blob.diff if len(blob.diff) or not len(blob.double_diff) else blob.double_diff
    else:
        values = blob.data if len(blob.data) or not len(blob.double_data) else blob.double_data
    arr = np.array(values, dtype=np.float64)
    if _has_legacy_dims(blob):
        return arr.reshape(blob.num, blob.channels, blob.height, blob.width)
    return arr.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> Any:
    """A BlobProto with ``shape.dim`` = ``arr.shape`` and the values as floats (``diff`` likewise)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Iterable[np.ndarray]) -> bytes:
    """Serialize a list of arrays as a BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vec.SerializeToString()


# pycaffe's historical spelling, still used by old scripts
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """Parse a serialized BlobProtoVector into a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> Any:
    """A Datum from a C x H x W array: uint8 arrays go to ``data`` as bytes, others to
    ``float_data``. ``label`` is set only when given."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: Any) -> np.ndarray:
    """A Datum's pixels as C x H x W: uint8 from ``data``, else float64 from ``float_data``
    (the label is ``datum.label``)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Pre-processing
# ---------------------------------------------------------------------------------------------
class Transformer:
    """Format inputs for a Net and back: resize, transpose, channel swap, raw scale, mean,
    input scale, in that order (pycaffe's ``caffe.io.Transformer``).

    ``inputs``: {input blob name: its shape}, e.g. ``{'data': net.blobs['data'].data.shape}``.
    """

    def __init__(self, inputs: dict[str, Sequence[int]]) -> None:
        self.inputs = inputs
        self.transpose: dict[str, Any] = {}
        self.channel_swap: dict[str, Any] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def __check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise Exception("{} is not one of the net inputs: {}".format(in_, self.inputs))

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """H' x W' x K image -> K x H x W float32 blob input: resize to the input's spatial
        size, transpose, swap channels, multiply by raw_scale, subtract mean, multiply by
        input_scale."""
        self.__check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=True)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if tuple(caffe_in.shape[:2]) != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Undo ``preprocess`` (except the resize): a blob input back to H x W x K."""
        self.__check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order taking the image to the blob's, e.g. (2, 0, 1) for H x W x K -> K x H x W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order to take after transposing, e.g. (2, 1, 0) for RGB -> BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Scale applied before the mean: 255 for models trained on [0, 255] pixels."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Mean to subtract: per channel (1-D, length K) or elementwise (K x H x W or H x W).
        An elementwise mean of another spatial size is resized to the input's (as pycaffe does)."""
        self.__check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            in_shape = tuple(self.inputs[in_][1:])
            if tuple(ms) != in_shape:
                if ms[0] != in_shape[0]:
                    raise ValueError("Mean shape incompatible with input shape.")
                mean3 = mean.reshape(ms)
                m_min, m_max = mean3.min(), mean3.max()
                if m_max > m_min:
                    normal = (mean3 - m_min) / (m_max - m_min)
                else:
                    normal = mean3 - m_min
                mean = (resize_image(normal.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1))
                        * (m_max - m_min) + m_min)
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Scale applied after the mean (e.g. 0.017 for some models)."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


# ---------------------------------------------------------------------------------------------
# Image IO
# ---------------------------------------------------------------------------------------------
_RGB2GRAY = np.array([0.2125, 0.7154, 0.0721])


def _pil_to_array(img: Any) -> np.ndarray:
    """Decode a PIL image the way skimage.io.imread returns it (dtype and channels)."""
    from PIL import Image

    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode.startswith("I;16"):
        arr = np.array(img)
        return arr.astype(np.uint16) if arr.dtype != np.uint16 else arr
    elif mode not in ("L", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGB")
    if not isinstance(img, Image.Image):  # pragma: no cover
        raise TypeError(type(img))
    return np.array(img)


def _img_as_float(arr: np.ndarray) -> np.ndarray:
    """skimage.img_as_float: integers scaled to [0, 1] (signed to [-1, 1]), floats unchanged."""
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        return arr
    info = np.iinfo(arr.dtype)
    return arr.astype(np.float64) / float(info.max)


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """Load an image as float32 in [0, 1], H x W x 3 RGB (``color``) or H x W x 1 intensity.

    A grayscale file loaded with ``color=True`` is tiled to three channels; an alpha channel is
    dropped (``color=True``) or blended over white before the gray conversion (``color=False``).
    """
    from PIL import Image

    with Image.open(filename) as im:
        arr = _pil_to_array(im)
    img = _img_as_float(arr)
    if not color and img.ndim == 3:
        if img.shape[2] == 4:
            alpha = img[:, :, 3:4]
            img = (1.0 - alpha) + alpha * img[:, :, :3]
        img = img[:, :, :3] @ _RGB2GRAY
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K image to ``new_dims`` = (height, width), keeping K; float32 result.

    Images with 1 or 3 channels are normalized to [0, 1], resized as scikit-image does and scaled
    back (a constant image stays constant); other channel counts are zoomed as scipy.ndimage does.
    """
    im = np.asarray(im)
    new_dims = tuple(int(d) for d in new_dims)
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            im_std = (im - im_min) / (im_max - im_min)
            if interp_order in (0, 1):
                resized_std = skimage_resize(im_std, new_dims, interp_order).astype(im_std.dtype)
            else:
                resized_std = scipy_resize(im_std, new_dims, interp_order, True).astype(im_std.dtype)
            resized_im = resized_std * (im_max - im_min) + im_min
        else:
            ret = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        if interp_order in (0, 1):
            resized_im = ndimage_zoom(im, new_dims, interp_order)
        else:
            resized_im = scipy_resize(im, new_dims, interp_order, False)
    return np.asarray(resized_im).astype(np.float32)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """Ten crops per image: top-left, top-right, bottom-left, bottom-right and centre, then the
    same five mirrored left-right; returns (10 N) x h x w x K float32."""
    first = np.asarray(images[0])
    height, width = first.shape[:2]
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    # the centre crop starts at the truncated (centre - crop / 2), as pycaffe's int cast does
    origins = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw),
               (int(height / 2.0 - ch / 2.0), int(width / 2.0 - cw / 2.0))]
    out = np.empty((10 * len(images), ch, cw, first.shape[-1]), dtype=np.float32)
    for n, im in enumerate(images):
        for k, (y, x) in enumerate(origins):
            patch = np.asarray(im)[y:y + ch, x:x + cw, :]
            out[10 * n + k] = patch
            out[10 * n + 5 + k] = patch[:, ::-1, :]
    return out
