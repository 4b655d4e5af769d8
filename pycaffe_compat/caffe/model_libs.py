"""``caffe.model_libs``: the net-building helpers of SSD's pycaffe (weiliu89/caffe, branch ``ssd``,
``python/caffe/model_libs.py``), written anew for neocaffe's ``caffe.net_spec``.

SSD's training scripts (``examples/ssd/ssd_pascal.py`` and its siblings) start with
``from caffe.model_libs import *`` and compose their nets from these functions: the base networks
(``ZFNetBody``, ``VGGNetBody``, ``ResNet101Body``, ``ResNet152Body``, ``InceptionV3Body``), the
blocks they are made of (``ConvBNLayer``, ``ResBody``, ``InceptionTower``), the ``AnnotatedData``
input (``CreateAnnotatedDataLayer``) and the detection head (``CreateMultiBoxHead``). Every function
keeps SSD's name, signature and defaults, and writes the same layers into the NetSpec (names, types,
fields, order), so ``net.to_proto()`` gives the NetParameter SSD's pycaffe gives.
``tests/pycaffe/test_model_libs.py`` compares it with prototxts the original wrote.

The star import also hands the scripts what the original's did (``os``, ``caffe``, ``L``, ``P``,
``caffe_pb2``) and, for Python 3, ``xrange``.

Python 2 and Python 3 (the original is Python 2 code):

- ``xrange``: the scripts call it at module level (``for ratio in xrange(...)``); Python 2 had it
  as a builtin. It is exported here as ``range`` so the scripts run unchanged.
- Integer division: padding of a dilated 3x3 (``ResBody``) and of VGG's conv5/fc6 is
  ``(k + (d - 1) * (k - 1) - 1) / 2`` on ints in the original, an integer under Python 2; here ``//``.
- ``UnpackVariable`` begins with ``assert len > 0``, a comparison of the builtin ``len`` with an
  int that Python 2 always found true (and Python 3 refuses); it checks nothing and is left out.
- Python 2 dicts iterate in hash order, so the original's keyword dicts reached ``assign_proto`` in
  an arbitrary order. Every keyword here fills a field of its own (no two keys feed one repeated
  field), so the order cannot change the message: the nets are the same under either language.
- ``dilation > 1`` with a list (not a documented use) is true under Python 2 (any list compares
  greater than any number); a list here is taken as "dilated" too instead of raising TypeError.
- ``net.keys()[-1]`` (the scripts' way to find the last layer) works because ``NetSpec.keys()``
  returns a list, as Python 2's dict did.

Deviations, where the original cannot produce a net:

- ``VGGNetBody(nopool=True)`` raises UnboundLocalError in the original (conv5's dilation is only set
  on the pooling path) and, without fully_conv, looks for a ``pool5`` that nopool never makes. Here
  nopool builds conv5 undilated and the InnerProduct fc6 reads ``conv5_4``.
- ``InceptionTower`` deletes ``'name'`` from, and merges ``bn_param`` into, the caller's dicts; a
  list of dicts could therefore be used only once. Here the caller's dicts are left as they are.
- Argument checks raise :class:`ModelLibsError` (a ValueError and an AssertionError, so code that
  caught the original's AssertionError still does), saying what was received.

Two of the original's quirks are kept because they are part of the nets it writes:
``CreateMultiBoxHead(use_scale=...)`` is accepted but not passed on (its ConvBNLayers always use a
Scale after BatchNorm), and ``InceptionTower`` makes a Pooling layer of every step whose full name
(``<tower>/<name>``) contains ``pool``.
"""
import os

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2

from caffe._model_bodies import (
    ConvBNLayer, InceptionTower, InceptionV3Body, ModelLibsError, ResBody, ResNet101Body, ResNet152Body,
    UnpackVariable, VGGNetBody, ZFNetBody, _require,
)

xrange = range  # Python 2's builtin, used at module level by SSD's scripts after the star import

__all__ = [
    "check_if_exist", "make_if_not_exist", "UnpackVariable", "ConvBNLayer", "ResBody",
    "InceptionTower", "CreateAnnotatedDataLayer", "ZFNetBody", "VGGNetBody", "ResNet101Body",
    "ResNet152Body", "InceptionV3Body", "CreateMultiBoxHead", "ModelLibsError",
    # what ``from caffe.model_libs import *`` gave SSD's scripts besides the functions
    "os", "caffe", "L", "P", "caffe_pb2", "xrange",
]


def check_if_exist(path):
    """True when ``path`` exists (the scripts call it and ignore the answer)."""
    return os.path.exists(path)


def make_if_not_exist(path):
    """Create the folder ``path`` (and its parents) unless it exists."""
    if not os.path.exists(path):
        os.makedirs(path)


def CreateAnnotatedDataLayer(source, batch_size=32, backend=P.Data.LMDB,
                             output_label=True, train=True, label_map_file='', anno_type=None,
                             transform_param={}, batch_sampler=[{}]):
    """SSD's AnnotatedData layer, named ``data``, in the TRAIN (``train``) or TEST phase; returns
    its tops (data and label when ``output_label``, else data alone). ``label_map_file`` is always
    written (even empty), ``batch_sampler`` as given (by default one empty sampler: the whole
    image), ``anno_type`` only when given. The mutable defaults are never changed."""
    annotated = dict(label_map_file=label_map_file, batch_sampler=batch_sampler)
    if anno_type is not None:
        annotated['anno_type'] = anno_type
    phase = caffe_pb2.Phase.Value('TRAIN' if train else 'TEST')
    return L.AnnotatedData(name='data', annotated_data_param=annotated,
                           data_param=dict(batch_size=batch_size, backend=backend, source=source),
                           ntop=2 if output_label else 1, include=dict(phase=phase),
                           transform_param=transform_param)


def _as_list(value):
    return value if type(value) is list else [value]


def _flat_prediction(net, from_layer, name, num_output, head_conv):
    """ConvBNLayer ``name`` (no ReLU), then ``<name>_perm`` (to N,H,W,C) and ``<name>_flat``."""
    ConvBNLayer(net, from_layer, name, use_relu=False, num_output=num_output, stride=1, **head_conv)
    net[f"{name}_perm"] = L.Permute(net[name], order=[0, 2, 3, 1])
    net[f"{name}_flat"] = L.Flatten(net[f"{name}_perm"], axis=1)
    return net[f"{name}_flat"]


def CreateMultiBoxHead(net, data_layer="data", num_classes=[], from_layers=[],
                       use_objectness=False, normalizations=[], use_batchnorm=True, lr_mult=1,
                       use_scale=True, min_sizes=[], max_sizes=[], prior_variance=[0.1],
                       aspect_ratios=[], steps=[], img_height=0, img_width=0, share_location=True,
                       flip=True, clip=True, offset=0.5, inter_layer_depth=[], kernel_size=1, pad=0,
                       conf_postfix='', loc_postfix='', **bn_param):
    """SSD's detection head over ``from_layers``; returns ``[mbox_loc, mbox_conf, mbox_priorbox]``
    (and ``mbox_objectness`` when ``use_objectness``) for MultiBoxLoss or DetectionOutput.

    Per source layer ``s``: ``s_norm`` (Normalize, when ``normalizations[i] != -1``), ``s_inter``
    (a 3x3 ConvBNLayer with ReLU, when ``inter_layer_depth[i] > 0``), then on the result ``x``:
    ``x_mbox_loc<loc_postfix>`` and ``x_mbox_conf<conf_postfix>`` (ConvBNLayer, ``_perm``,
    ``_flat``), ``x_mbox_priorbox`` (PriorBox over ``x`` and ``data_layer``) and, when asked,
    ``x_mbox_objectness``. The number of priors per location is
    ``(1 + [max sizes given] + len(aspect_ratio) * (1 + flip)) * len(min_size)``.
    ``use_scale`` is accepted and unused, as in SSD. ``bn_param`` goes to every ConvBNLayer.
    """
    _require(num_classes, f"CreateMultiBoxHead: num_classes is required. Received: {num_classes!r}")
    _require(num_classes > 0, f"CreateMultiBoxHead: num_classes must be positive. Received: {num_classes!r}")
    count = len(from_layers)
    per_layer = dict(normalizations=normalizations, min_sizes=min_sizes, max_sizes=max_sizes,
                     aspect_ratios=aspect_ratios, steps=steps, inter_layer_depth=inter_layer_depth)
    for arg, values in per_layer.items():
        if values or arg == 'min_sizes':  # the others may be left empty
            _require(len(values) == count, f"CreateMultiBoxHead: {arg} needs one entry per layer of "
                     f"from_layers ({count}). Received: {values!r}")
    _require(data_layer in net.keys(), f"CreateMultiBoxHead: data_layer {data_layer!r} is not in the net")

    head_conv = dict(use_bn=use_batchnorm, lr_mult=lr_mult, kernel_size=kernel_size, pad=pad, **bn_param)
    loc_layers, conf_layers, prior_layers, objectness_layers = [], [], [], []
    for i, from_layer in enumerate(from_layers):
        if normalizations and normalizations[i] != -1:
            net[f"{from_layer}_norm"] = L.Normalize(
                net[from_layer], scale_filler=dict(type="constant", value=normalizations[i]),
                across_spatial=False, channel_shared=False)
            from_layer = f"{from_layer}_norm"
        if inter_layer_depth and inter_layer_depth[i] > 0:
            ConvBNLayer(net, from_layer, f"{from_layer}_inter", use_bn=use_batchnorm, use_relu=True,
                        lr_mult=lr_mult, num_output=inter_layer_depth[i], kernel_size=3, pad=1, stride=1,
                        **bn_param)
            from_layer = f"{from_layer}_inter"

        min_size = _as_list(min_sizes[i])
        aspect_ratio = _as_list(aspect_ratios[i]) if len(aspect_ratios) > i else []
        max_size = _as_list(max_sizes[i]) if len(max_sizes) > i else []
        _require(not max_size or len(max_size) == len(min_size),
                 f"CreateMultiBoxHead: layer {from_layer!r} has {len(min_size)} min sizes and "
                 f"{len(max_size)} max sizes. Received: min {min_size!r}, max {max_size!r}")
        priors = (1 + bool(max_size) + len(aspect_ratio) * (2 if flip else 1)) * len(min_size)

        loc_outputs = priors * 4 if share_location else priors * 4 * num_classes
        loc_layers.append(_flat_prediction(net, from_layer, f"{from_layer}_mbox_loc{loc_postfix}",
                                           loc_outputs, head_conv))
        conf_layers.append(_flat_prediction(net, from_layer, f"{from_layer}_mbox_conf{conf_postfix}",
                                            priors * num_classes, head_conv))

        prior_name = f"{from_layer}_mbox_priorbox"
        prior = dict(min_size=min_size, clip=clip, variance=prior_variance, offset=offset)
        if max_size:
            prior['max_size'] = max_size
        if aspect_ratio:
            prior.update(aspect_ratio=aspect_ratio, flip=flip)
        step = steps[i] if len(steps) > i else []
        if step:
            prior['step'] = step
        if img_height != 0 and img_width != 0:
            prior.update({'img_size': img_height} if img_height == img_width
                         else {'img_h': img_height, 'img_w': img_width})
        net[prior_name] = L.PriorBox(net[from_layer], net[data_layer], **prior)
        prior_layers.append(net[prior_name])

        if use_objectness:
            objectness_layers.append(_flat_prediction(net, from_layer, f"{from_layer}_mbox_objectness",
                                                      priors * 2, head_conv))

    outputs = []
    joins = [("mbox_loc", loc_layers, 1), ("mbox_conf", conf_layers, 1), ("mbox_priorbox", prior_layers, 2)]
    if use_objectness:
        joins.append(("mbox_objectness", objectness_layers, 1))
    for name, parts, axis in joins:
        net[name] = L.Concat(*parts, axis=axis)
        outputs.append(net[name])
    return outputs
