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

RefineDet (sfzhang15/RefineDet @ a9ca4b2) ships its own copy of this module; its additions are here,
writing exactly the fork's layers: ``DeconvBNLayer``, ``EltwiseLayer`` (``caffe._refinedet_blocks``),
``CreateRefineDetHead`` and ``CreateMultiBoxHead(prefix=...)``, whose default here is ``'mbox'`` (SSD's
names; the fork's ``''`` names the Concats ``_loc``, ...). The fork's ConvBNLayer also writes its batch
norm bare (no BN fields, Scale with ``bias_term`` only): RefineDet's own builders here do, SSD's keep
SSD's. ``caffe.refinedet_model_libs`` is the fork's module as a whole, for its ResNet-101 scripts; its
VGG16 scripts (no batch norm) write the same nets from either. ``tests/pycaffe/test_model_libs_refinedet.py``
compares both with the prototxts RefineDet's script wrote and with the fork's own functions.

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

from caffe._detection_heads import CreateMultiBoxHead, CreateRefineDetHead
from caffe._inception_body import InceptionV3Body
from caffe._model_bodies import (
    ConvBNLayer, InceptionTower, ModelLibsError, ResBody, ResNet101Body, ResNet152Body,
    UnpackVariable, VGGNetBody, ZFNetBody,
)
from caffe._refinedet_blocks import DeconvBNLayer, EltwiseLayer

xrange = range  # Python 2's builtin, used at module level by SSD's scripts after the star import

__all__ = [
    "check_if_exist", "make_if_not_exist", "UnpackVariable", "ConvBNLayer", "ResBody",
    "InceptionTower", "CreateAnnotatedDataLayer", "ZFNetBody", "VGGNetBody", "ResNet101Body",
    "ResNet152Body", "InceptionV3Body", "CreateMultiBoxHead", "ModelLibsError",
    # RefineDet's additions (sfzhang15/RefineDet's python/caffe/model_libs.py)
    "DeconvBNLayer", "EltwiseLayer", "CreateRefineDetHead",
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
