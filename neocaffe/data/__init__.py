"""Data for Caffe nets: Datums (``datum``), the transform (``transformer``), sources (``sources``: LMDB,
LevelDB, image lists, HDF5 lists), batch makers (``batches``) and worker-process prefetching
(``prefetch``). The data *layers* (Data, ImageData, HDF5Data, ...) are in ``neocaffe.layers.data_layers``.
"""
