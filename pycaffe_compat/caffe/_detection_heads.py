"""The detection heads of ``caffe.model_libs``: SSD's ``CreateMultiBoxHead`` (weiliu89/caffe, branch ``ssd``)
and RefineDet's ``CreateRefineDetHead`` (sfzhang15/RefineDet @ a9ca4b2, ``python/caffe/model_libs.py:958-1166``),
built from the same per-source steps. ``caffe.model_libs`` re-exports both and documents the Python 2 points."""
from caffe import layers as L

from caffe._model_bodies import ConvBNLayer, ResBody, _require
from caffe._refinedet_blocks import with_bare_batch_norm

__all__ = ["CreateMultiBoxHead", "CreateRefineDetHead"]


def _as_list(value):
    return value if type(value) is list else [value]


def _check_head(fn_name, net, data_layer, num_classes, from_layers, per_layer):
    """The asserts SSD's and RefineDet's heads begin with: a positive ``num_classes``, one entry per source
    layer in each per-layer list given (``min_sizes`` always), ``data_layer`` in the net."""
    _require(num_classes, f"{fn_name}: num_classes is required. Received: {num_classes!r}")
    _require(num_classes > 0, f"{fn_name}: num_classes must be positive. Received: {num_classes!r}")
    count = len(from_layers)
    for arg, values in per_layer.items():
        if values or arg == 'min_sizes':  # the others may be left empty
            _require(len(values) == count, f"{fn_name}: {arg} needs one entry per layer of "
                     f"from_layers ({count}). Received: {values!r}")
    _require(data_layer in net.keys(), f"{fn_name}: data_layer {data_layer!r} is not in the net")


def _normalized(net, from_layer, normalizations, i):
    """``<from_layer>_norm`` (Normalize, per channel, scale ``normalizations[i]``) unless it is -1 or the
    list is empty; returns the name of the source the head goes on from."""
    if not normalizations or normalizations[i] == -1:
        return from_layer
    net[f"{from_layer}_norm"] = L.Normalize(
        net[from_layer], scale_filler=dict(type="constant", value=normalizations[i]),
        across_spatial=False, channel_shared=False)
    return f"{from_layer}_norm"


def _prior_layout(fn_name, from_layer, i, min_sizes, max_sizes, aspect_ratios, flip):
    """Source ``i``'s min sizes, max sizes and aspect ratios (each a list) and its number of priors per
    location: ``(1 + [max sizes given] + len(aspect_ratio) * (1 + flip)) * len(min_size)``."""
    min_size = _as_list(min_sizes[i])
    aspect_ratio = _as_list(aspect_ratios[i]) if len(aspect_ratios) > i else []
    max_size = _as_list(max_sizes[i]) if len(max_sizes) > i else []
    _require(not max_size or len(max_size) == len(min_size),
             f"{fn_name}: layer {from_layer!r} has {len(min_size)} min sizes and "
             f"{len(max_size)} max sizes. Received: min {min_size!r}, max {max_size!r}")
    priors = (1 + bool(max_size) + len(aspect_ratio) * (2 if flip else 1)) * len(min_size)
    return min_size, max_size, aspect_ratio, priors


def _flat_prediction(net, from_layer, name, num_output, head_conv):
    """ConvBNLayer ``name`` (no ReLU), then ``<name>_perm`` (to N,H,W,C) and ``<name>_flat``."""
    ConvBNLayer(net, from_layer, name, use_relu=False, num_output=num_output, stride=1, **head_conv)
    net[f"{name}_perm"] = L.Permute(net[name], order=[0, 2, 3, 1])
    net[f"{name}_flat"] = L.Flatten(net[f"{name}_perm"], axis=1)
    return net[f"{name}_flat"]


# RefineDet's head writes its predictions and residual blocks with the fork's bare batch norm.
_refinedet_prediction = with_bare_batch_norm(_flat_prediction)
_refinedet_res_body = with_bare_batch_norm(ResBody)


def _prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio, step, clip, prior_variance,
               offset, flip, img_height, img_width):
    """PriorBox ``<from_layer>_mbox_priorbox`` over ``net[from_layer]`` and ``net[data_layer]``: max sizes,
    aspect ratios (with ``flip``), step and image size only when given."""
    prior = dict(min_size=min_size, clip=clip, variance=prior_variance, offset=offset)
    if max_size:
        prior['max_size'] = max_size
    if aspect_ratio:
        prior.update(aspect_ratio=aspect_ratio, flip=flip)
    if step:
        prior['step'] = step
    if img_height != 0 and img_width != 0:
        prior.update({'img_size': img_height} if img_height == img_width
                     else {'img_h': img_height, 'img_w': img_width})
    name = f"{from_layer}_mbox_priorbox"
    net[name] = L.PriorBox(net[from_layer], net[data_layer], **prior)
    return net[name]


def _joined(net, joins):
    """Concat ``name`` of each (name, parts, axis); returns the Concat tops in order."""
    outputs = []
    for name, parts, axis in joins:
        net[name] = L.Concat(*parts, axis=axis)
        outputs.append(net[name])
    return outputs


def CreateMultiBoxHead(net, data_layer="data", num_classes=[], from_layers=[],
                       use_objectness=False, normalizations=[], use_batchnorm=True, lr_mult=1,
                       use_scale=True, min_sizes=[], max_sizes=[], prior_variance=[0.1],
                       aspect_ratios=[], steps=[], img_height=0, img_width=0, share_location=True,
                       flip=True, clip=True, offset=0.5, inter_layer_depth=[], kernel_size=1, pad=0,
                       conf_postfix='', loc_postfix='', prefix='mbox', **bn_param):
    """SSD's detection head over ``from_layers``; returns ``[mbox_loc, mbox_conf, mbox_priorbox]``
    (and ``mbox_objectness`` when ``use_objectness``) for MultiBoxLoss or DetectionOutput.

    Per source layer ``s``: ``s_norm`` (Normalize, when ``normalizations[i] != -1``), ``s_inter``
    (a 3x3 ConvBNLayer with ReLU, when ``inter_layer_depth[i] > 0``), then on the result ``x``:
    ``x_mbox_loc<loc_postfix>`` and ``x_mbox_conf<conf_postfix>`` (ConvBNLayer, ``_perm``,
    ``_flat``), ``x_mbox_priorbox`` (PriorBox over ``x`` and ``data_layer``) and, when asked,
    ``x_mbox_objectness``. The number of priors per location is
    ``(1 + [max sizes given] + len(aspect_ratio) * (1 + flip)) * len(min_size)``.
    ``use_scale`` is accepted and unused, as in SSD. ``bn_param`` goes to every ConvBNLayer.
    ``prefix`` (RefineDet's addition) names the Concats ``<prefix>_loc``, ``<prefix>_conf``, ...
    """
    name = "CreateMultiBoxHead"
    _check_head(name, net, data_layer, num_classes, from_layers,
                dict(normalizations=normalizations, min_sizes=min_sizes, max_sizes=max_sizes,
                     aspect_ratios=aspect_ratios, steps=steps, inter_layer_depth=inter_layer_depth))
    head_conv = dict(use_bn=use_batchnorm, lr_mult=lr_mult, kernel_size=kernel_size, pad=pad, **bn_param)
    loc_layers, conf_layers, prior_layers, objectness_layers = [], [], [], []
    for i, from_layer in enumerate(from_layers):
        from_layer = _normalized(net, from_layer, normalizations, i)
        if inter_layer_depth and inter_layer_depth[i] > 0:
            ConvBNLayer(net, from_layer, f"{from_layer}_inter", use_bn=use_batchnorm, use_relu=True,
                        lr_mult=lr_mult, num_output=inter_layer_depth[i], kernel_size=3, pad=1, stride=1,
                        **bn_param)
            from_layer = f"{from_layer}_inter"
        min_size, max_size, aspect_ratio, priors = _prior_layout(name, from_layer, i, min_sizes, max_sizes,
                                                                 aspect_ratios, flip)
        loc_outputs = priors * 4 if share_location else priors * 4 * num_classes
        loc_layers.append(_flat_prediction(net, from_layer, f"{from_layer}_mbox_loc{loc_postfix}",
                                           loc_outputs, head_conv))
        conf_layers.append(_flat_prediction(net, from_layer, f"{from_layer}_mbox_conf{conf_postfix}",
                                            priors * num_classes, head_conv))
        step = steps[i] if len(steps) > i else []
        prior_layers.append(_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio, step, clip,
                                       prior_variance, offset, flip, img_height, img_width))
        if use_objectness:
            objectness_layers.append(_flat_prediction(net, from_layer, f"{from_layer}_mbox_objectness",
                                                      priors * 2, head_conv))

    joins = [(f"{prefix}_loc", loc_layers, 1), (f"{prefix}_conf", conf_layers, 1),
             (f"{prefix}_priorbox", prior_layers, 2)]
    if use_objectness:
        joins.append((f"{prefix}_objectness", objectness_layers, 1))
    return _joined(net, joins)


def CreateRefineDetHead(net, data_layer="data", num_classes=[], from_layers=[], from_layers2=[],
                        normalizations=[], use_batchnorm=True, lr_mult=1, min_sizes=[], max_sizes=[],
                        prior_variance=[0.1], aspect_ratios=[], steps=[], img_height=0, img_width=0,
                        share_location=True, flip=True, clip=True, offset=0.5, inter_layer_depth=[],
                        kernel_size=1, pad=0, conf_postfix='', loc_postfix='', **bn_param):
    """RefineDet's two heads; returns ``[arm_loc, arm_conf, arm_priorbox, odm_loc, odm_conf]``.

    The anchor refinement module (ARM) over ``from_layers`` is SSD's head for two classes (object or
    not): per source ``s``, ``s_norm`` and ``x_mbox_loc``/``x_mbox_conf`` (+ ``_perm``, ``_flat``) and
    ``x_mbox_priorbox`` as in ``CreateMultiBoxHead``, joined as ``arm_loc``, ``arm_conf``, ``arm_priorbox``.
    The object detection module (ODM) over ``from_layers2`` (the transfer connection blocks' outputs)
    writes the loc and conf predictions of ``num_classes`` classes, joined as ``odm_loc`` and ``odm_conf``,
    and no priors: it refines the ARM's. Its ``i``-th source takes the ``i``-th entry of the per-layer lists
    (sizes, ratios, normalizations, inter layers), so ``from_layers2`` can be no longer than ``from_layers``.

    As in the fork: ``inter_layer_depth[i] > 0`` inserts a residual block (``ResBody`` with 256, 256 and
    1024 channels and a projection, named ``res<x>_inter``) whatever the depth's value; the
    convolutions and residual blocks have RefineDet's bare batch norm (see ``caffe._refinedet_blocks``)
    and ``bn_param`` is ignored; with ``share_location`` false the ARM's loc predicts 2 sets of boxes.
    """
    name = "CreateRefineDetHead"
    _check_head(name, net, data_layer, num_classes, from_layers,
                dict(normalizations=normalizations, min_sizes=min_sizes, max_sizes=max_sizes,
                     aspect_ratios=aspect_ratios, steps=steps, inter_layer_depth=inter_layer_depth))
    _require(len(from_layers2) <= len(from_layers),
             f"{name}: from_layers2 takes the per-layer settings of from_layers, so it can be no longer "
             f"({len(from_layers)}). Received: {from_layers2!r}")
    head_conv = dict(use_bn=use_batchnorm, lr_mult=lr_mult, kernel_size=kernel_size, pad=pad)
    outputs = []
    for prefix, sources, classes, with_priors in (('arm', from_layers, 2, True),
                                                   ('odm', from_layers2, num_classes, False)):
        loc_layers, conf_layers, prior_layers = [], [], []
        for i, from_layer in enumerate(sources):
            from_layer = _normalized(net, from_layer, normalizations, i)
            if inter_layer_depth and inter_layer_depth[i] > 0:
                _refinedet_res_body(net, from_layer, f"{from_layer}_inter", out2a=256, out2b=256, out2c=1024,
                                    stride=1, use_branch1=True)
                from_layer = f"res{from_layer}_inter"
            min_size, max_size, aspect_ratio, priors = _prior_layout(name, from_layer, i, min_sizes, max_sizes,
                                                                     aspect_ratios, flip)
            loc_outputs = priors * 4 if share_location else priors * 4 * classes
            loc_layers.append(_refinedet_prediction(net, from_layer, f"{from_layer}_mbox_loc{loc_postfix}",
                                                    loc_outputs, head_conv))
            conf_layers.append(_refinedet_prediction(net, from_layer, f"{from_layer}_mbox_conf{conf_postfix}",
                                                     priors * classes, head_conv))
            if with_priors:
                step = steps[i] if len(steps) > i else []
                prior_layers.append(_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio,
                                               step, clip, prior_variance, offset, flip, img_height, img_width))
        joins = [(f"{prefix}_loc", loc_layers, 1), (f"{prefix}_conf", conf_layers, 1)]
        if with_priors:
            joins.append((f"{prefix}_priorbox", prior_layers, 2))
        outputs += _joined(net, joins)
    return outputs
