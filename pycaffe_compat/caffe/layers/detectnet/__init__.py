"""NVCaffe's DetectNet Python layers (DIGITS' object detection), as ``python_param.module`` names them:
``caffe.layers.detectnet.clustering`` (``ClusterDetections``, ``ClusterGroundtruth``) and
``caffe.layers.detectnet.mean_ap`` (``ScoreDetections``, ``mAP``). neocaffe's own implementations of
NVIDIA/caffe @ 87a2554 ``python/caffe/layers/detectnet/{clustering,mean_ap}.py`` (BSD-2-Clause, NVIDIA):
the same outputs, not the same code.
"""
