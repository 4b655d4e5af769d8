"""RefineDet's additions to SSD's building blocks (sfzhang15/RefineDet @ a9ca4b2, ``python/caffe/model_libs.py``):
``DeconvBNLayer``, ``EltwiseLayer`` and the fork's bare batch norm.

RefineDet's ``ConvBNLayer`` (model_libs.py:30-85) is SSD's with the batch-norm settings taken out: its
BatchNorm layers carry no field at all (no ``param``, ``eps``, ``moving_average_fraction`` or
``use_global_stats``: Caffe's defaults), its Scale layers only ``bias_term: true`` (no ``param``, no
fillers), and the keyword ``bn_params`` it receives (``eps``, ``use_global_stats``, ...) are ignored, so the
Bias of ``use_scale=False`` always learns at ``lr_mult``. Everything else (the convolution, its names and
fillers, the ReLU) is SSD's. ``DeconvBNLayer`` (model_libs.py:87-131) writes the same bare batch norm.

:func:`with_bare_batch_norm` makes a RefineDet builder of any SSD builder that writes its batch norm through
``ConvBNLayer`` (ConvBNLayer itself, ResBody, the ResNet and Inception bodies, CreateMultiBoxHead): the
builder writes into a view of the net that stores each BatchNorm and Scale layer in the fork's bare form,
and the batch-norm keywords are dropped, as the fork's ConvBNLayer drops them.
"""
import functools

from caffe import layers as L
from caffe._model_bodies import _mults

__all__ = ["DeconvBNLayer", "EltwiseLayer", "with_bare_batch_norm"]

# The keywords SSD's ConvBNLayer reads from its **bn_params; RefineDet's reads none.
_BN_KEYWORDS = ('eps', 'moving_average_fraction', 'use_global_stats')


def _bare_batch_norm(bottom):
    return L.BatchNorm(bottom, in_place=True)


def _bare_scale(bottom):
    return L.Scale(bottom, in_place=True, bias_term=True)


def _bare(top):
    """``top`` as RefineDet's ConvBNLayer would have written it: a BatchNorm or Scale layer rebuilt on the
    same bottom without SSD's fields; any other layer as it is."""
    fn = getattr(top, 'fn', None)
    rebuild = {'BatchNorm': _bare_batch_norm, 'Scale': _bare_scale}.get(getattr(fn, 'type_name', None))
    if rebuild is None:
        return top
    (bottom,) = fn.inputs
    return rebuild(bottom)


class _BareBatchNormView:
    """A NetSpec seen through RefineDet's ConvBNLayer: tops are read from and stored into ``net``, a
    BatchNorm or Scale layer in its bare form (see the module's docstring). It holds nothing of its own."""
    __slots__ = ('_net',)

    def __init__(self, net):
        object.__setattr__(self, '_net', net)

    def __setitem__(self, name, top):
        self._net[name] = _bare(top)

    __setattr__ = __setitem__

    def __getitem__(self, name):
        return self._net[name]

    def __getattr__(self, name):  # keys(), update(), to_proto() and ``net.fc7``-style reads
        return getattr(self._net, name)


def _view(net):
    return net if isinstance(net, _BareBatchNormView) else _BareBatchNormView(net)


def _unview(value, net):
    return net if isinstance(value, _BareBatchNormView) else value


def with_bare_batch_norm(builder):
    """RefineDet's form of the SSD builder ``builder`` (same signature): its batch norm written bare and
    its batch-norm keywords ignored; where it returns the net, the caller's net is returned."""
    @functools.wraps(builder)
    def refinedet_builder(net, *args, **kwargs):
        for key in _BN_KEYWORDS:
            kwargs.pop(key, None)
        return _unview(builder(_view(net), *args, **kwargs), net)

    refinedet_builder.__doc__ = (f"{builder.__doc__}\n\n    RefineDet's form: bare BatchNorm and Scale layers, "
                                 "batch-norm keywords ignored (see caffe._refinedet_blocks).")
    return refinedet_builder


def DeconvBNLayer(net, from_layer, out_layer, use_bn, use_relu, num_output,
                  kernel_size, pad, stride, use_scale=True, lr_mult=1, deconv_prefix='', deconv_postfix='',
                  bn_prefix='', bn_postfix='_bn', scale_prefix='', scale_postfix='_scale', bias_prefix='',
                  bias_postfix='_bias', **bn_params):
    """Deconvolution ``<deconv_prefix><out_layer><deconv_postfix>`` on ``net[from_layer]`` (RefineDet's
    upsampling of a coarser pyramid level), optionally followed in place by the fork's bare BatchNorm and
    Scale (or a Bias at ``lr_mult``, when ``use_scale`` is false) and ReLU ``<deconv name>_relu``.

    The learning settings are ConvBNLayer's: without BN xavier weights and a zero bias at ``lr_mult`` /
    ``2*lr_mult``, with BN gaussian(0.01) weights and no bias. ``kernel_size``, ``pad`` and ``stride`` are
    written as given (no rectangular form, no dilation); ``bn_params`` are ignored, as in the fork.
    """
    if use_bn:
        learning = dict(param=_mults((lr_mult, 1)), weight_filler=dict(type='gaussian', std=0.01),
                        bias_term=False)
    else:
        learning = dict(param=_mults((lr_mult, 1), (2 * lr_mult, 0)), weight_filler=dict(type='xavier'),
                        bias_filler=dict(type='constant', value=0))
    deconv_name = f"{deconv_prefix}{out_layer}{deconv_postfix}"
    net[deconv_name] = L.Deconvolution(net[from_layer], num_output=num_output, kernel_size=kernel_size,
                                       pad=pad, stride=stride, **learning)
    if use_bn:
        bn_name = f"{bn_prefix}{out_layer}{bn_postfix}"
        net[bn_name] = _bare_batch_norm(net[deconv_name])
        if use_scale:
            net[f"{scale_prefix}{out_layer}{scale_postfix}"] = _bare_scale(net[bn_name])
        else:
            net[f"{bias_prefix}{out_layer}{bias_postfix}"] = L.Bias(
                net[bn_name], in_place=True, param=_mults((lr_mult, 0)), filler=dict(type='constant', value=0.0))
    if use_relu:
        net[f"{deconv_name}_relu"] = L.ReLU(net[deconv_name], in_place=True)


def EltwiseLayer(net, from_layer, out_layer):
    """Eltwise (Caffe's default: SUM) ``out_layer`` of the two tops named in ``from_layer``; RefineDet's
    transfer connection block adds the upsampled coarser level to the lateral one with it."""
    net[out_layer] = L.Eltwise(net[from_layer[0]], net[from_layer[1]])
