"""RefineDet's anchor refinement module (ARM) inside SSD's DetectionOutput and MultiBoxLoss (lineage:
sfzhang15/RefineDet @ a9ca4b2, an SSD fork; ``src/caffe/util/bbox_util.cpp``: ``CasRegDecodeBBoxesAll``,
``CasRegFindMatches``, ``CasRegEncodeLocPrediction``, ``OSGetConfidenceScores``, ``MineHardExamples`` and
``GetGroundTruth``; ``bbox_util.cu``: ``CasRegDecodeBBoxesGPU``, ``OSPermuteDataKernel``).

The ARM's bottoms, after SSD's:

* ``arm_conf`` (N, P*2): the ARM's softmaxed (background, object) scores (RefineDet's nets pass
  ``arm_conf_flatten``). DetectionOutput: a prior whose objectness ``arm_conf[p, 1]`` is below
  ``objectness_score`` scores 1 for class 0 and 0 for every other class (class 0 whatever
  ``background_label_id``: ``OSGetConfidenceScores``, bbox_util.cpp:1652-1660, and the GPU's
  ``OSPermuteDataKernel``). MultiBoxLoss: such a prior is not a mining candidate (bbox_util.cpp:1104);
  positives stay positives, except that HARD_EXAMPLE mining can no longer select them.
* ``arm_loc`` (N, P*4): the ARM's offsets. Each image's priors are first decoded by them (``clip`` off; the
  prior variances are kept for the second step), and the ODM's offsets are decoded (DetectionOutput) or
  matched and encoded (MultiBoxLoss, with ``use_prior_for_matching``) against those refined priors. The
  fork reads ``arm_loc`` as the shared label (-1) only, so it needs ``share_location: true``.

Where the fork keeps the original priors, so do we: MultiBoxLoss's matching without
``use_prior_for_matching`` decodes the ODM's offsets from the original priors (bbox_util.cpp:910-912), and
HARD_EXAMPLE mining scores its location loss with SSD's ``EncodeLocPrediction`` against the original priors
(bbox_util.cpp:1065), as does the mining NMS's decoding. Mining with ``nms_param`` reads its NMS picks through
the objectness-filtered list (`remap_nms_picks`).

Every MultiBoxLoss of the fork maps ground-truth labels >= 2 to 1 when ``num_classes`` is 2 (its ARM loss
reads VOC's labels as objects: ``GetGroundTruth``, bbox_util.cpp:1226), before the background check. SSD
reads such labels out of range (or fails a CHECK in mining) with ``share_location``; without it, SSD's
per-class matching skips them. So neocaffe maps them with ``share_location`` or the ARM bottoms, and keeps
SSD's skipping otherwise. (The fork's DetectionEvaluate maps them too, whatever its bottoms; there SSD's count
of such boxes is well defined and no field tells the forks apart, so ours maps them with neocaffe's
``detection_evaluate_param { refinedet_labels: true }``: see DetectionEvaluate.)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import _bbox
from neocaffe.layers.base import Shape


def objectness_score(p: Any) -> float:
    """``objectness_score`` as the fork compares it: the proto's float (0.01f by default)."""
    return float(np.float32(p.objectness_score))


def refined_priors(prior: Tensor, var: Tensor, arm_loc: Tensor, code_type: int, variance_in_target: bool) -> Tensor:
    """Each image's priors [N, P, 4] decoded by the ARM's offsets ``arm_loc`` (N, P*4), unclipped."""
    n, num_priors = arm_loc.shape[0], prior.shape[0]
    return _bbox.decode(prior, var, arm_loc.reshape(n, num_priors, 4), code_type, variance_in_target)


def objectness(arm_conf: Tensor, num_priors: int) -> Tensor:
    """The ARM's object score of every prior, [N, P] (the second of each pair of ``arm_conf``)."""
    return arm_conf.reshape(arm_conf.shape[0], num_priors, 2)[..., 1]


def masked_scores(conf: Tensor, arm_conf: Tensor, threshold: float) -> Tensor:
    """OSGetConfidenceScores: ``conf`` [N, P, C] with the priors of objectness below ``threshold`` set to
    (1, 0, ..., 0)."""
    low = objectness(arm_conf, conf.shape[1]) < threshold
    easy = torch.zeros_like(conf)
    easy[..., 0] = 1.0
    return torch.where(low.unsqueeze(-1), easy, conf)


def two_class_labels(gt: Tensor) -> Tensor:
    """GetGroundTruth with ``num_classes`` 2: the label column of the (1, 1, G, 8) rows, >= 2 made 1."""
    rows = gt.reshape(-1, 8).clone()
    rows[:, 1] = torch.where(rows[:, 1] >= 2, torch.ones_like(rows[:, 1]), rows[:, 1])
    return rows.view(gt.shape)


def detection_output_bottoms(p: Any, shapes: list[Shape], error: Callable[[str], Exception]
                             ) -> tuple[int | None, int | None, int | None]:
    """Which bottom of a DetectionOutput is what: (arm_conf, arm_loc, image) indices, None where absent.

    Five bottoms are RefineDet's (``arm_conf``, ``arm_loc``). A fourth bottom is SSD's image bottom (read by
    ``visualize`` only) or RefineDet's ``arm_conf``; the forks disagree, so the layer tells them apart: it is
    ``arm_conf`` when ``objectness_score`` is set (RefineDet's scripts always write it) or when it is not 4-D
    and holds N x P x 2 values (the ARM's scores, not an image)."""
    if len(shapes) == 5:
        if p.visualize:
            raise error("visualize draws on a fourth bottom of images, but with 5 bottoms the fourth is RefineDet's "
                        "arm_conf (the fork would read the ARM's scores as images)")
        return 3, 4, None
    if len(shapes) < 4:
        return None, None, None
    fourth = shapes[3]
    is_arm = p.HasField("objectness_score") or (
        len(fourth) != 4 and int(np.prod(fourth)) == shapes[0][0] * num_priors(shapes) * 2 and not p.visualize)
    if is_arm and p.visualize:
        raise error("visualize draws on a fourth bottom of images, but objectness_score makes the fourth bottom "
                    "RefineDet's arm_conf")
    return (3, None, None) if is_arm else (None, None, 3)


def share_error(error: Callable[[str], Exception]) -> Exception:
    """arm_loc without share_location: the fork looks up the shared label (-1) of the ARM's offsets, which it
    then lacks (an invalid iterator: ``all_arm_loc_preds[i].find(-1)->second``)."""
    return error("RefineDet's arm_loc refines shared priors: it needs share_location: true (the fork reads the "
                 "ARM's offsets as the shared label -1, which it lacks otherwise)")


def num_priors(shapes: list[Shape]) -> int:
    """The number of priors of the prior bottom (1, 2, P*4)."""
    return (shapes[2][2] if len(shapes[2]) > 2 else 1) // 4


def check_arm(error: Callable[[str], Exception], shapes: list[Shape], priors: int, arm_conf_at: int | None,
              arm_loc_at: int | None) -> None:
    """The ARM bottoms' shapes: arm_conf N x P x 2 values, arm_loc N x P x 4."""
    num = shapes[0][0]
    for at, what, per in ((arm_conf_at, "arm_conf", 2), (arm_loc_at, "arm_loc", 4)):
        if at is None:
            continue
        s = shapes[at]
        if not s or s[0] != num or int(np.prod(s)) != num * priors * per:
            raise error(f"RefineDet's {what} (bottom {at}) must hold {per} values per prior and image: expected "
                        f"({num}, {priors * per}) for {priors} priors; received shape {s}")


def remap_nms_picks(picked: Tensor, eligible: Tensor, candidates: Tensor, error: Callable[[str], Exception]) -> Tensor:
    """MineHardExamples' NMS branch with ``arm_conf`` (bbox_util.cpp:1124-1161): NMS runs over all
    ``eligible`` priors and returns positions in that list, but the fork reads them from ``loss_indices``,
    which holds only the ``candidates`` (eligible and objectness >= objectness_score), both in prior order:
    the pick at position k of the eligible list selects the k-th candidate. A position past the candidates
    reads past the fork's vector (no defined result): an error here."""
    rank = torch.cumsum(eligible.to(torch.int64), dim=1) - 1
    count = candidates.sum(dim=1, keepdim=True)
    if bool((picked & (rank >= count)).any()):
        raise error("mining with nms_param and RefineDet's arm_conf: an NMS pick lies past the objectness-filtered "
                    "candidates, where the fork reads past its vector (bbox_util.cpp:1160); no defined result")
    order = torch.sort((~candidates).to(torch.int8), dim=1, stable=True).indices      # candidates first, in order
    target = torch.gather(order, 1, rank.clamp(min=0))
    rows = torch.arange(picked.shape[0], device=picked.device).unsqueeze(1).expand_as(picked)
    out = torch.zeros_like(picked)
    out[rows[picked], target[picked]] = True
    return out
