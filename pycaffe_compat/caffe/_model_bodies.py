"""The building blocks and base networks of ``caffe.model_libs`` (SSD's pycaffe helpers): ConvBNLayer,
ResBody, InceptionTower and the ZF, VGG16 and ResNet-101/152 bodies, each laid out from a table (the
Inception-v3 body is in ``caffe._inception_body``). ``caffe.model_libs`` re-exports them and documents
the Python 2 points."""
from caffe import layers as L
from caffe import params as P

__all__ = [
    "ModelLibsError", "UnpackVariable", "ConvBNLayer", "ResBody", "InceptionTower", "ZFNetBody",
    "VGGNetBody", "ResNet101Body", "ResNet152Body",
]


class ModelLibsError(ValueError, AssertionError):
    """A model_libs argument that cannot make a net (the original asserted these)."""


def _require(condition, message):
    if not condition:
        raise ModelLibsError(message)


def UnpackVariable(var, num):
    """``num`` values from ``var``: a list of length ``num`` as it is, a one-element list or a
    single value repeated. Only a ``list`` counts as a list (a tuple is a single value), as in SSD."""
    if type(var) is list:
        if len(var) == num:
            return var
        _require(len(var) == 1, f"UnpackVariable: expected a list of 1 or {num} values. Received: {var!r}")
        return [var[0]] * num
    return [var] * num


def _mults(*pairs):
    """ParamSpec dicts, one per (lr_mult, decay_mult) pair."""
    return [dict(lr_mult=lr, decay_mult=decay) for lr, decay in pairs]


def _conv_geometry(kernel_size, pad, stride):
    """Convolution keywords for a square (``kernel_size``/``pad``/``stride``, each from the first of
    its pair) or a rectangular (``*_h``/``*_w``) kernel, chosen by the kernel alone as SSD does."""
    (kh, kw), (ph, pw), (sh, sw) = (UnpackVariable(v, 2) for v in (kernel_size, pad, stride))
    if kh == kw:
        return dict(kernel_size=kh, pad=ph, stride=sh)
    return dict(kernel_h=kh, kernel_w=kw, pad_h=ph, pad_w=pw, stride_h=sh, stride_w=sw)


def _is_dilated(dilation):
    # Python 2 ordered every list after every number, so a list was always "> 1".
    return isinstance(dilation, list) or dilation > 1


def ConvBNLayer(net, from_layer, out_layer, use_bn, use_relu, num_output,
                kernel_size, pad, stride, dilation=1, use_scale=True, lr_mult=1,
                conv_prefix='', conv_postfix='', bn_prefix='', bn_postfix='_bn',
                scale_prefix='', scale_postfix='_scale', bias_prefix='', bias_postfix='_bias',
                **bn_params):
    """Convolution ``<conv_prefix><out_layer><conv_postfix>`` on ``net[from_layer]``, optionally
    followed in place by BatchNorm and Scale (or Bias, when ``use_scale`` is false) and ReLU
    (``<conv name>_relu``).

    Without BN the convolution has xavier weights and a zero bias (lr ``lr_mult``/``2*lr_mult``);
    with BN it has gaussian(0.01) weights and no bias. ``bn_params`` may hold ``eps`` (0.001),
    ``moving_average_fraction`` (0.999) and ``use_global_stats``; when the latter is true the BN
    states it (instead of the moving average fraction) and the Scale/Bias are frozen. Other
    keys in ``bn_params`` are ignored, as in SSD.
    """
    conv_name = f"{conv_prefix}{out_layer}{conv_postfix}"
    if use_bn:
        conv_learning = dict(param=_mults((lr_mult, 1)), weight_filler=dict(type='gaussian', std=0.01),
                             bias_term=False)
    else:
        conv_learning = dict(param=_mults((lr_mult, 1), (2 * lr_mult, 0)), weight_filler=dict(type='xavier'),
                             bias_filler=dict(type='constant', value=0))
    net[conv_name] = L.Convolution(net[from_layer], num_output=num_output,
                                   **_conv_geometry(kernel_size, pad, stride), **conv_learning)
    if _is_dilated(dilation):
        net.update(conv_name, {'dilation': dilation})

    if use_bn:
        eps = bn_params.get('eps', 0.001)
        global_stats = bn_params.get('use_global_stats', False)
        if global_stats:
            bn_fields, affine_lr = dict(eps=eps, use_global_stats=global_stats), 0
        else:
            bn_fields = dict(eps=eps, moving_average_fraction=bn_params.get('moving_average_fraction', 0.999))
            affine_lr = lr_mult
        bn_name = f"{bn_prefix}{out_layer}{bn_postfix}"
        net[bn_name] = L.BatchNorm(net[conv_name], in_place=True, param=_mults((0, 0), (0, 0), (0, 0)),
                                   **bn_fields)
        if use_scale:
            net[f"{scale_prefix}{out_layer}{scale_postfix}"] = L.Scale(
                net[bn_name], in_place=True, bias_term=True, param=_mults((affine_lr, 0), (affine_lr, 0)),
                filler=dict(type='constant', value=1.0), bias_filler=dict(type='constant', value=0.0))
        else:
            net[f"{bias_prefix}{out_layer}{bias_postfix}"] = L.Bias(
                net[bn_name], in_place=True, param=_mults((affine_lr, 0)),
                filler=dict(type='constant', value=0.0))

    if use_relu:
        net[f"{conv_name}_relu"] = L.ReLU(net[conv_name], in_place=True)


def _dilated_pad(kernel, dilation):
    """The 'same' padding of a dilated kernel (Python 2's integer ``/``)."""
    return (kernel + (dilation - 1) * (kernel - 1) - 1) // 2


def ResBody(net, from_layer, block_name, out2a, out2b, out2c, stride, use_branch1, dilation=1, **bn_param):
    """A bottleneck residual block named as in He et al.'s Caffe models: ``res<b>_branch2a/2b/2c``
    (1x1, 3x3, 1x1 with BN ``bn<b>_*`` and Scale ``scale<b>_*``), the projection ``res<b>_branch1``
    when ``use_branch1``, then Eltwise ``res<b>`` and ``res<b>_relu``. ``stride`` is on the first
    1x1s; ``dilation`` on the 3x3 (padded to keep the size)."""
    naming = dict(conv_prefix=f"res{block_name}_", conv_postfix='', bn_prefix=f"bn{block_name}_",
                  bn_postfix='', scale_prefix=f"scale{block_name}_", scale_postfix='', use_scale=True)

    def unit(bottom, branch, num_output, kernel, pad, unit_stride, relu, unit_dilation=1):
        ConvBNLayer(net, bottom, branch, use_bn=True, use_relu=relu, num_output=num_output,
                    kernel_size=kernel, pad=pad, stride=unit_stride, dilation=unit_dilation,
                    **naming, **bn_param)
        return naming['conv_prefix'] + branch

    shortcut = unit(from_layer, 'branch1', out2c, 1, 0, stride, False) if use_branch1 else from_layer
    path = unit(from_layer, 'branch2a', out2a, 1, 0, stride, True)
    path = unit(path, 'branch2b', out2b, 3, _dilated_pad(3, dilation), 1, True, dilation)
    path = unit(path, 'branch2c', out2c, 1, 0, 1, False)
    sum_name = f"res{block_name}"
    net[sum_name] = L.Eltwise(net[shortcut], net[path])
    net[f"{sum_name}_relu"] = L.ReLU(net[sum_name], in_place=True)


def InceptionTower(net, from_layer, tower_name, layer_params, **bn_param):
    """A chain of layers ``<tower_name>/<name>`` from ``net[from_layer]``; returns the last top.

    Each dict of ``layer_params`` has a ``name`` and the layer's keywords: a step whose full name
    contains ``pool`` is a Pooling layer; any other is a ConvBNLayer (BN + Bias, no Scale, ReLU)
    taking ``num_output``, ``kernel_size``, ``pad``, ``stride`` and ``bn_param``.
    """
    for step in layer_params:
        keywords = dict(step)
        layer_name = f"{tower_name}/{keywords.pop('name')}"
        if 'pool' in layer_name:
            net[layer_name] = L.Pooling(net[from_layer], **keywords)
        else:
            keywords.update(bn_param)
            ConvBNLayer(net, from_layer, layer_name, use_bn=True, use_relu=True, use_scale=False, **keywords)
        from_layer = layer_name
    return net[from_layer]



def _learned():
    """Keywords of the bodies' plain layers: xavier weights, zero bias, bias at twice the lr."""
    return dict(param=_mults((1, 1), (2, 0)), weight_filler=dict(type='xavier'),
                bias_filler=dict(type='constant', value=0))


def _freeze(net, freeze_layers):
    """Set lr and decay to 0 on the layers named in ``freeze_layers`` that the net has (with the
    fillers restated, which adds them to an InnerProduct fc6/fc7 that had none)."""
    frozen = dict(_learned(), param=_mults((0, 0), (0, 0)))
    present = net.keys()
    for name in freeze_layers:
        if name in present:
            net.update(name, frozen)


def _fc6_fc7(net, bottom, fully_conv, fc6_conv, fc7_outputs, dropout):
    """fc6/relu6/drop6 and fc7/relu7/drop7 on ``net[bottom]``: convolutions (``fc6_conv``, then a 1x1
    with ``fc7_outputs``) when ``fully_conv``, else 4096-wide InnerProducts with Caffe's fillers."""
    if fully_conv:
        net.fc6 = L.Convolution(net[bottom], **fc6_conv, **_learned())
    else:
        net.fc6 = L.InnerProduct(net[bottom], num_output=4096)
    net.relu6 = L.ReLU(net.fc6, in_place=True)
    if dropout:
        net.drop6 = L.Dropout(net.relu6, dropout_ratio=0.5, in_place=True)
    if fully_conv:
        net.fc7 = L.Convolution(net.relu6, num_output=fc7_outputs, kernel_size=1, **_learned())
    else:
        net.fc7 = L.InnerProduct(net.relu6, num_output=4096)
    net.relu7 = L.ReLU(net.fc7, in_place=True)
    if dropout:
        net.drop7 = L.Dropout(net.relu7, dropout_ratio=0.5, in_place=True)


# ZF fc6 as a convolution, by (dilated, reduced); the undilated full-size one has no dilation field.
_ZF_FC6 = {
    (True, True): dict(num_output=1024, pad=5, kernel_size=3, dilation=5),
    (True, False): dict(num_output=4096, pad=5, kernel_size=6, dilation=2),
    (False, True): dict(num_output=1024, pad=2, kernel_size=3, dilation=2),
    (False, False): dict(num_output=4096, pad=2, kernel_size=6),
}
# ZF's convolutions: (name, num_output, pad, kernel, stride or None); LRN + pooling follow conv1, conv2.
_ZF_CONVS = (("1", 96, 3, 7, 2), ("2", 256, 2, 5, 2), ("3", 384, 1, 3, None), ("4", 384, 1, 3, None),
             ("5", 256, 1, 3, None))


def ZFNetBody(net, from_layer, need_fc=True, fully_conv=False, reduced=False,
              dilated=False, dropout=True, need_fc8=False, freeze_layers=[]):
    """Zeiler & Fergus's net on ``net[from_layer]``: conv1..conv5 (LRN and 3x3/2 max pooling after
    the first two), then with ``need_fc`` pool5 and fc6/fc7 (see ``VGGNetBody``), with ``need_fc8``
    a 1000-way fc8 and Softmax ``prob`` on the last layer; ``freeze_layers`` get lr 0."""
    _require(from_layer in net.keys(), f"ZFNetBody: from_layer {from_layer!r} is not in the net")
    bottom = from_layer
    for idx, num_output, pad, kernel, stride in _ZF_CONVS:
        conv = dict(num_output=num_output, pad=pad, kernel_size=kernel, **_learned())
        if stride is not None:
            conv['stride'] = stride
        net[f"conv{idx}"] = L.Convolution(net[bottom], **conv)
        net[f"relu{idx}"] = L.ReLU(net[f"conv{idx}"], in_place=True)
        bottom = f"relu{idx}"
        if idx in ("1", "2"):
            net[f"norm{idx}"] = L.LRN(net[bottom], local_size=3, alpha=0.00005, beta=0.75,
                                      norm_region=P.LRN.WITHIN_CHANNEL, engine=P.LRN.CAFFE)
            net[f"pool{idx}"] = L.Pooling(net[f"norm{idx}"], pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=2)
            bottom = f"pool{idx}"

    if need_fc:
        net.pool5 = L.Pooling(net.relu5, pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=1 if dilated else 2)
        _fc6_fc7(net, 'pool5', fully_conv, _ZF_FC6[bool(dilated), bool(reduced)],
                 1024 if reduced else 4096, dropout)
    if need_fc8:
        last = net.keys()[-1]
        if fully_conv:
            net.fc8 = L.Convolution(net[last], num_output=1000, kernel_size=1, **_learned())
        else:
            net.fc8 = L.InnerProduct(net[last], num_output=1000)
        net.prob = L.Softmax(net.fc8)
    _freeze(net, freeze_layers)
    return net


# VGG16 before conv5: (stage, convolutions, width); each stage ends in 2x2/2 pooling (or, with
# nopool, a stride-2 3x3 convolution conv<stage>_<n+1> without ReLU).
_VGG_STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512))
# VGG fc6 as a convolution, by (dilated, reduced): (factor on conv5's dilation, kernel, outputs).
_VGG_FC6 = {(True, True): (6, 3, 1024), (True, False): (2, 7, 4096),
            (False, True): (3, 3, 1024), (False, False): (1, 7, 4096)}


def VGGNetBody(net, from_layer, need_fc=True, fully_conv=False, reduced=False,
               dilated=False, nopool=False, dropout=True, freeze_layers=[], dilate_pool4=False):
    """VGG16 on ``net[from_layer]`` with its original names (conv1_1 ... relu5_3), as used by SSD.

    ``dilate_pool4``: pool4 becomes 3x3/1 and conv5 dilation 2. ``need_fc``: pool5 (3x3/1 when
    ``dilated``, else 2x2/2) then fc6/fc7, as convolutions with ``fully_conv`` (fc6 dilated
    x6/x2/x3 for dilated+reduced / dilated / reduced, 1024 channels when ``reduced``, else 4096 and
    7x7), else InnerProducts; ``dropout`` adds drop6/drop7. ``freeze_layers`` get lr 0.
    """
    _require(from_layer in net.keys(), f"VGGNetBody: from_layer {from_layer!r} is not in the net")
    kernel, dilation, bottom = 3, 1, from_layer
    for stage, convs, width in _VGG_STAGES:
        for i in range(1, convs + 1):
            net[f"conv{stage}_{i}"] = L.Convolution(net[bottom], num_output=width, pad=1, kernel_size=3,
                                                    **_learned())
            net[f"relu{stage}_{i}"] = L.ReLU(net[f"conv{stage}_{i}"], in_place=True)
            bottom = f"relu{stage}_{i}"
        if nopool:
            down = f"conv{stage}_{convs + 1}"
            net[down] = L.Convolution(net[bottom], num_output=width, pad=1, kernel_size=3, stride=2, **_learned())
        elif stage == 4 and dilate_pool4:
            down, dilation = "pool4", 2
            net[down] = L.Pooling(net[bottom], pool=P.Pooling.MAX, kernel_size=3, stride=1, pad=1)
        else:
            down = f"pool{stage}"
            net[down] = L.Pooling(net[bottom], pool=P.Pooling.MAX, kernel_size=2, stride=2)
        bottom = down

    for i in (1, 2, 3):
        net[f"conv5_{i}"] = L.Convolution(net[bottom], num_output=512, pad=_dilated_pad(kernel, dilation),
                                          kernel_size=kernel, dilation=dilation, **_learned())
        net[f"relu5_{i}"] = L.ReLU(net[f"conv5_{i}"], in_place=True)
        bottom = f"relu5_{i}"

    if need_fc:
        if nopool:
            down = "conv5_4"
            net[down] = L.Convolution(net[bottom], num_output=512, pad=1, kernel_size=3,
                                      stride=1 if dilated else 2, **_learned())
        else:
            down = "pool5"
            window = dict(pad=1, kernel_size=3, stride=1) if dilated else dict(kernel_size=2, stride=2)
            net[down] = L.Pooling(net[bottom], pool=P.Pooling.MAX, **window)
        factor, fc6_kernel, fc6_outputs = _VGG_FC6[bool(dilated), bool(reduced)]
        fc6_dilation = dilation * factor
        fc6 = dict(num_output=fc6_outputs, pad=_dilated_pad(fc6_kernel, fc6_dilation), kernel_size=fc6_kernel,
                   dilation=fc6_dilation)
        _fc6_fc7(net, down, fully_conv, fc6, 1024 if reduced else 4096, dropout)
    _freeze(net, freeze_layers)
    return net


# ResNet bottleneck stages 2..5: (bottleneck width, output width, first block's stride).
_RESNET_STAGES = ((2, 64, 256, 1), (3, 128, 512, 2), (4, 256, 1024, 2), (5, 512, 2048, 2))


def _resnet_block_names(stage, blocks):
    """Kaiming He's names: 2a 2b 2c / 3a 3b1 3b2 ... / 4a 4b1 ... / 5a 5b 5c."""
    if stage in (3, 4):
        return [f"{stage}a"] + [f"{stage}b{i}" for i in range(1, blocks)]
    return [f"{stage}{'abcdefghijklmnopqrstuvwxyz'[i]}" for i in range(blocks)]


def _resnet_body(net, from_layer, depths, use_pool5, use_dilation_conv5, bn_param):
    ConvBNLayer(net, from_layer, 'conv1', use_bn=True, use_relu=True, num_output=64, kernel_size=7,
                pad=3, stride=2, conv_prefix='', conv_postfix='', bn_prefix='bn_', bn_postfix='',
                scale_prefix='scale_', scale_postfix='', **bn_param)
    net.pool1 = L.Pooling(net.conv1, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    bottom = 'pool1'
    for (stage, width, out, first_stride), blocks in zip(_RESNET_STAGES, depths):
        dilation = 1
        if stage == 5 and use_dilation_conv5:
            first_stride, dilation = 1, 2
        for k, block in enumerate(_resnet_block_names(stage, blocks)):
            ResBody(net, bottom, block, out2a=width, out2b=width, out2c=out,
                    stride=first_stride if k == 0 else 1, use_branch1=k == 0, dilation=dilation, **bn_param)
            bottom = f"res{block}"
    if use_pool5:
        net.pool5 = L.Pooling(net.res5c, pool=P.Pooling.AVE, global_pooling=True)
    return net


def ResNet101Body(net, from_layer, use_pool5=True, use_dilation_conv5=False, **bn_param):
    """ResNet-101 (3, 4, 23, 3 blocks) with He et al.'s layer names; ``use_dilation_conv5`` keeps
    stage 5 at stride 1 with dilation 2; ``use_pool5`` adds global average pooling ``pool5``."""
    return _resnet_body(net, from_layer, (3, 4, 23, 3), use_pool5, use_dilation_conv5, bn_param)


def ResNet152Body(net, from_layer, use_pool5=True, use_dilation_conv5=False, **bn_param):
    """ResNet-152 (3, 8, 36, 3 blocks); see ``ResNet101Body``."""
    return _resnet_body(net, from_layer, (3, 8, 36, 3), use_pool5, use_dilation_conv5, bn_param)
