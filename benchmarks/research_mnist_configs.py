"""Every configuration benchmarks/research_mnist.py runs, in the order they were added: each arm's first
guesses, then the ones tried after seeing results (the doc reports all of them, passing or not).

A configuration: ``arm`` ("force" or "ssl"), ``name``; force: ``force_type``, ``force_decay`` and ``ranks``
(a ``lowrank`` rank_config, or "ratio:R": each conv layer's rank at PCA energy R where that lowers its
multiply-accumulates); ssl: ``breadth_decay``, ``kernel_shape_decay`` and the ``prune`` ``threshold``;
optional ``ft_lr`` (None: the solver's own base_lr) and ``ft_iters`` override the fine-tuning's defaults."""
from __future__ import annotations

# force arm: (name, force_type, force_decay, lowrank selection); the selection is a rank_config or
# "ratio:R" (rank at PCA energy R, a layer decomposed only where that lowers its multiply-accumulates)
FORCE_CONFIGS = [
    {"arm": "force", "name": "Degradation 0.001, conv2 rank 12", "force_type": "Degradation", "force_decay": 0.001,
     "ranks": {"conv2": 12}},
    {"arm": "force", "name": "Degradation 0.001, conv1 rank 6, conv2 rank 12", "force_type": "Degradation",
     "force_decay": 0.001, "ranks": {"conv1": 6, "conv2": 12}},
    {"arm": "force", "name": "Degradation 0.0003, conv2 rank 12", "force_type": "Degradation",
     "force_decay": 0.0003, "ranks": {"conv2": 12}},
    {"arm": "force", "name": "Degradation 0.001, ranks at 95% energy", "force_type": "Degradation",
     "force_decay": 0.001, "ranks": "ratio:0.95"},
    {"arm": "force", "name": "no force (control), conv2 rank 12", "force_type": "", "force_decay": 0.0,
     "ranks": {"conv2": 12}},
    # lower rank, after conv2 rank 12 met the MACs and accuracy bars but not batch 1's speed
    {"arm": "force", "name": "Degradation 0.0003, conv2 rank 8", "force_type": "Degradation",
     "force_decay": 0.0003, "ranks": {"conv2": 8}},
    {"arm": "force", "name": "Degradation 0.0003, conv2 rank 8, fine-tune 4000", "force_type": "Degradation",
     "force_decay": 0.0003, "ranks": {"conv2": 8}, "ft_iters": 4000},
    # the first recipe tried: fine-tuning with the solver's own base_lr (0.01, restarted) for 1000 iterations
    {"arm": "force", "name": "Degradation 0.001, conv2 rank 12, fine-tune lr 0.01 x 1000",
     "force_type": "Degradation", "force_decay": 0.001, "ranks": {"conv2": 12}, "ft_lr": None, "ft_iters": 1000},
    {"arm": "force", "name": "Degradation 0.001, conv1 rank 6, conv2 rank 12, fine-tune lr 0.01 x 1000",
     "force_type": "Degradation", "force_decay": 0.001, "ranks": {"conv1": 6, "conv2": 12}, "ft_lr": None,
     "ft_iters": 1000},
]
# SSL arm: breadth_decay (whole filters) and kernel_shape_decay (filter shapes, i.e. the next layer's
# channels once a whole channel's shapes are zero) on conv1/conv2; prune at the threshold given
SSL_CONFIGS = [
    {"arm": "ssl", "name": "SSL breadth 0.03, shape 0.01", "breadth_decay": 0.03, "kernel_shape_decay": 0.01,
     "threshold": 1e-4},
    {"arm": "ssl", "name": "SSL breadth 0.06, shape 0.02", "breadth_decay": 0.06, "kernel_shape_decay": 0.02,
     "threshold": 1e-4},
    # weaker, after 0.03/0.01 left 2 of conv1's 20 filters and lost a point
    {"arm": "ssl", "name": "SSL breadth 0.01, shape 0.003", "breadth_decay": 0.01, "kernel_shape_decay": 0.003,
     "threshold": 1e-4},
    {"arm": "ssl", "name": "SSL breadth 0.003, shape 0.001", "breadth_decay": 0.003, "kernel_shape_decay": 0.001,
     "threshold": 1e-4},
    # 0.01/0.003 kept 9 conv1 filters (1.87x fewer MACs) and came back to -0.34 points in 1500 iterations:
    # a longer fine-tuning, and a slightly stronger decay with it
    {"arm": "ssl", "name": "SSL breadth 0.01, shape 0.003, fine-tune 4000", "breadth_decay": 0.01,
     "kernel_shape_decay": 0.003, "threshold": 1e-4, "ft_iters": 4000},
    {"arm": "ssl", "name": "SSL breadth 0.015, shape 0.005, fine-tune 4000", "breadth_decay": 0.015,
     "kernel_shape_decay": 0.005, "threshold": 1e-4, "ft_iters": 4000},
    # no configuration above removed a conv2 filter (ip1 keeps 800 inputs) and batch 1 stayed under 1.5x:
    # conv2's breadth decay 10x stronger
    {"arm": "ssl", "name": "SSL breadth 0.01 (conv2 x10), shape 0.003, fine-tune 4000", "breadth_decay": 0.01,
     "kernel_shape_decay": 0.003, "threshold": 1e-4, "ft_iters": 4000,
     "mults": {"conv2": {"breadth_decay_mult": 10}}},
]


def configs(smoke: bool = False) -> list[dict]:
    """Every configuration (the smoke run: one of each kind of rank selection, the control, one SSL)."""
    if smoke:
        return [FORCE_CONFIGS[0], FORCE_CONFIGS[3], FORCE_CONFIGS[4], SSL_CONFIGS[0]]
    return FORCE_CONFIGS + SSL_CONFIGS
