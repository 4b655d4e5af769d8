"""Generate models/bvlc_alexnet/*.prototxt from the fork's nets as run by the reference goldens
(../shared/fixtures/caffenet: the deploy net and the split net, with Input layers in place of Data).

The ILSVRC-2012 Data layers are the fork's (mean file, crop 227, mirror in TRAIN, batch 256/50).
Run once: python scripts/make_alexnet_models.py  (outputs are committed).
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from neocaffe.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]
FIX = REPO.parent / "shared" / "fixtures" / "caffenet"
OUT = REPO / "models" / "bvlc_alexnet"

DATA = """
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 227 mean_file: "data/ilsvrc12/imagenet_mean.binaryproto" }
  data_param { source: "examples/imagenet/ilsvrc12_train_lmdb" batch_size: 256 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mirror: false crop_size: 227 mean_file: "data/ilsvrc12/imagenet_mean.binaryproto" }
  data_param { source: "examples/imagenet/ilsvrc12_val_lmdb" batch_size: 50 backend: LMDB } }
"""


def load(name: str) -> caffe_pb2.NetParameter:
    return text_format.Parse((FIX / name).read_text(), caffe_pb2.NetParameter())


def with_data(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    out = caffe_pb2.NetParameter()
    out.name = net.name
    text_format.Parse(DATA, out)
    out.layer.extend(l for l in net.layer if l.type != "Input")
    return out


def write(net: caffe_pb2.NetParameter, name: str) -> None:
    (OUT / name).write_text(text_format.MessageToString(net))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    deploy_run = load("deploy_seed1_b2.prototxt")
    body = [l for l in deploy_run.layer if l.type not in ("Input",) and l.name != "loss"]
    # deploy: batch 10 Input, up to prob
    deploy = caffe_pb2.NetParameter(name=deploy_run.name)
    text_format.Parse('layer { name: "data" type: "Input" top: "data" '
                      'input_param { shape { dim: 10 dim: 3 dim: 227 dim: 227 } } }', deploy)
    deploy.layer.extend(body)
    write(deploy, "deploy.prototxt")
    # train_val: Data layers, body without prob, plus accuracy (TEST) and loss
    tv = caffe_pb2.NetParameter(name=deploy_run.name)
    text_format.Parse(DATA, tv)
    tv.layer.extend(l for l in body if l.name != "prob")
    text_format.Parse('layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" '
                      'include { phase: TEST } } '
                      'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }', tv)
    write(tv, "train_val.prototxt")
    # template_train_val: sp_conv5 (Sparsify in place on conv5) before relu5
    tmpl = caffe_pb2.NetParameter(name=tv.name)
    for layer in tv.layer:
        if layer.name == "relu5":
            text_format.Parse('layer { name: "sp_conv5" type: "Sparsify" bottom: "conv5" top: "conv5" '
                              'sparsify_param { coef: 4.5e-10 } }', tmpl)
        tmpl.layer.add().CopyFrom(layer)
    write(tmpl, "template_train_val.prototxt")
    # train_val_split: grouped layers split into parallel layers, force_mult 1 on conv weights
    write(with_data(load("split_seed1_b2.prototxt")), "train_val_split.prototxt")


if __name__ == "__main__":
    main()
