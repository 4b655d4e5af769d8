"""Caffe's files: prototxt text (strict), upgrades of old formats, weights (.caffemodel[.h5]), means
(.binaryproto) and solver states (.solverstate[.h5]). Errors name the file and what is wrong."""

from .binaryproto import Blob, read_blobproto, write_blobproto
from .caffemodel import LayerWeights, read_caffemodel, read_net_binary, save_caffemodel, write_net_binary
from .errors import CaffeFileError, CaffeFileNotFoundError, PrototxtError
from .files import is_hdf5
from .hdf5 import read_caffemodel_h5, save_caffemodel_h5
from .prototxt import (NetSource, layer_locations, parse_text, read_net, read_net_with_source,
                       read_prototxt, read_solver, to_text, write_prototxt)
from .solverstate import SolverState, read_solverstate, write_solverstate, write_solverstate_h5
from .upgrade import UpgradeError, upgrade_blob_proto, upgrade_net, upgrade_solver
from .weights import fit_blob, load_weights, save_weights, shape_equals, weights_by_name

__all__ = [
    "Blob", "read_blobproto", "write_blobproto",
    "LayerWeights", "read_caffemodel", "read_net_binary", "save_caffemodel", "write_net_binary",
    "CaffeFileError", "CaffeFileNotFoundError", "PrototxtError", "is_hdf5",
    "read_caffemodel_h5", "save_caffemodel_h5",
    "NetSource", "layer_locations", "parse_text", "read_net", "read_net_with_source",
    "read_prototxt", "read_solver", "to_text", "write_prototxt",
    "SolverState", "read_solverstate", "write_solverstate", "write_solverstate_h5",
    "UpgradeError", "upgrade_blob_proto", "upgrade_net", "upgrade_solver",
    "fit_blob", "load_weights", "save_weights", "shape_equals", "weights_by_name",
]
