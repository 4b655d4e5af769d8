"""Loop-by-loop ports of senlinuc/caffe_ocr's multi-label data code (@ 81642f61ea8f888e360cca30e08e05b7bc6d4556), the
reference for tests/layers/test_ocr_data.py: ``image_data_layer.cpp`` (DataLayerSetUp's list parse with
``std::getline``/``istringstream >>``, load_batch's walk), ``data_layer.cpp`` (load_batch: labels at
``item_id * label_size + i``), ``data_transformer.cpp`` (``Transform(const cv::Mat&)`` and ``Transform(const Datum&)``
pixel loops) and a real protobuf ``Datum`` class with the fork's ``repeated int32 label = 5`` (built from a
descriptor), which parses and writes records as the fork's C++ does. The fork's random draws (shuffle, crop offsets,
mirror) are inputs here."""
from __future__ import annotations

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_WS = b" \t\n\v\f\r"


def fork_datum_class():
    """The fork's ``Datum`` message (proto2; ``label`` repeated, hence unpacked on the wire)."""
    f = descriptor_pb2.FileDescriptorProto(name="caffe_ocr_datum.proto", package="caffe_ocr", syntax="proto2")
    m = f.message_type.add(name="Datum")
    T, L = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto
    for name, number, typ, label in (("channels", 1, T.TYPE_INT32, L.LABEL_OPTIONAL),
                                     ("height", 2, T.TYPE_INT32, L.LABEL_OPTIONAL),
                                     ("width", 3, T.TYPE_INT32, L.LABEL_OPTIONAL),
                                     ("data", 4, T.TYPE_BYTES, L.LABEL_OPTIONAL),
                                     ("label", 5, T.TYPE_INT32, L.LABEL_REPEATED),
                                     ("float_data", 6, T.TYPE_FLOAT, L.LABEL_REPEATED),
                                     ("encoded", 7, T.TYPE_BOOL, L.LABEL_OPTIONAL)):
        m.field.add(name=name, number=number, type=typ, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe_ocr.Datum"))


def packed_datum_class():
    """The same Datum with ``[packed = true]`` labels (a writer may pack them; a parser must read both)."""
    f = descriptor_pb2.FileDescriptorProto(name="caffe_ocr_packed.proto", package="packed", syntax="proto2")
    m = f.message_type.add(name="Datum")
    T, L = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto
    m.field.add(name="data", number=4, type=T.TYPE_BYTES, label=L.LABEL_OPTIONAL)
    fld = m.field.add(name="label", number=5, type=T.TYPE_INT32, label=L.LABEL_REPEATED)
    fld.options.packed = True
    m.field.add(name="encoded", number=7, type=T.TYPE_BOOL, label=L.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("packed.Datum"))


# -- std::istream, one character at a time ----------------------------------------------------------
class IStringStream:
    """``std::istringstream`` over one line: ``>> string``, ``>> int``, ``>> float`` with their failbit."""

    def __init__(self, s: bytes) -> None:
        self.s, self.i, self.fail = s, 0, False

    def _skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1

    def read_string(self):
        if self.fail:
            return None
        self._skip_ws()
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in _WS:
            self.i += 1
        if start == self.i:
            self.fail = True
            return None
        return self.s[start:self.i].decode("utf-8", "surrogateescape")

    def read_int(self):
        if self.fail:
            return None
        self._skip_ws()
        j = self.i
        if j < len(self.s) and self.s[j] in b"+-":
            j += 1
        k = j
        while k < len(self.s) and 48 <= self.s[k] <= 57:
            k += 1
        if k == j:
            self.fail = True
            return None
        v = int(self.s[self.i:k])
        self.i = k
        if not -(2 ** 31) <= v < 2 ** 31:  # num_get: out of range sets failbit
            self.fail = True
            return None
        return v

    def read_float(self):
        if self.fail:
            return None
        self._skip_ws()
        j = self.i
        if j < len(self.s) and self.s[j] in b"+-":
            j += 1
        digits = 0
        while j < len(self.s) and 48 <= self.s[j] <= 57:
            j, digits = j + 1, digits + 1
        if j < len(self.s) and self.s[j] == 46:  # '.'
            j += 1
            while j < len(self.s) and 48 <= self.s[j] <= 57:
                j, digits = j + 1, digits + 1
        if digits == 0:
            self.fail = True
            return None
        if j < len(self.s) and self.s[j] in b"eE":
            k = j + 1
            if k < len(self.s) and self.s[k] in b"+-":
                k += 1
            e0 = k
            while k < len(self.s) and 48 <= self.s[k] <= 57:
                k += 1
            if k == e0:  # "1e": extracted, then strtof leaves "e" over: failbit
                self.fail = True
                return None
            j = k
        text = self.s[self.i:j].decode()
        self.i = j
        v = np.float32(text)  # numpy's string -> float32 (correctly rounded for these test values)
        if not np.isfinite(v):
            self.fail = True
            return None
        return float(v)


def getlines(path):
    with open(path, "rb") as f:
        data = f.read()
    parts = data.split(b"\n")
    return parts[:-1] if parts and parts[-1] == b"" else parts


def fork_image_data_lines(path, regression=False):
    """DataLayerSetUp's parse: ``lines_`` (or ``regression_lines_``) as (filename, values)."""
    lines = []
    filename = ""
    for line in getlines(path):
        iss = IStringStream(line)
        name = iss.read_string()
        if name is not None:
            filename = name
        values = []
        while True:
            v = iss.read_float() if regression else iss.read_int()
            if v is None:
                break
            values.append(v)
        lines.append((filename, values))
    return lines


# -- the transformer's loops --------------------------------------------------------------------
def transform_mat(img, crop_size, phase_train, h_off, w_off, do_mirror, scale=1.0, mean=None, mean_values=None):
    """``Transform(const cv::Mat&, Blob*)``: ``img`` H x W x C uint8 (or H x W); offsets/mirror given."""
    img = img if img.ndim == 3 else img[:, :, None]
    img_h, img_w, ch = img.shape
    height, width = (crop_size, crop_size) if crop_size else (img_h, img_w)
    if not crop_size:
        h_off = w_off = 0
    elif not phase_train:
        h_off, w_off = (img_h - crop_size) // 2, (img_w - crop_size) // 2
    mv = None
    if mean_values is not None and len(mean_values):
        mv = list(mean_values) * (ch if len(mean_values) == 1 else 1)
    out = np.zeros(ch * height * width, np.float32)
    sc = np.float32(scale)
    for h in range(height):
        row = img[h_off + h, w_off:w_off + width].reshape(-1)
        img_index = 0
        for w in range(width):
            for c in range(ch):
                top = (c * height + h) * width + ((width - 1 - w) if do_mirror else w)
                pixel = np.float32(row[img_index])
                img_index += 1
                if mean is not None:  # the mean has the image's size
                    out[top] = (pixel - mean[(c * img_h + h_off + h) * img_w + w_off + w]) * sc
                elif mv is not None:
                    out[top] = (pixel - np.float32(mv[c])) * sc
                else:
                    out[top] = pixel * sc
    return out.reshape(ch, height, width)


def transform_datum(data, c_, h_, w_, crop_size, phase_train, h_off, w_off, do_mirror, scale=1.0, mean_values=None):
    """``Transform(const Datum&, Dtype*)`` for raw uint8 data (C x H x W bytes)."""
    height, width = (crop_size, crop_size) if crop_size else (h_, w_)
    if not crop_size:
        h_off = w_off = 0
    elif not phase_train:
        h_off, w_off = (h_ - crop_size) // 2, (w_ - crop_size) // 2
    mv = None
    if mean_values is not None and len(mean_values):
        mv = list(mean_values) * (c_ if len(mean_values) == 1 else 1)
    out = np.zeros(c_ * height * width, np.float32)
    sc = np.float32(scale)
    for c in range(c_):
        for h in range(height):
            for w in range(width):
                data_index = (c * h_ + h_off + h) * w_ + w_off + w
                top = (c * height + h) * width + ((width - 1 - w) if do_mirror else w)
                e = np.float32(data[data_index])
                out[top] = (e - np.float32(mv[c])) * sc if mv is not None else e * sc
    return out.reshape(c_, height, width)


# -- the layers' load_batch ------------------------------------------------------------------------
def image_data_batches(lines, lines_id, n_batches, batch_size, read, transform, reshuffle):
    """ImageDataLayer::load_batch ``n_batches`` times from ``lines_id``: ``read(filename)`` the image (H x W [x C]),
    ``transform(img, batch, item)`` its blob; ``reshuffle(lines, pass_no)`` the list after a wrap (shuffle on).
    Returns [(data, labels flat)], the fork's label buffer written at ``item_id * label_size + label_id``."""
    label_count = len(lines[0][1])
    out = []
    passes = 0
    for b in range(n_batches):
        data, label = [], np.zeros(batch_size * label_count, np.float32)
        for item_id in range(batch_size):
            name, values = lines[lines_id]
            data.append(transform(read(name), b, item_id))
            label_size = len(values)
            for label_id in range(label_size):
                label[item_id * label_size + label_id] = values[label_id]
            lines_id += 1
            if lines_id >= len(lines):
                lines_id = 0
                passes += 1
                if reshuffle is not None:
                    lines = reshuffle(lines, passes)
        out.append((np.stack(data), label))
    return out


def data_batches(records, start, n_batches, batch_size, transform):
    """DataLayer::load_batch ``n_batches`` times, the cursor at ``start`` (rand_skip's Next()s, wrapping), records
    parsed by the fork's Datum; ``transform(datum, batch, item)`` its blob. Label shape from record 0."""
    Datum = fork_datum_class()
    first = Datum()
    first.ParseFromString(records[0])
    label_count = len(first.label)
    cursor = start % len(records)
    out = []
    for b in range(n_batches):
        data, label = [], np.zeros(batch_size * label_count, np.float32)
        for item_id in range(batch_size):
            datum = Datum()
            datum.ParseFromString(records[cursor])
            data.append(transform(datum, b, item_id))
            for i in range(len(datum.label)):
                label[item_id * len(datum.label) + i] = datum.label[i]
            cursor = (cursor + 1) % len(records)
        out.append((np.stack(data), label))
    return out
