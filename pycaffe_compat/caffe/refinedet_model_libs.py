"""``caffe.refinedet_model_libs``: RefineDet's ``python/caffe/model_libs.py`` (sfzhang15/RefineDet @ a9ca4b2) as
one namespace, for the fork's scripts that must write exactly the fork's nets with batch norm in them.

RefineDet ships its own copy of SSD's model_libs, with three kinds of changes:

- new builders: ``DeconvBNLayer``, ``EltwiseLayer``, ``CreateRefineDetHead``. ``caffe.model_libs`` has
  them too, writing exactly the fork's layers;
- ``CreateMultiBoxHead(prefix='')`` names its Concats ``<prefix>_loc``, ``<prefix>_conf``,
  ``<prefix>_priorbox``, ``<prefix>_objectness`` (model_libs.py:817, 940-950), so the fork's default gives
  ``_loc``, ... where SSD wrote ``mbox_loc``. ``caffe.model_libs`` takes ``prefix`` with the default
  ``'mbox'`` (SSD's names); this module keeps the fork's ``''`` and its argument order;
- ``ConvBNLayer`` writes bare BatchNorm and Scale layers and ignores the batch-norm keywords (see
  ``caffe._refinedet_blocks``). This changes every builder that uses it with batch norm: ``ResBody``,
  ``ResNet101Body``, ``ResNet152Body``, ``InceptionTower``, ``InceptionV3Body`` and ``CreateMultiBoxHead``
  with ``use_batchnorm``. ``caffe.model_libs`` keeps SSD's (SSD's scripts need them); here they are the
  fork's.

Nets without batch norm (RefineDet's VGG16 scripts: ``use_batchnorm = False``) are the same from either
module; the ResNet-101 scripts (batch norm in the extra layers, the ResNet body and the heads' residual
blocks) need this one: replace ``from caffe.model_libs import *`` by ``from caffe.refinedet_model_libs import *``.
The star import gives what the fork's did (``os``, ``caffe``, ``L``, ``P``, ``caffe_pb2``) and ``xrange``.
"""
from caffe import model_libs
from caffe._refinedet_blocks import with_bare_batch_norm
from caffe.model_libs import (  # the builders without batch norm are SSD's
    CreateAnnotatedDataLayer, CreateRefineDetHead, DeconvBNLayer, EltwiseLayer, L, ModelLibsError, P,
    UnpackVariable, VGGNetBody, ZFNetBody, caffe, caffe_pb2, check_if_exist, make_if_not_exist, os, xrange,
)

__all__ = [
    "check_if_exist", "make_if_not_exist", "UnpackVariable", "ConvBNLayer", "DeconvBNLayer", "EltwiseLayer",
    "ResBody", "InceptionTower", "CreateAnnotatedDataLayer", "ZFNetBody", "VGGNetBody", "ResNet101Body",
    "ResNet152Body", "InceptionV3Body", "CreateMultiBoxHead", "CreateRefineDetHead", "ModelLibsError",
    "os", "caffe", "L", "P", "caffe_pb2", "xrange",
]

ConvBNLayer = with_bare_batch_norm(model_libs.ConvBNLayer)
ResBody = with_bare_batch_norm(model_libs.ResBody)
InceptionTower = with_bare_batch_norm(model_libs.InceptionTower)
ResNet101Body = with_bare_batch_norm(model_libs.ResNet101Body)
ResNet152Body = with_bare_batch_norm(model_libs.ResNet152Body)
InceptionV3Body = with_bare_batch_norm(model_libs.InceptionV3Body)
_CreateMultiBoxHead = with_bare_batch_norm(model_libs.CreateMultiBoxHead)


def CreateMultiBoxHead(net, data_layer="data", num_classes=[], from_layers=[],
                       use_objectness=False, normalizations=[], use_batchnorm=True, lr_mult=1,
                       use_scale=True, min_sizes=[], max_sizes=[], prior_variance=[0.1],
                       aspect_ratios=[], steps=[], img_height=0, img_width=0, share_location=True,
                       flip=True, clip=True, offset=0.5, inter_layer_depth=[], kernel_size=1, pad=0, prefix='',
                       conf_postfix='', loc_postfix='', **bn_param):
    """RefineDet's CreateMultiBoxHead: ``caffe.model_libs.CreateMultiBoxHead`` with the fork's bare batch
    norm, its ``prefix`` default ``''`` (Concats ``_loc``, ``_conf``, ...) and its argument order."""
    return _CreateMultiBoxHead(
        net, data_layer=data_layer, num_classes=num_classes, from_layers=from_layers,
        use_objectness=use_objectness, normalizations=normalizations, use_batchnorm=use_batchnorm,
        lr_mult=lr_mult, use_scale=use_scale, min_sizes=min_sizes, max_sizes=max_sizes,
        prior_variance=prior_variance, aspect_ratios=aspect_ratios, steps=steps, img_height=img_height,
        img_width=img_width, share_location=share_location, flip=flip, clip=clip, offset=offset,
        inter_layer_depth=inter_layer_depth, kernel_size=kernel_size, pad=pad, prefix=prefix,
        conf_postfix=conf_postfix, loc_postfix=loc_postfix, **bn_param)
