"""Regularizers applied by the solver between gradient normalization and the update rule.

``base`` holds the interface and registry; ``chain`` the fixed order (weight decay, force, group lasso).
"""
from neocaffe.regularizers.base import Regularizer, get_regularizer_class, register_regularizer, regularizer_names

__all__ = ["Regularizer", "register_regularizer", "regularizer_names", "get_regularizer_class"]
