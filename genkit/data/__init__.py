"""Image data on `datasets`: one loader for MNIST, Fashion-MNIST, Hub ids and local files, then in-memory tensors.

Every source is turned into a `datasets.Dataset` with the same schema (`image`: Image, `label`: ClassLabel with
names) by `sources`. For training it is decoded once (`decode`) into the node's decode cache (`cache`) as a uint8
array (N, C, H, W), held in memory (on the GPU when there is one) or memory-mapped (`tensors`); batches are then made
by indexing (`batches`), with no per-sample PIL work in the training loop.
"""

from .batches import ShardedBatches, binarize_fixed, make_batch, to_model_range, to_unit_range
from .cache import CACHE_VERSION, MEMORY_LIMIT_BYTES, _open_entry, _write_entry, cache_dir, load_split, load_train_eval
from .decode import DECODE_BATCH, to_tensors
from .sources import (
    BUILTIN,
    FASHION_MNIST_NAMES,
    IDX_PREFIX,
    DataSourceError,
    DecodeInterrupted,
    hub_source,
    load_hub,
    load_image_dataset,
    locate_idx,
    read_idx_folder,
)
from .tensors import ImageTensors

__all__ = [
    "BUILTIN", "CACHE_VERSION", "DECODE_BATCH", "DataSourceError", "DecodeInterrupted", "FASHION_MNIST_NAMES", "IDX_PREFIX", "ImageTensors",
    "MEMORY_LIMIT_BYTES", "ShardedBatches", "_open_entry", "_write_entry", "binarize_fixed", "cache_dir", "hub_source", "load_hub",
    "load_image_dataset", "load_split", "load_train_eval", "locate_idx", "make_batch", "read_idx_folder", "to_model_range", "to_tensors",
    "to_unit_range",
]
