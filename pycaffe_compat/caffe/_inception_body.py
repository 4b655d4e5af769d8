"""Inception-v3's base network of ``caffe.model_libs`` (SSD's pycaffe helpers): ``InceptionV3Body``, laid out
from a table of its stem and mixed blocks with ``ConvBNLayer`` and ``InceptionTower``
(``caffe._model_bodies``). ``caffe.model_libs`` re-exports it and documents the Python 2 points."""
from caffe import layers as L
from caffe import params as P

from caffe._model_bodies import ConvBNLayer, InceptionTower

__all__ = ["InceptionV3Body"]


def _c(name, num_output, kernel=1, pad=0, stride=1):
    """An InceptionTower convolution step; a (h, w) kernel and pad become lists (rectangular)."""
    return dict(name=name, num_output=num_output, kernel_size=list(kernel) if isinstance(kernel, tuple) else kernel,
                pad=list(pad) if isinstance(pad, tuple) else pad, stride=stride)


def _p(method, pad, stride):
    """An InceptionTower 3x3 pooling step named ``pool``."""
    return dict(name='pool', pool=method, kernel_size=3, pad=pad, stride=stride)


def _inception_blocks():
    """Inception-v3's mixed blocks: (block name, towers); a tower is (name suffix, steps, split)
    where ``split`` (a width) ends it in a 1x3 / 3x1 pair concatenated as ``<tower>/mixed``."""
    AVE, MAX = P.Pooling.AVE, P.Pooling.MAX
    blocks = []
    for name, pool_width in (('mixed', 32), ('mixed_1', 64), ('mixed_2', 64)):
        blocks.append((name, [('', [_c('conv', 64)], None),
                              ('/tower', [_c('conv', 48), _c('conv_1', 64, 5, 2)], None),
                              ('/tower_1', [_c('conv', 64), _c('conv_1', 96, 3, 1), _c('conv_2', 96, 3, 1)], None),
                              ('/tower_2', [_p(AVE, 1, 1), _c('conv', pool_width)], None)]))
    blocks.append(('mixed_3', [('', [_c('conv', 384, 3, 0, 2)], None),
                               ('/tower', [_c('conv', 64), _c('conv_1', 96, 3, 1), _c('conv_2', 96, 3, 0, 2)], None),
                               ('', [_p(MAX, 0, 2)], None)]))
    for idx, width in ((4, 128), (5, 160), (6, 160), (7, 192)):
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        blocks.append((f'mixed_{idx}', [
            ('', [_c('conv', 192)], None),
            ('/tower', [_c('conv', width), _c('conv_1', width, *row), _c('conv_2', 192, *col)], None),
            ('/tower_1', [_c('conv', width), _c('conv_1', width, *col), _c('conv_2', width, *row),
                          _c('conv_3', width, *col), _c('conv_4', 192, *row)], None),
            ('/tower_2', [_p(AVE, 1, 1), _c('conv', 192)], None)]))
    blocks.append(('mixed_8', [('/tower', [_c('conv', 192), _c('conv_1', 320, 3, 0, 2)], None),
                               ('/tower_1', [_c('conv', 192), _c('conv_1', 192, (1, 7), (0, 3)),
                                             _c('conv_2', 192, (7, 1), (3, 0)), _c('conv_3', 192, 3, 0, 2)], None),
                               ('', [_p(MAX, 0, 2)], None)]))
    for idx, pool in ((9, AVE), (10, MAX)):
        blocks.append((f'mixed_{idx}', [('', [_c('conv', 320)], None),
                                        ('/tower', [_c('conv', 384)], 384),
                                        ('/tower_1', [_c('conv', 448), _c('conv_1', 384, 3, 1)], 384),
                                        ('/tower_2', [_p(pool, 1, 1), _c('conv', 192)], None)]))
    return blocks


# Inception-v3's stem: (name, num_output, kernel, pad, stride); num_output None is a 3x3/2 max pool.
_INCEPTION_STEM = (('conv', 32, 3, 0, 2), ('conv_1', 32, 3, 0, 1), ('conv_2', 64, 3, 1, 1), ('pool', None, 3, 0, 2),
                   ('conv_3', 80, 1, 0, 1), ('conv_4', 192, 3, 0, 1), ('pool_1', None, 3, 0, 2))


def InceptionV3Body(net, from_layer, output_pred=False, **bn_param):
    """Inception-v3 with the names of Google's TensorFlow graph as converted to Caffe (conv, conv_1,
    ..., mixed/tower_1/conv_2, ..., mixed_10/join); BN is followed by Bias, not Scale. With
    ``output_pred``: 8x8 average ``pool_3``, the 1008-way InnerProduct ``softmax`` and ``softmax_prob``."""
    for name, num_output, kernel, pad, stride in _INCEPTION_STEM:
        if num_output is None:
            net[name] = L.Pooling(net[from_layer], pool=P.Pooling.MAX, kernel_size=kernel, stride=stride, pad=pad)
        else:
            ConvBNLayer(net, from_layer, name, use_bn=True, use_relu=True, num_output=num_output,
                        kernel_size=kernel, pad=pad, stride=stride, use_scale=False, **bn_param)
        from_layer = name

    for block, towers in _inception_blocks():
        outputs = []
        for suffix, steps, split in towers:
            tower = f"{block}{suffix}"
            top = InceptionTower(net, from_layer, tower, steps, **bn_param)
            if split is not None:
                last = f"{tower}/{steps[-1]['name']}"
                halves = [InceptionTower(net, last, f"{tower}/mixed", [step], **bn_param)
                          for step in (_c('conv', split, (1, 3), (0, 1)), _c('conv_1', split, (3, 1), (1, 0)))]
                net[f"{tower}/mixed"] = L.Concat(*halves, axis=1)
                top = net[f"{tower}/mixed"]
            outputs.append(top)
        from_layer = f"{block}/join"
        net[from_layer] = L.Concat(*outputs, axis=1)

    if output_pred:
        net.pool_3 = L.Pooling(net[from_layer], pool=P.Pooling.AVE, kernel_size=8, pad=0, stride=1)
        net.softmax = L.InnerProduct(net.pool_3, num_output=1008)
        net.softmax_prob = L.Softmax(net.softmax)
    return net
