"""RefineDet's net builders (sfzhang15/RefineDet @ a9ca4b2, python/caffe/model_libs.py, blob b45a925e):
DeconvBNLayer, EltwiseLayer, CreateRefineDetHead and CreateMultiBoxHead's ``prefix`` in ``caffe.model_libs``, and
the fork's whole module (its bare batch norm) as ``caffe.refinedet_model_libs``.

The goldens are digests (``_digest``: sha256 of the message's fields in name order), written inline, so nothing
here needs the network or a mirror:

- REAL: the train/test/deploy prototxts RefineDet's own examples/refinedet/VGG16_VOC2007_320.py wrote, committed
  in 871864580/RefineDet @ e8f9d32 as models/VGGNet/{VOC0712,widerface}/refinedet_vgg16_320x320/*.prototxt
  (blobs: VOC0712 5ebc12d7 de839a5c 1f0d6a6a, widerface d0c33e03 04d721f7 dd09be11; that repository's
  generator, model_libs.py and sources are byte-identical to sfzhang15's), parsed. VOC_TEST_LAYERS has one
  digest per layer of the VOC0712 test net, to name the layers that differ when a digest does not match.
- FORK_RESNET101_COCO, FORK: what the fork's own model_libs.py writes for ResNet101_COCO_320.py (which has no
  committed prototxts) and for the COMPOSITIONS below: a scratch copy with the three changes Python 3 needs (``xrange``
  defined as ``range``, ``assert len > 0`` dropped, ``int(...) / 2`` paddings as ``//``) run on neocaffe's
  net_spec. The same copy writes every REAL net exactly, through ``refinedet_320_script`` below.

To regenerate FORK, load that copy as module ``fork`` (``builtins.xrange = range`` before exec'ing its text)
and print ``{name: (len(net.layer), _digest(net)) for name, net in ((k, b(fork).to_proto()) for k, b in
COMPOSITIONS.items())}``; FORK_RESNET101_COCO likewise from ``refinedet_320_script(fork, dir, 'ResNet101', COCO)``.
"""
from __future__ import annotations

import hashlib
import math
import os
import types

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

import caffe
from caffe import model_libs as ml
from caffe import refinedet_model_libs as rml
from caffe.proto import caffe_pb2


def _canonical(msg):
    """A message as text with every level's fields in name order: independent of field numbers and of the
    float formatting of the protobuf release that printed the file."""
    parts = []
    for field, value in sorted(msg.ListFields(), key=lambda item: item[0].name):
        repeated = field.is_repeated if hasattr(field, 'is_repeated') else field.label == field.LABEL_REPEATED
        for item in (value if repeated else [value]):
            parts.append(f"{field.name}{{{_canonical(item)}}}" if field.type == FieldDescriptor.TYPE_MESSAGE
                         else f"{field.name}:{item!r}")
    return " ".join(parts)


def _digest(msg, length=16):
    return hashlib.sha256(_canonical(msg).encode()).hexdigest()[:length]


def _parse(path):
    with open(path) as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


def _star_import(module):
    """What a script's ``from <module> import *`` gives it, as attributes."""
    namespace: dict = {}
    exec(f"from {module} import *", namespace)
    return types.SimpleNamespace(**namespace)


# ---------------------------------------------------------------- goldens

REAL = {
    ('VOC0712', 'train'): (134, '2e8ace090c0f68bf'),
    ('VOC0712', 'test'): (137, '8d2ecca49b4823ef'),
    ('VOC0712', 'deploy'): (135, '78084f9d67d912c0'),
    ('widerface', 'train'): (134, '9d6fe45c9a3cae79'),
    ('widerface', 'test'): (137, '5ce036bad8752292'),
    ('widerface', 'deploy'): (135, '23c143bcadb7a26c'),
}
VOC_TEST_LAYERS = """
data=bc8e39f6b9 conv1_1=4fc91e5ebc relu1_1=601c9774a7 conv1_2=6ae9318921 relu1_2=7ef4cb7b7c pool1=05e2e3fa49
conv2_1=527c72f2ed relu2_1=ed43e74829 conv2_2=fe2a847e95 relu2_2=d118ff9c6b pool2=6d7a5fa893 conv3_1=82ac1890af
relu3_1=d57525fb5f conv3_2=3162d2227d relu3_2=04864e7d05 conv3_3=ea598a2ecf relu3_3=1e4340685f pool3=d26f8cdcbe
conv4_1=6b11b72f5a relu4_1=85c2004405 conv4_2=7169fc4209 relu4_2=78bf515016 conv4_3=c000def086 relu4_3=bc11f41593
pool4=f534c17507 conv5_1=ff17323d97 relu5_1=3fa90a79c3 conv5_2=8c6de9fba7 relu5_2=ecccb226ab conv5_3=2438251d4f
relu5_3=2a1252f761 pool5=5dd973952f fc6=02b2c3b797 relu6=c4a5af9ea4 fc7=cdd8180a33 relu7=556bb5e480
conv6_1=d9b909d59e conv6_1_relu=5e7d001c08 conv6_2=fc6f99740c conv6_2_relu=d9a375af12 TL6_1=5d0631da6e
TL6_1_relu=0476f7fea0 TL6_2=7d24fc1c62 TL6_2_relu=352767b3ce P6=b9fd696603 P6_relu=564223f571 TL5_1=35be4e5ad5
TL5_1_relu=0b8d44dcda TL5_2=b7c37ef545 P6-up=5189916f77 Elt5=7f15a386d8 Elt5_relu=16ecf48a97 P5=8e28421fd9
P5_relu=ecaeae52e6 conv5_3_norm=bdac797d9f TL4_1=53267c2b93 TL4_1_relu=b347f40153 TL4_2=7914b33c7b P5-up=b0ac1a843a
Elt4=a26d138b4a Elt4_relu=3feb440975 P4=4ac98676ea P4_relu=297eb171c8 conv4_3_norm=dd1869826e TL3_1=6c11c110f0
TL3_1_relu=8b1367e1f2 TL3_2=a05eada3f5 P4-up=cdbc24b2b9 Elt3=73f44b529f Elt3_relu=4ee24ecad4 P3=7d521dad1c
P3_relu=ea5e5f6701 conv4_3_norm_mbox_loc=9ec203af15 conv4_3_norm_mbox_loc_perm=0ae2529682
conv4_3_norm_mbox_loc_flat=4b4f05ad61 conv4_3_norm_mbox_conf=62a64b4b4f conv4_3_norm_mbox_conf_perm=7ada681bf6
conv4_3_norm_mbox_conf_flat=90f2dd998f conv4_3_norm_mbox_priorbox=973e605b38 conv5_3_norm_mbox_loc=857c3ba672
conv5_3_norm_mbox_loc_perm=4f83bba97c conv5_3_norm_mbox_loc_flat=dfe18e124c conv5_3_norm_mbox_conf=012bc652c8
conv5_3_norm_mbox_conf_perm=dc41726ee4 conv5_3_norm_mbox_conf_flat=03cf832593 conv5_3_norm_mbox_priorbox=f8ca20e1c0
fc7_mbox_loc=7108ab5235 fc7_mbox_loc_perm=db0c8fa76f fc7_mbox_loc_flat=cf8a4476ae fc7_mbox_conf=80ed03b302
fc7_mbox_conf_perm=f4a3dd085a fc7_mbox_conf_flat=9e231663cc fc7_mbox_priorbox=6674fc6f78
conv6_2_mbox_loc=5e9cfe129c conv6_2_mbox_loc_perm=5a9b7d7341 conv6_2_mbox_loc_flat=dbc2c840ef
conv6_2_mbox_conf=ba9eb535b3 conv6_2_mbox_conf_perm=e8b66bdbec conv6_2_mbox_conf_flat=f392b06fbc
conv6_2_mbox_priorbox=97fb86c15d arm_loc=8035e19a54 arm_conf=1fa9359cfe arm_priorbox=a7ab939d3d
P3_mbox_loc=698afe2e35 P3_mbox_loc_perm=6d55019f24 P3_mbox_loc_flat=3601f78510 P3_mbox_conf=46792e71c0
P3_mbox_conf_perm=50c576c50a P3_mbox_conf_flat=369103c0b8 P4_mbox_loc=18e4470f1d P4_mbox_loc_perm=b60cc66616
P4_mbox_loc_flat=ce49a73fb7 P4_mbox_conf=487c8b0288 P4_mbox_conf_perm=08ffc82be9 P4_mbox_conf_flat=233ca4f8ff
P5_mbox_loc=3537a4e10c P5_mbox_loc_perm=dff9bae628 P5_mbox_loc_flat=2445b57bbb P5_mbox_conf=ec477e3200
P5_mbox_conf_perm=0169dedcb2 P5_mbox_conf_flat=14b200b878 P6_mbox_loc=1f75e85958 P6_mbox_loc_perm=59d461c366
P6_mbox_loc_flat=f1a2221c0e P6_mbox_conf=84350b1f09 P6_mbox_conf_perm=0fc3c19978 P6_mbox_conf_flat=5cbe1350fe
odm_loc=4bf3e2652d odm_conf=2d7d393d2e arm_conf_reshape=5bde5b48c9 arm_conf_softmax=901de89921
arm_conf_flatten=923b8786e6 odm_conf_reshape=04704866cd odm_conf_softmax=4fc0a61db6 odm_conf_flatten=5747e1237c
detection_out=776527b027 detection_eval=5fb02f16b2
"""
FORK_RESNET101_COCO = {
    'train': (713, 'ebf0d9e07c610c53'),
    'test': (716, '796814744b15571c'),
    'deploy': (714, 'f3d30efc17786c63'),
}
FORK = {
    'deconv_eltwise': (14, 'ff27acf621b7c626'),
    'conv_bn': (13, '7301faeffd773d44'),
    'bodies': (685, '13242eec505c08e4'),
    'inception': (408, '918fb8d58fcaf8b3'),
    'refinedet_head_variants': (116, '15cb070e59c82ab3'),
    'refinedet_head_plain': (36, 'dfc3f5184a095a44'),
    'multibox_bn': (46, '77b034eb6fccddfb'),
    'multibox_bn_arm': (46, '6f38e4f54fd0226d'),
    'multibox_plain': (32, '626e0f063c175491'),
}


# ---------------------------------------------------------------- the scripts, trimmed to their nets

# The scripts' dataset settings: VGG16_VOC2007_320.py, its widerface copy (871864580/RefineDet) and
# ResNet101_COCO_320.py.
VOC = dict(dataset='VOC0712', num_classes=21, use_difficult_gt=True, force_color=False,
           train_data="examples/VOC0712/VOC0712_trainval_lmdb", test_data="examples/VOC0712/VOC0712_test_lmdb",
           name_size_file="data/VOC0712/test_name_size.txt", label_map_file="data/VOC0712/labelmap_voc.prototxt")
WIDERFACE = dict(VOC, dataset='widerface', num_classes=2,
                 train_data="/home/yc/workplace/deeplearning/object_detect/RefineDet/face_data/trainval_lmdb",
                 test_data="/home/yc/workplace/deeplearning/object_detect/RefineDet/face_data/test_lmdb",
                 name_size_file="data/widerface/test_name_size.txt",
                 label_map_file="data/widerface/labelmap_voc.prototxt")
COCO = dict(dataset='coco', num_classes=81, use_difficult_gt=False, force_color=True,
            train_data="examples/coco/coco_train_lmdb", test_data="examples/coco/coco_minival_lmdb",
            name_size_file="data/coco/minival2014_name_size.txt", label_map_file="data/coco/labelmap_coco.prototxt")


def _transfer_block(m, net, layer, p, use_batchnorm, **lr):
    """The scripts' transfer connection block TL<p>_1, TL<p>_2 (+ P<p+1>-up, Elt<p>) and P<p> from ``layer``."""
    m.ConvBNLayer(net, layer, f"TL{p}_1", use_batchnorm, True, 256, 3, 1, 1, **lr)
    if p == 6:
        m.ConvBNLayer(net, f"TL{p}_1", f"TL{p}_2", use_batchnorm, True, 256, 3, 1, 1, **lr)
        m.ConvBNLayer(net, f"TL{p}_2", f"P{p}", use_batchnorm, True, 256, 3, 1, 1, **lr)
        return
    m.ConvBNLayer(net, f"TL{p}_1", f"TL{p}_2", use_batchnorm, False, 256, 3, 1, 1, **lr)
    m.DeconvBNLayer(net, f"P{p + 1}", f"P{p + 1}-up", use_batchnorm, False, 256, 2, 0, 2, **lr)
    m.EltwiseLayer(net, [f"TL{p}_2", f"P{p + 1}-up"], f"Elt{p}")
    net[f"Elt{p}_relu"] = m.L.ReLU(net[f"Elt{p}"], in_place=True)
    m.ConvBNLayer(net, f"Elt{p}_relu", f"P{p}", use_batchnorm, True, 256, 3, 1, 1, **lr)


def _vgg16_extra_layers(m, net, use_batchnorm, arm_source_layers, normalizations, lr_mult=1):
    """VGG16_*_320.py's AddExtraLayers: conv6_1, conv6_2, then top-down a transfer block per source. Like
    the script, it reverses its caller's lists and renames the normalized sources in ``arm_source_layers``."""
    m.ConvBNLayer(net, net.keys()[-1], "conv6_1", use_batchnorm, True, 256, 1, 0, 1, lr_mult=lr_mult)
    m.ConvBNLayer(net, "conv6_1", "conv6_2", use_batchnorm, True, 512, 3, 1, 2, lr_mult=lr_mult)
    arm_source_layers.reverse()
    normalizations.reverse()
    for index, layer in enumerate(list(arm_source_layers)):
        if normalizations and normalizations[index] != -1:
            net[f"{layer}_norm"] = m.L.Normalize(
                net[layer], scale_filler=dict(type="constant", value=normalizations[index]),
                across_spatial=False, channel_shared=False)
            layer = arm_source_layers[index] = f"{layer}_norm"
        _transfer_block(m, net, layer, 6 - index, use_batchnorm, lr_mult=lr_mult)


def _resnet101_extra_layers(m, net, arm_source_layers, use_batchnorm=True):
    """ResNet101_COCO_320.py's AddExtraLayers: the residual block res6, then the transfer blocks (no lr_mult)."""
    m.ResBody(net, net.keys()[-1], '6', out2a=128, out2b=128, out2c=512, stride=2, use_branch1=True)
    arm_source_layers.reverse()
    for index, layer in enumerate(arm_source_layers):
        _transfer_block(m, net, layer, 6 - index, use_batchnorm)


def refinedet_320_script(m, save_dir, trunk='VGG16', dataset=VOC):
    """The net-writing part of RefineDet's 320x320 scripts (examples/refinedet/VGG16_VOC2007_320.py for
    ``trunk='VGG16'``, ResNet101_COCO_320.py for ``'ResNet101'``), ``m`` being what their
    ``from caffe.model_libs import *`` gives: the train, test and deploy nets, built and written as the
    scripts do, into ``save_dir``. Returns {'train'|'test'|'deploy': path}."""
    L, P, caffe_pb2 = m.L, m.P, m.caffe_pb2
    size = 320
    batch_sampler = [dict(sampler={}, max_trials=1, max_sample=1)] + [
        dict(sampler=dict(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0),
             sample_constraint=constraint, max_trials=50, max_sample=1)
        for constraint in [dict(min_jaccard_overlap=j) for j in (0.1, 0.3, 0.5, 0.7, 0.9)]
        + [dict(max_jaccard_overlap=1.0)]]
    color = dict(force_color=True) if dataset['force_color'] else {}
    train_transform_param = dict(
        mirror=True, mean_value=[104, 117, 123], **color,
        resize_param=dict(prob=1, resize_mode=P.Resize.WARP, height=size, width=size,
                          interp_mode=[P.Resize.LINEAR, P.Resize.AREA, P.Resize.NEAREST, P.Resize.CUBIC,
                                       P.Resize.LANCZOS4]),
        distort_param=dict(brightness_prob=0.5, brightness_delta=32, contrast_prob=0.5, contrast_lower=0.5,
                           contrast_upper=1.5, hue_prob=0.5, hue_delta=18, saturation_prob=0.5,
                           saturation_lower=0.5, saturation_upper=1.5, random_order_prob=0.0),
        expand_param=dict(prob=0.5, max_expand_ratio=4.0),
        emit_constraint=dict(emit_type=caffe_pb2.EmitConstraint.CENTER))
    test_transform_param = dict(mean_value=[104, 117, 123], **color,
                                resize_param=dict(prob=1, resize_mode=P.Resize.WARP, height=size, width=size,
                                                  interp_mode=[P.Resize.LINEAR]))
    model_name = f"{dataset['dataset']}_refinedet_{trunk.lower()}_{size}x{size}"
    num_classes = dataset['num_classes']
    neg_pos_ratio = 3.
    multibox_loss_param = dict(
        loc_loss_type=P.MultiBoxLoss.SMOOTH_L1, conf_loss_type=P.MultiBoxLoss.SOFTMAX,
        loc_weight=(neg_pos_ratio + 1.) / 4., num_classes=num_classes, share_location=True,
        match_type=P.MultiBoxLoss.PER_PREDICTION, overlap_threshold=0.5, use_prior_for_matching=True,
        background_label_id=0, use_difficult_gt=dataset['use_difficult_gt'],
        mining_type=P.MultiBoxLoss.MAX_NEGATIVE, neg_pos_ratio=neg_pos_ratio, neg_overlap=0.5,
        code_type=P.PriorBox.CENTER_SIZE, ignore_cross_boundary_bbox=False, objectness_score=0.01)
    loss_param = dict(normalization=P.Loss.VALID)
    head = dict(min_sizes=[32, 64, 128, 256], max_sizes=[[], [], [], []], steps=[8, 16, 32, 64],
                aspect_ratios=[[2], [2], [2], [2]], normalizations=[], num_classes=num_classes,
                share_location=True, flip=True, clip=False, prior_variance=[0.1, 0.1, 0.2, 0.2], kernel_size=3,
                pad=1, lr_mult=1, use_batchnorm=False, from_layers2=['P3', 'P4', 'P5', 'P6'])
    if trunk == 'ResNet101':
        head['inter_layer_depth'] = [1, 1, 1, 1]
    normalizations = [10, 8, -1, -1]  # VGG16's; the script's lists are reversed twice per net
    batch_size_per_device = int(math.ceil(32.0 / 4))  # batch_size 32 on gpus "0,1,2,3"
    det_out_param = dict(num_classes=num_classes, share_location=True, background_label_id=0,
                         nms_param=dict(nms_threshold=0.45, top_k=1000), keep_top_k=500, confidence_threshold=0.01,
                         code_type=P.PriorBox.CENTER_SIZE, objectness_score=0.01)
    det_eval_param = dict(num_classes=num_classes, background_label_id=0, overlap_threshold=0.5,
                          evaluate_difficult_gt=False, name_size_file=dataset['name_size_file'])
    phase = {name: dict(phase=caffe_pb2.Phase.Value(name)) for name in ('TRAIN', 'TEST')}
    arm_sources = {'VGG16': ['conv4_3', 'conv5_3', 'fc7', 'conv6_2'],
                   'ResNet101': ['res3b3_relu', 'res4b22_relu', 'res5c_relu', 'res6_relu']}[trunk]

    def trunk_and_heads(net, arm_source_layers):
        if trunk == 'VGG16':
            m.VGGNetBody(net, from_layer='data', fully_conv=True, reduced=True, dilated=False, dropout=False)
            _vgg16_extra_layers(m, net, False, arm_source_layers, normalizations, lr_mult=1)
            normalizations.reverse()
        else:
            m.ResNet101Body(net, from_layer='data', use_pool5=False, use_dilation_conv5=False)
            _resnet101_extra_layers(m, net, arm_source_layers, use_batchnorm=True)
        arm_source_layers.reverse()
        return m.CreateRefineDetHead(net, data_layer='data', from_layers=arm_source_layers, **head)

    def softmaxed(net, conf_name, classes):
        net[f"{conf_name}_reshape"] = L.Reshape(net[conf_name], shape=dict(dim=[0, -1, classes]))
        net[f"{conf_name}_softmax"] = L.Softmax(net[f"{conf_name}_reshape"], axis=2)
        net[f"{conf_name}_flatten"] = L.Flatten(net[f"{conf_name}_softmax"], axis=1)
        return net[f"{conf_name}_flatten"]

    files = {name: os.path.join(save_dir, f"{name}.prototxt") for name in ('train', 'test', 'deploy')}
    net = m.caffe.NetSpec()
    net.data, net.label = m.CreateAnnotatedDataLayer(
        dataset['train_data'], batch_size=batch_size_per_device, train=True, output_label=True,
        label_map_file=dataset['label_map_file'], transform_param=train_transform_param, batch_sampler=batch_sampler)
    mbox = trunk_and_heads(net, list(arm_sources))
    net.arm_loss = L.MultiBoxLoss(*mbox[:3], net.label, multibox_loss_param=dict(multibox_loss_param, num_classes=2),
                                  loss_param=loss_param, include=phase['TRAIN'],
                                  propagate_down=[True, True, False, False])
    arm_conf = softmaxed(net, "arm_conf", 2)
    net.odm_loss = L.MultiBoxLoss(mbox[3], mbox[4], mbox[2], net.label, arm_conf, mbox[0],
                                  multibox_loss_param=multibox_loss_param, loss_param=loss_param,
                                  include=phase['TRAIN'], propagate_down=[True, True, False, False, False, False])
    with open(files['train'], 'w') as f:
        print(f'name: "{model_name}_train"', file=f)
        print(net.to_proto(), file=f)

    net = m.caffe.NetSpec()
    net.data, net.label = m.CreateAnnotatedDataLayer(
        dataset['test_data'], batch_size=1, train=False, output_label=True,
        label_map_file=dataset['label_map_file'], transform_param=test_transform_param)
    mbox = trunk_and_heads(net, list(arm_sources))
    arm_conf = softmaxed(net, "arm_conf", 2)
    odm_conf = softmaxed(net, "odm_conf", num_classes)
    net.detection_out = L.DetectionOutput(mbox[3], odm_conf, mbox[2], arm_conf, mbox[0],
                                          detection_output_param=det_out_param, include=phase['TEST'])
    net.detection_eval = L.DetectionEvaluate(net.detection_out, net.label, detection_evaluate_param=det_eval_param,
                                             include=phase['TEST'])
    with open(files['test'], 'w') as f:
        print(f'name: "{model_name}_test"', file=f)
        print(net.to_proto(), file=f)

    net_param = net.to_proto()  # deploy: the test net less its first (AnnotatedData) and last (DetectionEvaluate)
    del net_param.layer[0]
    del net_param.layer[-1]
    net_param.name = f'{model_name}_deploy'
    net_param.input.extend(['data'])
    net_param.input_shape.extend([caffe_pb2.BlobShape(dim=[1, 3, size, size])])
    with open(files['deploy'], 'w') as f:
        print(net_param, file=f)
    return files


# ---------------------------------------------------------------- compositions (run on the fork for FORK)

def _small(m):
    n = caffe.NetSpec()
    n.data = m.L.Input(shape=dict(dim=[1, 3, 64, 64]))
    n.c1 = m.L.Convolution(n.data, num_output=8, kernel_size=3, stride=4, pad=1)
    n.c2 = m.L.Convolution(n.c1, num_output=8, kernel_size=3, stride=2, pad=1)
    n.c3 = m.L.Convolution(n.c2, num_output=8, kernel_size=3, stride=2, pad=1)
    return n


def deconv_eltwise(m):
    """DeconvBNLayer in each form (batch-norm keywords, which the fork ignores, included) and EltwiseLayer."""
    n = _small(m)
    m.DeconvBNLayer(n, 'c3', 'up', True, True, 8, 2, 0, 2, lr_mult=3, eps=0.5, use_global_stats=True)
    m.DeconvBNLayer(n, 'c2', 'up2', True, False, 8, [4], [1], [2], use_scale=False, lr_mult=2,
                    deconv_prefix='d_', deconv_postfix='/x', bn_prefix='b_', bn_postfix='/bn', bias_prefix='s_',
                    bias_postfix='/b', use_global_stats=True)
    m.DeconvBNLayer(n, 'c1', 'up3', False, True, 8, 3, 1, 1, scale_prefix='q_', scale_postfix='/s')
    m.EltwiseLayer(n, ['c2', 'up', 'ignored'], 'sum')
    return n


def conv_bn(m):
    """ConvBNLayer's batch-norm forms (Scale, Bias, global stats, rectangular, dilated) and a plain one."""
    n = _small(m)
    m.ConvBNLayer(n, 'c3', 'cb1', True, True, 8, 3, 1, 1, lr_mult=2, eps=1e-5, use_global_stats=True,
                  moving_average_fraction=0.9)
    m.ConvBNLayer(n, 'cb1', 'cb2', True, False, 8, [1, 3], [0, 1], 1, use_scale=False, dilation=2, lr_mult=0.5,
                  use_global_stats=True)
    m.ConvBNLayer(n, 'cb2', 'cb3', False, True, 8, 3, 1, 1)
    return n


def bodies(m):
    """ResNet-152 (dilated conv5, global pooling) and a dilated ResBody, with batch-norm keywords."""
    n = caffe.NetSpec()
    n.data = m.L.Input(shape=dict(dim=[1, 3, 224, 224]))
    m.ResNet152Body(n, 'data', use_pool5=True, use_dilation_conv5=True, eps=1e-4, use_global_stats=True)
    m.ResBody(n, 'res5c', 'x', 4, 4, 8, 1, True, dilation=2, eps=0.1)
    return n


def inception(m):
    n = caffe.NetSpec()
    n.data = m.L.Input(shape=dict(dim=[1, 3, 299, 299]))
    return m.InceptionV3Body(n, 'data', output_pred=True, use_global_stats=True)


def refinedet_head_variants(m):
    """CreateRefineDetHead's options: batch norm (and the keywords the fork ignores), per-class boxes,
    normalizations on both levels, inter residual blocks, max sizes, two min sizes, a rectangular image,
    postfixes, no flip, clip, offset, a shorter from_layers2."""
    n = _small(m)
    n.d1 = m.L.Convolution(n.c1, num_output=8, kernel_size=1)
    n.d2 = m.L.Convolution(n.c2, num_output=8, kernel_size=1)
    mbox = m.CreateRefineDetHead(
        n, data_layer='data', num_classes=5, from_layers=['c1', 'c2', 'c3'], from_layers2=['d1', 'd2'],
        normalizations=[10, -1, 4], use_batchnorm=True, lr_mult=2, min_sizes=[[8, 12], 24, 40],
        max_sizes=[[16, 20], [32], []], prior_variance=[0.1, 0.1, 0.2, 0.2], aspect_ratios=[[2], [2, 3], 3],
        steps=[4, 8.5, 0], img_height=64, img_width=80, share_location=False, flip=False, clip=True, offset=0.25,
        inter_layer_depth=[1, 0, 2], kernel_size=3, pad=1, conf_postfix='_c', loc_postfix='_l',
        eps=1e-5, use_global_stats=True)
    n.joined = m.L.Concat(*mbox, axis=1)
    return n


def refinedet_head_plain(m):
    n = _small(m)
    mbox = m.CreateRefineDetHead(n, num_classes=3, from_layers=['c1', 'c2'], from_layers2=['c1', 'c2'],
                                 min_sizes=[8, 16], use_batchnorm=False, img_height=64, img_width=64)
    n.joined = m.L.Concat(*mbox, axis=1)
    return n


def multibox(m, use_batchnorm=True, **prefix):
    n = _small(m)
    mbox = m.CreateMultiBoxHead(n, num_classes=3, from_layers=['c1', 'c2'], min_sizes=[8, 16], max_sizes=[16, 24],
                                aspect_ratios=[[2], [2, 3]], use_objectness=True, inter_layer_depth=[4, 0],
                                normalizations=[-1, 3], use_batchnorm=use_batchnorm, eps=0.1, **prefix)
    n.joined = m.L.Concat(*mbox, axis=1)
    return n


COMPOSITIONS = {
    'deconv_eltwise': deconv_eltwise, 'conv_bn': conv_bn, 'bodies': bodies, 'inception': inception,
    'refinedet_head_variants': refinedet_head_variants, 'refinedet_head_plain': refinedet_head_plain,
    'multibox_bn': multibox, 'multibox_bn_arm': lambda m: multibox(m, prefix='arm'),
    'multibox_plain': lambda m: multibox(m, use_batchnorm=False),
}


# ---------------------------------------------------------------- helpers

def _check(net, expected, label):
    """``net`` has the expected (layer count, digest); else fail naming the layers whose content differs from
    the same-named layer of RefineDet's VOC0712 test net."""
    found = (len(net.layer), _digest(net))
    if found == expected:
        return
    known = dict(item.split('=') for item in VOC_TEST_LAYERS.split())
    differing = [layer.name for layer in net.layer if layer.name in known and _digest(layer, 10) != known[layer.name]]
    unknown = [layer.name for layer in net.layer if layer.name not in known]
    pytest.fail(f"{label}: (layers, digest) {found}, expected {expected}. Layers that differ from the VOC0712 "
                f"test net's: {differing[:20]}; layers it does not have: {unknown[:20]}")


def _layers(n):
    return {layer.name: layer for layer in n.to_proto().layer}


def _mults(layer):
    return [(p.lr_mult, p.decay_mult) for p in layer.param]


# ---------------------------------------------------------------- the real generated prototxts

@pytest.mark.parametrize("module", ["caffe.model_libs", "caffe.refinedet_model_libs"])
@pytest.mark.parametrize("dataset", [VOC, WIDERFACE], ids=lambda d: d['dataset'])
def test_vgg16_320_script_writes_refinedets_prototxts(tmp_path, module, dataset):
    # RefineDet's VGG16 nets have no batch norm: both modules write them as the fork did.
    files = refinedet_320_script(_star_import(module), str(tmp_path), 'VGG16', dataset)
    for phase, path in files.items():
        _check(_parse(path), REAL[dataset['dataset'], phase], f"{dataset['dataset']} {phase}.prototxt")


def test_resnet101_coco_320_script_matches_the_fork(tmp_path):
    files = refinedet_320_script(_star_import("caffe.refinedet_model_libs"), str(tmp_path), 'ResNet101', COCO)
    nets = {phase: _parse(path) for phase, path in files.items()}
    for phase, net in nets.items():
        _check(net, FORK_RESNET101_COCO[phase], f"ResNet-101 {phase}.prototxt")
    deploy = {layer.name: layer for layer in nets['deploy'].layer}
    assert deploy['bn_conv1'].type == 'BatchNorm' and not deploy['bn_conv1'].param
    assert not deploy['bn_conv1'].HasField('batch_norm_param')
    assert deploy['TL6_1_scale'].scale_param.bias_term and not deploy['TL6_1_scale'].param
    assert deploy['P6-up_bn'].bottom == ['P6-up'] and deploy['resres3b3_relu_inter'].type == 'Eltwise'

    # Through caffe.model_libs (SSD's ConvBNLayer) only the BatchNorm and Scale layers differ: SSD's fields.
    ssd_dir = tmp_path / "ssd"
    ssd_dir.mkdir()
    ssd_files = refinedet_320_script(_star_import("caffe.model_libs"), str(ssd_dir), 'ResNet101', COCO)
    ssd = _parse(ssd_files['deploy'])
    assert [(layer.name, layer.type) for layer in ssd.layer] == [(layer.name, layer.type) for layer in deploy.values()]
    differing = {layer.type for layer in ssd.layer if layer != deploy[layer.name]}
    assert differing == {'BatchNorm', 'Scale'}
    bn = {layer.name: layer for layer in ssd.layer}['bn_conv1']
    assert bn.batch_norm_param.eps == pytest.approx(0.001) and len(bn.param) == 3


# ---------------------------------------------------------------- every builder against the fork's

@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_refinedet_model_libs_matches_the_fork(name):
    net = COMPOSITIONS[name](rml).to_proto()
    assert (len(net.layer), _digest(net)) == FORK[name]


# caffe.model_libs: RefineDet's new builders write the fork's layers; CreateMultiBoxHead with the fork's prefix.
MODEL_LIBS_COMPOSITIONS = {
    'deconv_eltwise': deconv_eltwise, 'refinedet_head_variants': refinedet_head_variants,
    'refinedet_head_plain': refinedet_head_plain,
    'multibox_plain': lambda m: multibox(m, use_batchnorm=False, prefix=''),
}


@pytest.mark.parametrize("name", sorted(MODEL_LIBS_COMPOSITIONS))
def test_model_libs_refinedet_builders_match_the_fork(name):
    net = MODEL_LIBS_COMPOSITIONS[name](ml).to_proto()
    assert (len(net.layer), _digest(net)) == FORK[name]


# ---------------------------------------------------------------- what the builders write, spelled out

def test_bare_batch_norm():
    fork, ssd = _layers(conv_bn(rml)), _layers(conv_bn(ml))
    assert list(fork) == list(ssd)
    assert fork['cb1_bn'].type == 'BatchNorm' and not fork['cb1_bn'].param
    assert not fork['cb1_bn'].HasField('batch_norm_param') and fork['cb1_bn'].top == ['cb1']
    assert fork['cb1_scale'].scale_param == caffe_pb2.ScaleParameter(bias_term=True) and not fork['cb1_scale'].param
    assert _mults(fork['cb2_bias']) == [(0.5, 0)]  # the fork ignores use_global_stats
    assert _mults(ssd['cb2_bias']) == [(0, 0)] and ssd['cb1_bn'].batch_norm_param.use_global_stats
    for name in ('cb1', 'cb2', 'cb3', 'cb1_relu', 'cb3_relu'):
        assert fork[name] == ssd[name]
    assert fork['cb2'].convolution_param.dilation == [2] and fork['cb2'].convolution_param.kernel_w == 3


def test_deconv_bn_layer_and_eltwise():
    L_ = _layers(deconv_eltwise(ml))
    assert list(L_)[4:] == ['up', 'up_bn', 'up_scale', 'up_relu', 'd_up2/x', 'b_up2/bn', 's_up2/b', 'up3',
                            'up3_relu', 'sum']
    up = L_['up']
    assert up.type == 'Deconvolution' and _mults(up) == [(3, 1)]
    p = up.convolution_param
    assert (p.num_output, list(p.kernel_size), list(p.pad), list(p.stride), p.bias_term) == (8, [2], [0], [2], False)
    assert p.weight_filler.type == 'gaussian' and p.weight_filler.std == pytest.approx(0.01)
    assert not L_['up_bn'].param and not L_['up_bn'].HasField('batch_norm_param')
    assert L_['s_up2/b'].type == 'Bias' and _mults(L_['s_up2/b']) == [(2, 0)] and L_['s_up2/b'].top == ['d_up2/x']
    assert _mults(L_['up3']) == [(1, 1), (2, 0)] and L_['up3'].convolution_param.weight_filler.type == 'xavier'
    assert L_['sum'].type == 'Eltwise' and L_['sum'].bottom == ['c2', 'up'] and not L_['sum'].HasField('eltwise_param')


def test_refinedet_head_layout():
    n = refinedet_head_variants(ml)
    L_ = _layers(n)
    assert L_['joined'].bottom == ['arm_loc', 'arm_conf', 'arm_priorbox', 'odm_loc', 'odm_conf']
    # ARM: c1 -> c1_norm -> residual block resc1_norm_inter (inter_layer_depth 1), c2 as it is,
    # c3 -> c3_norm -> resc3_norm_inter (any depth > 0 makes the same 256/256/1024 block)
    arm = ['resc1_norm_inter', 'c2', 'resc3_norm_inter']
    assert L_['arm_priorbox'].bottom == [f"{s}_mbox_priorbox" for s in arm]
    assert L_['arm_conf'].bottom == [f"{s}_mbox_conf_c_flat" for s in arm]
    assert L_['resc1_norm_inter_branch1'].bottom == ['c1_norm']
    assert L_['resc3_norm_inter_branch2c'].convolution_param.num_output == 1024
    assert not L_['bnc1_norm_inter_branch2a'].param  # the fork's bare batch norm in the block
    # priors per location: c1 2 min x (1 + max + 1 ratio), c2 1 x (1 + 1 + 2), c3 1 x (1 + 1)
    for source, priors in zip(arm, (6, 4, 2)):
        assert L_[f"{source}_mbox_conf_c"].convolution_param.num_output == priors * 2  # object or not
        assert L_[f"{source}_mbox_loc_l"].convolution_param.num_output == priors * 4 * 2  # per ARM class
    # ODM: d1 -> d1_norm -> resd1_norm_inter, d2; their loc/conf for 5 classes, no priors of its own
    odm = ['resd1_norm_inter', 'd2']
    assert L_['odm_loc'].bottom == [f"{s}_mbox_loc_l_flat" for s in odm]
    for source, priors in zip(odm, (6, 4)):
        assert L_[f"{source}_mbox_conf_c"].convolution_param.num_output == priors * 5
        assert L_[f"{source}_mbox_loc_l"].convolution_param.num_output == priors * 4 * 5
    assert not any(name.startswith(('resd1', 'd2')) and layer.type == 'PriorBox' for name, layer in L_.items())
    assert L_['d1_norm'].norm_param.scale_filler.value == 10
    conv = L_['c2_mbox_conf_c']
    assert _mults(conv) == [(2, 1)] and not conv.convolution_param.bias_term and L_['c2_mbox_conf_c_bn'].type == 'BatchNorm'
    pb = L_['resc1_norm_inter_mbox_priorbox'].prior_box_param
    assert (list(pb.min_size), list(pb.max_size), pb.flip, pb.clip, pb.offset, pb.img_h, pb.img_w) == (
        [8, 12], [16, 20], False, True, 0.25, 64, 80)
    assert L_['c2_mbox_priorbox'].prior_box_param.step == 8.5
    assert not L_['resc3_norm_inter_mbox_priorbox'].prior_box_param.HasField('step')  # step 0: none
    plain = _layers(refinedet_head_plain(ml))
    assert plain['c1_mbox_loc'].convolution_param.weight_filler.type == 'xavier'
    assert plain['c1_mbox_priorbox'].prior_box_param.img_size == 64


def test_multibox_head_prefix():
    assert _layers(multibox(ml))['joined'].bottom == ['mbox_loc', 'mbox_conf', 'mbox_priorbox', 'mbox_objectness']
    assert _layers(multibox(ml, prefix=''))['joined'].bottom == ['_loc', '_conf', '_priorbox', '_objectness']
    assert _layers(multibox(rml))['joined'].bottom == ['_loc', '_conf', '_priorbox', '_objectness']  # the fork's
    assert _layers(multibox(rml, prefix='arm'))['joined'].bottom[0] == 'arm_loc'


def test_refinedet_head_checks():
    kw = dict(num_classes=3, from_layers=['c1', 'c2'], from_layers2=['c1'], min_sizes=[8, 16])
    ml.CreateRefineDetHead(_small(ml), **kw)
    for bad in (dict(from_layers2=['c1', 'c2', 'c3']), dict(num_classes=[]), dict(min_sizes=[8]),
                dict(steps=[8]), dict(data_layer='nope'), dict(max_sizes=[[8, 9], []])):
        with pytest.raises(AssertionError):
            ml.CreateRefineDetHead(_small(ml), **dict(kw, **bad))


def test_star_imports():
    ssd, fork = _star_import("caffe.model_libs"), _star_import("caffe.refinedet_model_libs")
    for name in ('DeconvBNLayer', 'EltwiseLayer', 'CreateRefineDetHead'):
        assert getattr(ssd, name) is getattr(fork, name)
    assert ssd.ConvBNLayer is ml.ConvBNLayer and fork.ConvBNLayer is not ml.ConvBNLayer
    for name in ('check_if_exist', 'make_if_not_exist', 'UnpackVariable', 'ConvBNLayer', 'ResBody', 'InceptionTower',
                 'CreateAnnotatedDataLayer', 'ZFNetBody', 'VGGNetBody', 'ResNet101Body', 'ResNet152Body',
                 'InceptionV3Body', 'CreateMultiBoxHead', 'L', 'P', 'caffe_pb2', 'caffe', 'os', 'xrange'):
        assert hasattr(fork, name), name
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[1, 3, 64, 64]))
    assert rml.ResNet101Body(n, 'data') is n  # the caller's net, not the view the builder wrote through


# ---------------------------------------------------------------- the nets build and run

def test_vgg16_deploy_runs_forward(tmp_path):
    files = refinedet_320_script(_star_import("caffe.model_libs"), str(tmp_path), 'VGG16', VOC)
    caffe.set_random_seed(0)
    net = caffe.Net(files['deploy'], caffe.TEST)
    priors = (40 * 40 + 20 * 20 + 10 * 10 + 5 * 5) * 3  # 6375 at strides 8..64, 3 priors per location
    assert net.blobs['arm_priorbox'].data.shape == (1, 2, priors * 4)
    assert net.blobs['arm_conf_flatten'].data.shape == (1, priors * 2)
    assert net.blobs['odm_conf_flatten'].data.shape == (1, priors * 21) == (1, 133875)
    assert net.blobs['odm_loc'].data.shape == net.blobs['arm_loc'].data.shape == (1, priors * 4)
    assert net.blobs['data'].data.shape == (1, 3, 320, 320)
    net.blobs['data'].data[...] = np.random.RandomState(0).uniform(-50, 50, (1, 3, 320, 320))
    det = net.forward()['detection_out']
    assert det.shape[:2] == (1, 1) and det.shape[3] == 7 and 1 <= det.shape[2] <= 500
    rows = det[0, 0]
    assert np.isfinite(rows).all() and (rows[:, 0] == 0).all()
    assert ((rows[:, 1] >= 1) & (rows[:, 1] <= 20)).all() and (rows[:, 2] >= 0.01).all()


def test_resnet101_deploy_builds(tmp_path):
    files = refinedet_320_script(_star_import("caffe.refinedet_model_libs"), str(tmp_path), 'ResNet101', COCO)
    net = caffe.Net(files['deploy'], caffe.TEST)
    priors = (40 * 40 + 20 * 20 + 10 * 10 + 5 * 5) * 3
    assert net.blobs['arm_priorbox'].data.shape == (1, 2, priors * 4)
    assert net.blobs['odm_conf_flatten'].data.shape == (1, priors * 81)
    assert net.blobs['P3'].data.shape == (1, 256, 40, 40) and net.blobs['res6'].data.shape == (1, 512, 5, 5)
