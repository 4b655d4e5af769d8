"""Caffe's solvers: learning-rate policies, update rules, the training loop and snapshots.

``Solver(solver_prototxt_or_param)`` builds the train and test nets; ``solve()`` trains to
``max_iter``, ``step(n)`` runs n iterations, ``snapshot()``/``restore(path)`` write and read
``.caffemodel[.h5]`` + ``.solverstate[.h5]``.
"""
from neocaffe.solver.lr_policy import POLICIES, learning_rate
from neocaffe.solver.rules import RULES, UpdateRule, make_rule
from neocaffe.solver.solver import Solver, SolverError

__all__ = ["Solver", "SolverError", "learning_rate", "POLICIES", "RULES", "UpdateRule", "make_rule"]
