"""Sources -> `datasets.Dataset`: MNIST-format IDX folders, imagefolders, parquet, saved datasets and Hub ids, one schema.

Every source comes out with the same columns: `image` (Image) and `label` (ClassLabel with names).
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import datasets
import numpy as np

FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
BUILTIN = {  # name -> (Hub id, class names, folders searched for local IDX files)
    "mnist": ("ylecun/mnist", [str(i) for i in range(10)], []),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", FASHION_MNIST_NAMES, ["/usr/share/datasets/fashion-mnist"]),
}
IDX_PREFIX = {"train": "train", "test": "t10k"}
MAX_IDX_SIDE = 4096  # pixels per side of an IDX image
MAX_IDX_BYTES = 2**34  # 16 GiB: beyond any IDX data set, far below what a crafted header can claim
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataSourceError(ValueError):
    """A data source cannot be found, read or understood."""


class DecodeInterrupted(KeyboardInterrupt):
    """Ctrl-C during the one-time decode: the partial cache entry is already removed."""


def load_image_dataset(source: str, split: str = "train", data_dir: str | None = None, revision: str | None = None,
                       config_name: str | None = None) -> datasets.Dataset:
    """Load one split of any supported source as a Dataset with columns `image` (Image) and `label` (ClassLabel)."""
    hub = hub_source(source, split, data_dir)
    if hub is not None:
        return _standardize(load_hub(hub[0], split, revision, config_name), hub[1])
    name = source.lower().replace("-", "_")
    if name in BUILTIN:
        return read_idx_folder(locate_idx(name, split, data_dir), split, BUILTIN[name][1])
    return _standardize(_load_local(Path(source).expanduser(), split))


def hub_source(source: str, split: str, data_dir: str | None) -> tuple[str, list[str] | None] | None:
    """The Hub id a source is read from, with the class names genkit knows for it; None when it is read from local files."""
    name = source.lower().replace("-", "_")
    if name in BUILTIN:
        hub_id, names, _ = BUILTIN[name]
        return None if locate_idx(name, split, data_dir) else (hub_id, names)
    if Path(source).expanduser().exists():
        return None
    if source.startswith((".", "/", "~")) or os.sep in source and source.count("/") != 1:
        raise DataSourceError(f"data source {source!r} does not exist")
    return source, None


def locate_idx(name: str, split: str, data_dir: str | None) -> Path | None:
    """The local IDX folder for a built-in data set: `data_dir`, else $GENKIT_DATA_DIR/<name>, else system folders."""
    if data_dir:
        if not _find_idx(Path(data_dir), split):
            raise DataSourceError(f"data_dir {data_dir!r} has no IDX files for split {split!r} (expected "
                                  f"{IDX_PREFIX.get(split, split)}-images-idx3-ubyte[.gz] and the matching labels file)")
        return Path(data_dir)
    env = [os.path.join(os.environ["GENKIT_DATA_DIR"], name)] if "GENKIT_DATA_DIR" in os.environ else []
    return next((Path(f) for f in env + BUILTIN[name][2] if _find_idx(Path(f), split)), None)


def read_idx_folder(folder: str | Path, split: str = "train", class_names: list[str] | None = None) -> datasets.Dataset:
    """Read MNIST-format IDX files (gzipped or not) into a Dataset."""
    found = _find_idx(Path(folder), split)
    if not found:
        raise DataSourceError(f"no IDX files for split {split!r} in {folder}")
    images, labels = (_read_idx(p) for p in found)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(labels) == 0:
        raise DataSourceError(f"IDX files in {folder} do not hold images (N,H,W) with matching labels: {images.shape} vs {labels.shape}")
    names = class_names or [str(i) for i in range(int(labels.max()) + 1)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64)}, features=features)


def _find_idx(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = IDX_PREFIX.get(split, split)
    for suffix in [".gz", ""]:
        images, labels = folder / f"{prefix}-images-idx3-ubyte{suffix}", folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array; the header is checked before the body is read, so absurd sizes never allocate."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
                raise DataSourceError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
            ndim = magic[3]
            if ndim not in (1, 3):
                raise DataSourceError(f"{path}: an IDX file of labels (1 dimension) or images (3 dimensions) was expected, the header says {ndim}")
            header = f.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise DataSourceError(f"{path} is truncated: its header ends early")
            dims = [int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(ndim)]
            size = math.prod(dims)  # Python integers: no overflow
            if ndim == 3 and not (1 <= dims[1] <= MAX_IDX_SIDE and 1 <= dims[2] <= MAX_IDX_SIDE) or size > MAX_IDX_BYTES:
                raise DataSourceError(f"{path}: the header declares an array of shape {tuple(dims)}, which is not a plausible image data set")
            body = f.read(size + 1)
    except (OSError, EOFError) as err:
        raise DataSourceError(f"cannot read IDX file {path}: {err}") from None
    if len(body) != size:
        raise DataSourceError(f"{path} is truncated or corrupt: its header declares shape {tuple(dims)} ({size} bytes), "
                              f"the file holds {'more' if len(body) > size else len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_hub(dataset_id: str, split: str, revision: str | None = None, config_name: str | None = None,
             streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """One split of a Hub dataset (`revision`: branch, tag or commit; `config_name`: one of its configurations), or its stream."""
    try:
        return datasets.load_dataset(dataset_id, name=config_name, split=split, revision=revision, streaming=streaming)
    except ValueError as err:
        message = str(err)
        if "config name is missing" in message.lower():
            configs = message.split("available configs:")[-1].split("\n")[0].strip()
            raise DataSourceError(f"{dataset_id} has several configurations: set data.config_name to one of {configs}") from None
        if config_name and config_name in message and "config" in message.lower():
            raise DataSourceError(f"{dataset_id} has no configuration {config_name!r}: {message.splitlines()[0]}") from None
        if "split" in message.lower():
            raise DataSourceError(f"{dataset_id} has no split {split!r}: {message.splitlines()[0]}") from None
        raise _offline_error(dataset_id, err) from None
    except Exception as err:  # connection errors come in many types, depending on the installed HTTP stack
        raise _offline_error(dataset_id, err) from None


def _offline_error(dataset_id: str, err: Exception) -> DataSourceError:
    return DataSourceError(
        f"could not load {dataset_id!r} from the Hugging Face Hub ({type(err).__name__}: {str(err)[:200]}).\n"
        "To work offline, point genkit at local files:\n"
        "  data.data_dir=/path/to/folder  with MNIST-format IDX files (train-images-idx3-ubyte.gz, t10k-..., labels),\n"
        "  or data.source=/path/to/images  an imagefolder (one sub-folder per class), a .parquet file or folder,\n"
        "  or a folder written by Dataset.save_to_disk. The environment variable GENKIT_DATA_DIR=/path is searched\n"
        "  for mnist/ and fashion_mnist/ sub-folders."
    )


def _load_local(path: Path, split: str) -> datasets.Dataset:
    if path.is_file() and path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
    if not path.is_dir():
        raise DataSourceError(f"{path} is not a folder or a .parquet file")
    if _find_idx(path, split):
        return read_idx_folder(path, split)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataSourceError(f"{path} has splits {list(loaded)}, not {split!r}")
            return loaded[split]
        return loaded
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        chosen = [str(p) for p in parquet if split in p.name] or ([str(p) for p in parquet] if split == "train" else [])
        if not chosen:
            raise DataSourceError(f"no parquet file for split {split!r} in {path} (file names should contain the split name)")
        return datasets.load_dataset("parquet", data_files={split: chosen}, split=split)
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*")):
        has_splits = (path / "train").is_dir()
        if has_splits and not (path / split).is_dir():
            raise DataSourceError(f"imagefolder {path} has no {split!r} sub-folder (no such split)")
        if not has_splits and split != "train":
            raise DataSourceError(f"imagefolder {path} has no split sub-folders, only 'train' is available")
        return _scan_imagefolder(path / split if has_splits else path) or datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    raise DataSourceError(f"{path} holds no images, IDX files, parquet files or saved dataset")


def _scan_imagefolder(root: Path) -> datasets.Dataset | None:
    """The plain layout, root/<class>/<image>, listed directly (datasets' builder takes minutes at a million files).

    Labels are the sorted names of the images' parent folders, as datasets' imagefolder names them. None when the folder
    holds anything else (metadata files, images at several depths): then datasets' own loader handles it.
    """
    paths, classes = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                return None
            paths.append(os.path.join(folder, name))
            classes.append(os.path.relpath(folder, root))
    names = sorted(set(classes))
    if not paths or "." in names or any(os.sep in c for c in names):
        return None
    index = {c: i for i, c in enumerate(names)}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths], "label": [index[c] for c in classes]}, features=features)


def _standardize(ds: datasets.Dataset, names: list[str] | None = None) -> datasets.Dataset:
    """Rename to the shared schema: `image` (Image) and `label` (ClassLabel with names)."""
    image_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None:
        raise DataSourceError(f"dataset has no image column; columns: {list(ds.features)}")
    label_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or next((c for c in ["label", "labels", "class", "target"] if c in ds.features), None)
    ds = ds.select_columns([c for c in [image_col, label_col] if c])
    if image_col != "image":
        ds = ds.rename_column(image_col, "image")
    if label_col is None:
        return ds.add_column("label", [0] * len(ds)).cast_column("label", datasets.ClassLabel(names=["unlabeled"]))
    if label_col != "label":
        ds = ds.rename_column(label_col, "label")
    if not isinstance(ds.features["label"], datasets.ClassLabel):
        values = ds["label"]
        if not all(isinstance(v, (int, np.integer)) for v in values[:100]):
            ds = ds.class_encode_column("label")
        else:
            ds = ds.cast_column("label", datasets.ClassLabel(names=names or [str(i) for i in range(max(values) + 1)]))
    elif names and ds.features["label"].num_classes == len(names):
        ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    return ds
