"""caffe.model_libs (SSD's pycaffe net builders): the NetParameters SSD's own model_libs.py writes
(goldens in model_libs_goldens/, see its README.md), structural facts of every body and of the
detection head (each checked against the original), and the ssd_pascal deploy net running forward."""
from __future__ import annotations

import difflib
import pathlib

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe import model_libs
from caffe.proto import caffe_pb2

GOLDENS = pathlib.Path(__file__).parent / "model_libs_goldens"
ml = model_libs  # the module under test (the facts below were checked against SSD's own module too)


# ---------------------------------------------------------------- compositions (shared with the goldens)
# Each builder takes a model_libs module and uses only what SSD's module exports (its functions and
# the star-exported L, P, caffe_pb2), so the goldens' README can run the same code on the original.

def _input(m, shape=(1, 3, 300, 300)):
    n = caffe.NetSpec()
    n.data = m.L.Input(shape=dict(dim=list(shape)))
    return n


SSD_SOURCES = ['conv4_3', 'fc7', 'conv6_2', 'conv7_2', 'conv8_2', 'conv9_2']
SSD_EXTRA = [('conv6_1', 256, 1, 0, 1), ('conv6_2', 512, 3, 1, 2), ('conv7_1', 128, 1, 0, 1),
             ('conv7_2', 256, 3, 1, 2), ('conv8_1', 128, 1, 0, 1), ('conv8_2', 256, 3, 0, 1),
             ('conv9_1', 128, 1, 0, 1), ('conv9_2', 256, 3, 0, 1)]


def ssd_pascal(m, phase):
    """examples/ssd/ssd_pascal.py's nets (its values: 300x300, 21 classes, sizes from min_ratio 20 to
    max_ratio 90) for phase 'train' (AnnotatedData + MultiBoxLoss) or 'deploy' (Input + DetectionOutput,
    without the script's save_output_param)."""
    P = m.P
    n = caffe.NetSpec()
    if phase == 'train':
        transform = dict(mirror=True, mean_value=[104, 117, 123],
                         resize_param=dict(prob=1, resize_mode=P.Resize.WARP, height=300, width=300,
                                           interp_mode=[P.Resize.LINEAR, P.Resize.AREA, P.Resize.NEAREST,
                                                        P.Resize.CUBIC, P.Resize.LANCZOS4]),
                         distort_param=dict(brightness_prob=0.5, brightness_delta=32, contrast_prob=0.5,
                                            contrast_lower=0.5, contrast_upper=1.5, hue_prob=0.5, hue_delta=18,
                                            saturation_prob=0.5, saturation_lower=0.5, saturation_upper=1.5,
                                            random_order_prob=0.0),
                         expand_param=dict(prob=0.5, max_expand_ratio=4.0),
                         emit_constraint=dict(emit_type=m.caffe_pb2.EmitConstraint.CENTER))
        samplers = [dict(sampler={}, max_trials=1, max_sample=1)] + [
            dict(sampler=dict(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0),
                 sample_constraint=dict(min_jaccard_overlap=j), max_trials=50, max_sample=1)
            for j in (0.1, 0.3, 0.5, 0.7, 0.9)]
        n.data, n.label = m.CreateAnnotatedDataLayer(
            'examples/VOC0712/VOC0712_trainval_lmdb', batch_size=8, train=True, output_label=True,
            label_map_file='data/VOC0712/labelmap_voc.prototxt', transform_param=transform, batch_sampler=samplers)
    else:
        n.data = m.L.Input(shape=dict(dim=[1, 3, 300, 300]))
    m.VGGNetBody(n, from_layer='data', fully_conv=True, reduced=True, dilated=True, dropout=False)
    last = n.keys()[-1]
    for name, num_output, kernel, pad, stride in SSD_EXTRA:
        m.ConvBNLayer(n, last, name, False, True, num_output, kernel, pad, stride, lr_mult=1)
        last = name
    mbox = m.CreateMultiBoxHead(
        n, data_layer='data', from_layers=SSD_SOURCES, use_batchnorm=False,
        min_sizes=[30.0, 60.0, 111.0, 162.0, 213.0, 264.0], max_sizes=[60.0, 111.0, 162.0, 213.0, 264.0, 315.0],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]], steps=[8, 16, 32, 64, 100, 300],
        normalizations=[20, -1, -1, -1, -1, -1], num_classes=21, share_location=True, flip=True, clip=False,
        prior_variance=[0.1, 0.1, 0.2, 0.2], kernel_size=3, pad=1, lr_mult=1)
    if phase == 'train':
        n.mbox_loss = m.L.MultiBoxLoss(
            *(mbox + [n.label]), propagate_down=[True, True, False, False],
            include=dict(phase=m.caffe_pb2.Phase.Value('TRAIN')), loss_param=dict(normalization=P.Loss.VALID),
            multibox_loss_param=dict(loc_loss_type=P.MultiBoxLoss.SMOOTH_L1, conf_loss_type=P.MultiBoxLoss.SOFTMAX,
                                     loc_weight=1.0, num_classes=21, share_location=True,
                                     match_type=P.MultiBoxLoss.PER_PREDICTION, overlap_threshold=0.5,
                                     use_prior_for_matching=True, background_label_id=0, use_difficult_gt=True,
                                     mining_type=P.MultiBoxLoss.MAX_NEGATIVE, neg_pos_ratio=3.0, neg_overlap=0.5,
                                     code_type=P.PriorBox.CENTER_SIZE, ignore_cross_boundary_bbox=False))
    else:
        n.mbox_conf_reshape = m.L.Reshape(n.mbox_conf, shape=dict(dim=[0, -1, 21]))
        n.mbox_conf_softmax = m.L.Softmax(n.mbox_conf_reshape, axis=2)
        n.mbox_conf_flatten = m.L.Flatten(n.mbox_conf_softmax, axis=1)
        n.detection_out = m.L.DetectionOutput(
            mbox[0], n.mbox_conf_flatten, mbox[2],
            detection_output_param=dict(num_classes=21, share_location=True, background_label_id=0,
                                        nms_param=dict(nms_threshold=0.45, top_k=400), keep_top_k=200,
                                        confidence_threshold=0.01, code_type=P.PriorBox.CENTER_SIZE),
            include=dict(phase=m.caffe_pb2.Phase.Value('TEST')))
    return n


def small_base(m):
    n = _input(m)
    n.c1 = m.L.Convolution(n.data, num_output=8, kernel_size=3, stride=8)
    n.c2 = m.L.Convolution(n.c1, num_output=8, kernel_size=3, stride=2)
    n.c3 = m.L.Convolution(n.c2, num_output=8, kernel_size=3, stride=2)
    return n


def head_variants(m):
    """CreateMultiBoxHead's options on a small base: batch norm with global stats, per-class boxes,
    no flip, clipping, inter layers, a 3x3 head, postfixes, objectness, two min sizes, img_h/img_w."""
    n = small_base(m)
    mbox = m.CreateMultiBoxHead(
        n, data_layer='data', num_classes=4, from_layers=['c1', 'c2', 'c3'], use_objectness=True,
        normalizations=[10, -1, 5], use_batchnorm=True, lr_mult=2, use_scale=False,
        min_sizes=[[20, 30], 60, 120], max_sizes=[[40, 50], [90], []], prior_variance=[0.1, 0.1, 0.2, 0.2],
        aspect_ratios=[[2], [2, 3], 3], steps=[8, 16.5, 0], img_height=300, img_width=400, share_location=False,
        flip=False, clip=True, offset=0.25, inter_layer_depth=[16, 0, 8], kernel_size=3, pad=1,
        conf_postfix='_cls', loc_postfix='_box', eps=1e-5, use_global_stats=True)
    n.joined = m.L.Concat(*mbox[:2], axis=1)
    return n


def vgg_classic(m):
    n = _input(m, (1, 3, 224, 224))
    return m.VGGNetBody(n, 'data', need_fc=True, fully_conv=False, dropout=True, dilate_pool4=True,
                        freeze_layers=['conv1_1', 'conv1_2', 'fc6', 'not_a_layer'])


def zf_fc8(m):
    n = _input(m, (1, 3, 224, 224))
    return m.ZFNetBody(n, 'data', need_fc=True, fully_conv=True, reduced=True, dilated=True, dropout=True,
                       need_fc8=True, freeze_layers=['conv1', 'conv2', 'fc8'])


def resnet101_dilated(m):
    return m.ResNet101Body(_input(m), 'data', use_pool5=False, use_dilation_conv5=True,
                           use_global_stats=True, eps=1e-5)


def inception_v3(m):
    return m.InceptionV3Body(_input(m, (1, 3, 299, 299)), 'data', output_pred=True)


def annotated_test(m):
    n = caffe.NetSpec()
    n.data = m.CreateAnnotatedDataLayer(
        'examples/coco/coco_minival_lmdb', batch_size=4, backend=m.P.Data.LEVELDB, output_label=False,
        train=False, anno_type=m.caffe_pb2.AnnotatedDatum.BBOX,
        transform_param=dict(mean_value=[104, 117, 123],
                             resize_param=dict(prob=1, resize_mode=m.P.Resize.WARP, height=512, width=512,
                                               interp_mode=[m.P.Resize.LINEAR])))
    return n


GOLDEN_BUILDERS = {
    'ssd_pascal_train': lambda m: ssd_pascal(m, 'train'),
    'ssd_pascal_deploy': lambda m: ssd_pascal(m, 'deploy'),
    'multibox_head_variants': head_variants,
    'vgg16_classic_frozen': vgg_classic,
    'zf_fc8_frozen': zf_fc8,
    'resnet101_dilated_conv5': resnet101_dilated,
    'inception_v3_pred': inception_v3,
    'annotated_data_test': annotated_test,
}


# ---------------------------------------------------------------- goldens

@pytest.mark.parametrize("name", sorted(GOLDEN_BUILDERS))
def test_matches_ssd_model_libs_golden(name):
    golden = text_format.Parse((GOLDENS / f"{name}.prototxt").read_text(), caffe_pb2.NetParameter())
    ours = GOLDEN_BUILDERS[name](ml).to_proto()
    if ours != golden:
        diff = difflib.unified_diff(str(golden).splitlines(), str(ours).splitlines(), 'SSD', 'ours', lineterm='')
        pytest.fail(f"{name} differs from SSD's model_libs:\n" + "\n".join(list(diff)[:80]))
    assert str(ours) == str(golden)


# ---------------------------------------------------------------- helpers

def _layers(n):
    return {layer.name: layer for layer in n.to_proto().layer}


def _names(n):
    return [layer.name for layer in n.to_proto().layer]


def _types(n):
    return [layer.type for layer in n.to_proto().layer]


def _mults(layer):
    return [(p.lr_mult, p.decay_mult) for p in layer.param]


# ---------------------------------------------------------------- VGG16 and ZF

def test_vgg_ssd_body():
    n = ml.VGGNetBody(_input(ml), 'data', fully_conv=True, reduced=True, dilated=True, dropout=False)
    names = _names(n)
    assert names[:6] == ['data', 'conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1']
    assert names[-8:] == ['relu5_2', 'conv5_3', 'relu5_3', 'pool5', 'fc6', 'relu6', 'fc7', 'relu7']
    assert len(names) == 36 and _types(n).count('Convolution') == 15 and _types(n).count('Pooling') == 5
    L_ = _layers(n)
    assert _mults(L_['conv1_1']) == [(1, 1), (2, 0)]
    assert L_['conv1_1'].convolution_param.weight_filler.type == 'xavier'
    assert L_['conv1_1'].convolution_param.bias_filler.HasField('value')
    assert list(L_['conv4_3'].convolution_param.dilation) == []
    c5 = L_['conv5_1'].convolution_param
    assert (list(c5.dilation), list(c5.pad), list(c5.kernel_size)) == ([1], [1], [3])
    p5 = L_['pool5'].pooling_param
    assert (p5.kernel_size, p5.stride, p5.pad) == (3, 1, 1)
    fc6 = L_['fc6'].convolution_param
    assert (fc6.num_output, list(fc6.kernel_size), list(fc6.pad), list(fc6.dilation)) == (1024, [3], [6], [6])
    fc7 = L_['fc7'].convolution_param
    assert (fc7.num_output, list(fc7.kernel_size), list(fc7.pad)) == (1024, [1], [])
    assert L_['relu7'].bottom == L_['relu7'].top == ['fc7']


@pytest.mark.parametrize("dilated, reduced, dilate_pool4, fc6", [
    (True, True, True, (1024, 3, 12, [12])),   # conv5 dilation 2 times 6
    (True, False, False, (4096, 7, 6, [2])),
    (False, True, False, (1024, 3, 3, [3])),
    (False, False, False, (4096, 7, 3, [1])),
    (False, False, True, (4096, 7, 6, [2])),
])
def test_vgg_fc6_geometry(dilated, reduced, dilate_pool4, fc6):
    n = ml.VGGNetBody(_input(ml), 'data', fully_conv=True, reduced=reduced, dilated=dilated,
                      dilate_pool4=dilate_pool4)
    L_ = _layers(n)
    p = L_['fc6'].convolution_param
    assert (p.num_output, p.kernel_size[0], p.pad[0], list(p.dilation)) == fc6
    assert L_['drop6'].dropout_param.dropout_ratio == pytest.approx(0.5)
    if dilate_pool4:
        assert (L_['pool4'].pooling_param.kernel_size, L_['pool4'].pooling_param.stride) == (3, 1)
        assert list(L_['conv5_2'].convolution_param.dilation) == [2] and L_['conv5_2'].convolution_param.pad[0] == 2


def test_vgg_inner_product_and_freeze():
    L_ = _layers(vgg_classic(ml))
    assert L_['fc6'].type == 'InnerProduct' and L_['fc6'].bottom == ['pool5']
    assert (L_['pool5'].pooling_param.kernel_size, L_['pool5'].pooling_param.stride) == (2, 2)
    assert _mults(L_['fc6']) == [(0, 0), (0, 0)] and _mults(L_['conv1_2']) == [(0, 0), (0, 0)]
    assert L_['fc6'].inner_product_param.weight_filler.type == 'xavier'  # freezing restates the fillers
    assert _mults(L_['fc7']) == [] and not L_['fc7'].inner_product_param.HasField('weight_filler')
    assert _mults(L_['conv2_1']) == [(1, 1), (2, 0)]
    assert L_['drop7'].top == ['fc7']


def test_vgg_nopool_builds():
    # The original raises UnboundLocalError here (see model_libs' docstring); ours builds conv5 undilated.
    L_ = _layers(ml.VGGNetBody(_input(ml), 'data', nopool=True))
    assert 'pool1' not in L_ and L_['conv1_3'].convolution_param.stride == [2]
    assert 'relu1_3' not in L_ and L_['fc6'].bottom == ['conv5_4'] and L_['conv5_4'].convolution_param.stride == [2]
    assert list(L_['conv5_1'].convolution_param.dilation) == [1]


@pytest.mark.parametrize("dilated, reduced, fc6", [
    (True, True, (1024, 3, 5, [5])), (True, False, (4096, 6, 5, [2])),
    (False, True, (1024, 3, 2, [2])), (False, False, (4096, 6, 2, [])),
])
def test_zf_fc6_geometry(dilated, reduced, fc6):
    L_ = _layers(ml.ZFNetBody(_input(ml), 'data', fully_conv=True, reduced=reduced, dilated=dilated))
    p = L_['fc6'].convolution_param
    assert (p.num_output, p.kernel_size[0], p.pad[0], list(p.dilation)) == fc6
    assert L_['pool5'].pooling_param.stride == (1 if dilated else 2)
    assert L_['fc7'].convolution_param.num_output == (1024 if reduced else 4096)


def test_zf_body():
    n = zf_fc8(ml)
    assert _names(n) == ['data', 'conv1', 'relu1', 'norm1', 'pool1', 'conv2', 'relu2', 'norm2', 'pool2', 'conv3',
                         'relu3', 'conv4', 'relu4', 'conv5', 'relu5', 'pool5', 'fc6', 'relu6', 'drop6', 'fc7', 'relu7',
                         'drop7', 'fc8', 'prob']
    L_ = _layers(n)
    lrn = L_['norm1'].lrn_param
    assert (lrn.local_size, lrn.beta, lrn.norm_region, lrn.engine) == (3, 0.75, caffe.params.LRN.WITHIN_CHANNEL,
                                                                       caffe.params.LRN.CAFFE)
    assert lrn.alpha == pytest.approx(5e-5) and L_['norm1'].bottom == ['conv1']
    assert L_['conv1'].convolution_param.stride == [2] and L_['conv3'].convolution_param.stride == []
    assert L_['fc8'].bottom == ['fc7'] and L_['fc8'].type == 'Convolution' and _mults(L_['fc8']) == [(0, 0), (0, 0)]
    assert L_['prob'].type == 'Softmax'
    assert _layers(ml.ZFNetBody(_input(ml), 'data', need_fc8=True))['fc8'].type == 'InnerProduct'


# ---------------------------------------------------------------- ResNet and Inception

@pytest.mark.parametrize("body, depth, last3, last4", [
    ('ResNet101Body', 101, 'res3b3', 'res4b22'), ('ResNet152Body', 152, 'res3b7', 'res4b35')])
def test_resnet_bodies(body, depth, last3, last4):
    n = getattr(ml, body)(_input(ml), 'data')
    types = _types(n)
    blocks = {101: 33, 152: 50}[depth]
    assert types.count('Convolution') == 1 + 3 * blocks + 4 == types.count('BatchNorm') == types.count('Scale')
    assert types.count('Eltwise') == blocks and types.count('ReLU') == 1 + 3 * blocks
    L_ = _layers(n)
    assert L_['res4a'].bottom == ['res4a_branch1', 'res4a_branch2c']
    assert L_['res4a_branch2a'].bottom == [last3] and L_['res5a_branch1'].bottom == [last4]
    assert _names(n)[:6] == ['data', 'conv1', 'bn_conv1', 'scale_conv1', 'conv1_relu', 'pool1']
    assert L_['pool1'].pooling_param.kernel_size == 3 and L_['pool1'].pooling_param.stride == 2
    assert L_['res2b'].bottom == ['res2a', 'res2b_branch2c']
    assert L_['res5a_branch2a'].convolution_param.stride == [2]
    assert L_['pool5'].pooling_param.global_pooling and _names(n)[-1] == 'pool5'
    assert L_['res5c_branch2b'].convolution_param.dilation == []
    bn = L_['bn2a_branch1'].batch_norm_param
    assert bn.moving_average_fraction == pytest.approx(0.999) and bn.eps == pytest.approx(0.001)
    assert bn.HasField('eps') and not bn.HasField('use_global_stats')
    assert _mults(L_['scale2a_branch1']) == [(1, 0), (1, 0)] and _mults(L_['bn2a_branch1']) == [(0, 0)] * 3


def test_resnet_dilated_conv5_and_global_stats():
    n = resnet101_dilated(ml)
    L_ = _layers(n)
    assert 'pool5' not in L_ and _names(n)[-1] == 'res5c_relu'
    assert L_['res5a_branch1'].convolution_param.stride == [1] == L_['res5a_branch2a'].convolution_param.stride
    b2 = L_['res5b_branch2b'].convolution_param
    assert (list(b2.dilation), list(b2.pad)) == ([2], [2])
    bn = L_['bn5a_branch2b'].batch_norm_param
    assert bn.use_global_stats and not bn.HasField('moving_average_fraction') and bn.eps == pytest.approx(1e-5)
    assert _mults(L_['scale5a_branch2b']) == [(0, 0), (0, 0)]
    assert L_['res4b5_branch2b'].convolution_param.dilation == []


def test_inception_v3_body():
    n = inception_v3(ml)
    types = _types(n)
    assert types.count('Convolution') == 94 == types.count('BatchNorm') == types.count('Bias')
    assert 'Scale' not in types and types.count('Concat') == 15 and types.count('Pooling') == 14
    names = _names(n)
    assert names[:6] == ['data', 'conv', 'conv_bn', 'conv_bias', 'conv_relu', 'conv_1']
    assert names[-5:] == ['mixed_10/tower_2/conv_relu', 'mixed_10/join', 'pool_3', 'softmax', 'softmax_prob']
    L_ = _layers(n)
    assert L_['mixed/join'].bottom == ['mixed/conv', 'mixed/tower/conv_1', 'mixed/tower_1/conv_2', 'mixed/tower_2/conv']
    assert L_['mixed_3/join'].bottom == ['mixed_3/conv', 'mixed_3/tower/conv_2', 'mixed_3/pool']
    assert L_['mixed_9/tower/mixed'].bottom == ['mixed_9/tower/mixed/conv', 'mixed_9/tower/mixed/conv_1']
    assert L_['mixed_9/tower/mixed/conv'].bottom == ['mixed_9/tower/conv']
    assert L_['mixed_9/tower_2/pool'].pooling_param.pool == caffe.params.Pooling.AVE
    assert L_['mixed_10/tower_2/pool'].pooling_param.pool == caffe.params.Pooling.MAX
    r = L_['mixed_4/tower/conv_1'].convolution_param
    assert (r.kernel_h, r.kernel_w, r.pad_h, r.pad_w, r.stride_h, r.stride_w, list(r.kernel_size)) == (1, 7, 0, 3, 1, 1, [])
    assert L_['mixed_2/tower_2/conv'].convolution_param.num_output == 64
    assert L_['mixed/tower_2/conv'].convolution_param.num_output == 32
    assert L_['softmax'].type == 'InnerProduct' and L_['softmax'].inner_product_param.num_output == 1008
    assert L_['conv_bias'].bias_param.filler.type == 'constant' and _mults(L_['conv_bias']) == [(1, 0)]
    assert 'pool_3' not in _layers(ml.InceptionV3Body(_input(ml), 'data'))


# ---------------------------------------------------------------- blocks

def test_conv_bn_layer():
    n = _input(ml)
    ml.ConvBNLayer(n, 'data', 'plain', False, True, 8, 3, 1, 2, lr_mult=0.5)
    ml.ConvBNLayer(n, 'plain', 'x', True, False, 8, [1, 5], [0, 2], 1, dilation=3, conv_prefix='p_',
                   bn_postfix='/bn', scale_prefix='s_', eps=0.01)
    ml.ConvBNLayer(n, 'p_x', 'y', True, True, 8, [3], [1], [1], use_scale=False, bias_postfix='/b')
    assert _names(n) == ['data', 'plain', 'plain_relu', 'p_x', 'x/bn', 's_x_scale', 'y', 'y_bn', 'y/b', 'y_relu']
    L_ = _layers(n)
    assert _mults(L_['plain']) == [(0.5, 1), (1.0, 0)] and L_['plain'].convolution_param.stride == [2]
    x = L_['p_x'].convolution_param
    assert (x.kernel_h, x.kernel_w, x.pad_h, x.pad_w, x.stride_h, list(x.dilation)) == (1, 5, 0, 2, 1, [3])
    assert not x.bias_term and x.weight_filler.type == 'gaussian' and x.weight_filler.std == pytest.approx(0.01)
    assert L_['x/bn'].top == ['p_x'] and L_['x/bn'].batch_norm_param.eps == pytest.approx(0.01)
    assert L_['s_x_scale'].scale_param.bias_term and L_['s_x_scale'].scale_param.filler.value == 1.0
    assert L_['y/b'].type == 'Bias' and L_['y_relu'].bottom == ['y'] and list(L_['y'].convolution_param.dilation) == []
    with pytest.raises(AssertionError):
        ml.ConvBNLayer(n, 'y', 'z', False, False, 8, [1, 2, 3], 0, 1)


def test_res_body_and_tower():
    n = _input(ml)
    ml.ResBody(n, 'data', '9z', 4, 4, 16, 2, True, dilation=3)
    ml.ResBody(n, 'res9z', '9y', 4, 4, 16, 1, False)
    L_ = _layers(n)
    assert [k for k in L_ if k.startswith('res9z')] == ['res9z_branch1', 'res9z_branch2a', 'res9z_branch2a_relu',
                                                          'res9z_branch2b', 'res9z_branch2b_relu', 'res9z_branch2c',
                                                          'res9z', 'res9z_relu']
    assert L_['res9z_branch2b'].convolution_param.pad == [3] and L_['res9z_branch2b'].convolution_param.dilation == [3]
    assert L_['res9y'].bottom == ['res9z', 'res9y_branch2c'] and 'res9y_branch1' not in L_
    steps = [dict(name='conv', kernel_size=2, stride=2)]
    top = ml.InceptionTower(n, 'res9y', 'pooled/t', steps)  # 'pool' in the tower's name: a Pooling layer
    steps = [dict(name='conv', num_output=4, kernel_size=3, pad=1, stride=1),
             dict(name='c2', num_output=4, kernel_size=1, pad=0, stride=1)]
    top = ml.InceptionTower(n, 'res9y', 'tower', steps, eps=0.5)
    assert steps[1] == dict(name='c2', num_output=4, kernel_size=1, pad=0, stride=1)  # caller's dicts unchanged
    n.out = caffe.layers.ReLU(top)
    L_ = _layers(n)
    assert L_['pooled/t/conv'].type == 'Pooling' and L_['tower/conv_relu'].type == 'ReLU'
    assert _names(n)[-5:] == ['tower/c2', 'tower/c2_bn', 'tower/c2_bias', 'tower/c2_relu', 'out']
    assert L_['tower/c2_bn'].batch_norm_param.eps == 0.5 and L_['tower/c2'].bottom == ['tower/conv']


# ---------------------------------------------------------------- data layer and head

def test_annotated_data_layer():
    n = caffe.NetSpec()
    n.data, n.label = ml.CreateAnnotatedDataLayer('db')
    (layer,) = n.to_proto().layer
    assert (layer.name, layer.type, list(layer.top)) == ('data', 'AnnotatedData', ['data', 'label'])
    assert layer.include[0].phase == caffe.TRAIN and layer.include[0].HasField('phase')
    assert layer.annotated_data_param.HasField('label_map_file') and layer.annotated_data_param.label_map_file == ''
    assert len(layer.annotated_data_param.batch_sampler) == 1
    assert layer.annotated_data_param.batch_sampler[0].ByteSize() == 0
    assert not layer.annotated_data_param.HasField('anno_type') and not layer.HasField('transform_param')
    assert (layer.data_param.batch_size, layer.data_param.backend, layer.data_param.source) == (32, 1, 'db')
    (layer,) = annotated_test(ml).to_proto().layer
    assert list(layer.top) == ['data'] and layer.include[0].phase == caffe.TEST
    assert layer.annotated_data_param.HasField('anno_type') and layer.data_param.backend == 0


def test_multibox_head_ssd_pascal():
    n = ssd_pascal(ml, 'deploy')
    L_ = _layers(n)
    # (source, loc outputs, conf outputs): priors = (1 + max + ratios * 2 (flip)) per min size
    for source, priors in [('conv4_3_norm', 4), ('fc7', 6), ('conv6_2', 6), ('conv7_2', 6), ('conv8_2', 4),
                           ('conv9_2', 4)]:
        assert L_[f'{source}_mbox_loc'].convolution_param.num_output == 4 * priors
        assert L_[f'{source}_mbox_conf'].convolution_param.num_output == 21 * priors
        assert L_[f'{source}_mbox_loc'].convolution_param.kernel_size == [3]
        assert L_[f'{source}_mbox_loc_perm'].permute_param.order == [0, 2, 3, 1]
        assert L_[f'{source}_mbox_conf_flat'].flatten_param.axis == 1
        assert L_[f'{source}_mbox_priorbox'].bottom == [source, 'data']
    pb = L_['conv4_3_norm_mbox_priorbox'].prior_box_param
    assert (list(pb.min_size), list(pb.max_size), list(pb.aspect_ratio), pb.flip, pb.clip, pb.step) == (
        [30], [60], [2], True, False, 8)
    assert list(pb.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2]) and pb.offset == 0.5
    assert not pb.HasField('img_size')
    norm = L_['conv4_3_norm'].norm_param
    assert norm.scale_filler.value == 20 and not norm.across_spatial and not norm.channel_shared
    assert L_['mbox_priorbox'].concat_param.axis == 2 and L_['mbox_loc'].concat_param.axis == 1
    assert L_['mbox_loc'].bottom == [f'{s}_mbox_loc_flat' for s in ['conv4_3_norm'] + SSD_SOURCES[1:]]
    assert L_['conv6_2'].bottom == ['conv6_1'] and L_['conv6_2'].convolution_param.stride == [2]


def test_multibox_head_options():
    n = head_variants(ml)
    L_ = _layers(n)
    names = _names(n)
    i = names.index('c1_norm')
    assert names[i:i + 6] == ['c1_norm', 'c1_norm_inter', 'c1_norm_inter_bn', 'c1_norm_inter_scale',
                              'c1_norm_inter_relu', 'c1_norm_inter_mbox_loc_box']
    # c1: 2 min sizes x (1 + max + 1 ratio, no flip) = 6 priors; c2: 1 x (1 + 1 + 2) = 4; c3: no max, 1 + 1 = 2
    for source, priors in [('c1_norm_inter', 6), ('c2', 4), ('c3_norm_inter', 2)]:
        assert L_[f'{source}_mbox_loc_box'].convolution_param.num_output == priors * 4 * 4  # per class
        assert L_[f'{source}_mbox_conf_cls'].convolution_param.num_output == priors * 4
        assert L_[f'{source}_mbox_objectness'].convolution_param.num_output == priors * 2
    loc = L_['c2_mbox_loc_box']
    assert not loc.convolution_param.bias_term and _mults(loc) == [(2, 1)]
    assert L_['c2_mbox_loc_box_scale'].type == 'Scale'  # use_scale=False is not passed on, as in SSD
    assert L_['c2_mbox_loc_box_bn'].batch_norm_param.use_global_stats
    pb1, pb2, pb3 = (L_[f'{s}_mbox_priorbox'].prior_box_param for s in ['c1_norm_inter', 'c2', 'c3_norm_inter'])
    assert (list(pb1.min_size), list(pb1.max_size), pb1.HasField('flip')) == ([20, 30], [40, 50], True)
    assert (pb1.img_h, pb1.img_w, pb1.HasField('img_size'), pb1.clip, pb1.offset) == (300, 400, False, True, 0.25)
    assert pb2.step == 16.5 and not pb3.HasField('step') and list(pb3.max_size) == []
    assert [t for t in L_['mbox_objectness'].bottom] == [f'{s}_mbox_objectness_flat'
                                                         for s in ['c1_norm_inter', 'c2', 'c3_norm_inter']]
    mbox = ml.CreateMultiBoxHead(small_base(ml), num_classes=2, from_layers=['c1'], min_sizes=[10])
    assert len(mbox) == 3


@pytest.mark.parametrize("bad", [dict(min_sizes=[10]), dict(normalizations=[20]), dict(steps=[8]),
                                 dict(max_sizes=[[20, 30], 40]), dict(num_classes=[]), dict(data_layer='nope')])
def test_multibox_head_checks(bad):
    kw = dict(num_classes=3, from_layers=['c1', 'c2'], min_sizes=[10, 20])
    kw.update(bad)
    with pytest.raises(AssertionError):
        ml.CreateMultiBoxHead(small_base(ml), **kw)


def test_star_import_gives_what_ssd_scripts_use():
    namespace: dict = {}
    exec("from caffe.model_libs import *", namespace)
    for name in ['check_if_exist', 'make_if_not_exist', 'UnpackVariable', 'ConvBNLayer', 'ResBody', 'InceptionTower',
                 'CreateAnnotatedDataLayer', 'ZFNetBody', 'VGGNetBody', 'ResNet101Body', 'ResNet152Body',
                 'InceptionV3Body', 'CreateMultiBoxHead', 'L', 'P', 'caffe_pb2', 'caffe', 'os']:
        assert name in namespace, name
    assert list(namespace['xrange'](20, 91, 17)) == [20, 37, 54, 71, 88]
    assert namespace['P'].Resize.WARP == caffe_pb2.ResizeParameter.WARP
    assert ml.UnpackVariable(3, 2) == [3, 3] and ml.UnpackVariable([4], 2) == [4, 4]
    assert ml.UnpackVariable((1, 2), 2) == [(1, 2), (1, 2)]  # only a list unpacks, as in SSD


# ---------------------------------------------------------------- the deploy net runs

def test_ssd_pascal_deploy_forward(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(str(ssd_pascal(ml, 'deploy').to_proto()))
    caffe.set_random_seed(0)
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs['mbox_priorbox'].data.shape == (1, 2, 8732 * 4)  # SSD300's 8732 default boxes
    net.blobs['data'].data[...] = np.random.RandomState(0).uniform(-50, 50, (1, 3, 300, 300))
    det = net.forward()['detection_out']
    assert det.shape[:2] == (1, 1) and det.shape[3] == 7 and det.shape[2] >= 1
    rows = det[0, 0]
    assert np.isfinite(rows).all() and (rows[:, 0] == 0).all()
    assert ((rows[:, 1] >= 1) & (rows[:, 1] <= 20)).all() and (rows[:, 2] >= 0.01).all()
