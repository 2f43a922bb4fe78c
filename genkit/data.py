"""Image data on `datasets`: one loader for MNIST, Fashion-MNIST, Hub ids and local files, then in-memory tensors.

Every source is turned into a `datasets.Dataset` with the same schema (`image`: Image, `label`: ClassLabel with
names). For training it is decoded once into a uint8 tensor (N, C, H, W) kept in memory, on the GPU when there is
one; batches are then made by indexing, with no per-sample PIL work in the training loop.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image as PILImage

from .config import DataConfig
from .corruption import corrupt

logger = logging.getLogger(__name__)

FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
BUILTIN = {  # name -> (Hub id, class names, folders searched for local IDX files)
    "mnist": ("ylecun/mnist", [str(i) for i in range(10)], []),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", FASHION_MNIST_NAMES, ["/usr/share/datasets/fashion-mnist"]),
}
IDX_PREFIX = {"train": "train", "test": "t10k"}
CACHE_VERSION = 1  # bump when the decoding changes
MAX_IDX_SIDE = 4096  # pixels per side of an IDX image
MAX_IDX_BYTES = 2**34  # 16 GiB: beyond any IDX data set, far below what a crafted header can claim
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataSourceError(ValueError):
    """A data source cannot be found, read or understood."""


# ---- sources -> datasets.Dataset ---------------------------------------------------------------------


def load_image_dataset(source: str, split: str = "train", data_dir: str | None = None) -> datasets.Dataset:
    """Load one split of any supported source as a Dataset with columns `image` (Image) and `label` (ClassLabel)."""
    name = source.lower().replace("-", "_")
    if name in BUILTIN:
        hub_id, names, _ = BUILTIN[name]
        folder = locate_idx(name, split, data_dir)
        if folder:
            return read_idx_folder(folder, split, names)
        return _standardize(_load_hub(hub_id, split), names)
    path = Path(source).expanduser()
    if path.exists():
        return _standardize(_load_local(path, split))
    if source.startswith((".", "/", "~")) or os.sep in source and source.count("/") != 1:
        raise DataSourceError(f"data source {source!r} does not exist")
    return _standardize(_load_hub(source, split))


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


def _load_hub(dataset_id: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(dataset_id, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise DataSourceError(f"{dataset_id} has no split {split!r}: {err}") from None
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
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    raise DataSourceError(f"{path} holds no images, IDX files, parquet files or saved dataset")


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


# ---- datasets.Dataset -> in-memory tensors --------------------------------------------------------------


@dataclass
class ImageTensors:
    """A whole split decoded once: uint8 images (N, C, H, W), int64 labels and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> "ImageTensors":
        """Move images and labels to `device`."""
        return ImageTensors(self.images.to(device), self.labels.to(device), self.class_names)

    def select(self, index: torch.Tensor) -> "ImageTensors":
        """The subset at `index`."""
        return ImageTensors(self.images[index], self.labels[index], self.class_names)


def to_tensors(ds: datasets.Dataset, image_size: int, channels: int = 1, resize: str = "pad", chunk: int = 2000) -> ImageTensors:
    """Decode every image once (PIL, here only) into a uint8 tensor of the requested size and channels."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(ds), image_size, image_size, channels), dtype=np.uint8)
    for start in range(0, len(ds), chunk):
        try:
            rows = ds[start : start + chunk]["image"]
            for i, img in enumerate(rows):
                out[start + i] = _fit(img, mode, image_size, resize).reshape(image_size, image_size, channels)
        except Exception as err:  # PIL raises many types for a broken file; name the file instead of a traceback
            raise DataSourceError(f"cannot read image {_unreadable(ds, start, start + chunk)}: {type(err).__name__}: {err}. "
                                  "Remove or replace that file") from None
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(ds["label"], dtype=torch.int64)
    return ImageTensors(images, labels, list(ds.features["label"].names))


def _unreadable(ds: datasets.Dataset, start: int, stop: int) -> str:
    """The file name (or row number) of the first image in rows [start, stop) that PIL cannot decode."""
    raw = ds.select(range(start, min(stop, len(ds)))).cast_column("image", datasets.Image(decode=False))
    for i, item in enumerate(raw["image"]):
        try:
            with PILImage.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as img:
                img.load()
        except Exception:
            return repr(item.get("path") or f"row {start + i}")
    return f"in rows {start}-{stop - 1}"


def _fit(img: PILImage.Image, mode: str, size: int, resize: str) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "P"):  # flatten transparency onto black, the background of MNIST-like data
        img = img.convert("RGBA")
        background = PILImage.new("RGBA", img.size, (0, 0, 0, 255))
        img = PILImage.alpha_composite(background, img)
    img = img.convert(mode)
    w, h = img.size
    if resize == "pad" and w <= size and h <= size:
        arr = np.asarray(img)
        if (w, h) == (size, size):
            return arr
        top, left = (size - h) // 2, (size - w) // 2
        padded = np.zeros((size, size) + arr.shape[2:], dtype=np.uint8)
        padded[top : top + h, left : left + w] = arr
        return padded
    return np.asarray(img.resize((size, size), PILImage.BILINEAR))


def cache_dir() -> Path:
    """genkit's cache ($GENKIT_CACHE, else ~/.cache/genkit): decoded splits and evaluation classifiers."""
    return Path(os.environ.get("GENKIT_CACHE", Path.home() / ".cache" / "genkit"))


def _local_files(cfg: DataConfig, split: str) -> list[Path] | None:
    """The local files a split is read from (None for Hub sources, which are not cached here)."""
    name = cfg.source.lower().replace("-", "_")
    if name in BUILTIN:
        folder = locate_idx(name, split, cfg.data_dir)
        return list(_find_idx(folder, split)) if folder else None
    path = Path(cfg.source).expanduser()
    if not path.exists():
        return None
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _cache_path(cfg: DataConfig, split: str, subset: int | None) -> Path | None:
    files = _local_files(cfg, split)
    if not files:
        return None
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = json.dumps([cfg.source, stamp, split, subset, cfg.image_size, cfg.resize, cfg.channels, sorted(cfg.exclude_labels), CACHE_VERSION])
    return cache_dir() / "tensors" / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"


def load_split(cfg: DataConfig, split: str, subset: int | None = None) -> ImageTensors:
    """Load, subset, filter and decode one split according to `cfg` (local sources: decoded once, then cached)."""
    cached = _cache_path(cfg, split, subset)
    if cached is not None and cached.is_file():
        try:
            return ImageTensors(**torch.load(cached, weights_only=True))
        except Exception:  # a damaged cache entry is rebuilt, never fatal
            logger.warning("ignoring unreadable cache entry %s", cached)
    data = _decode_split(cfg, split, subset)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"images": data.images, "labels": data.labels, "class_names": data.class_names}, tmp)
        tmp.replace(cached)  # atomic: concurrent processes never read a half-written file
    return data


def _decode_split(cfg: DataConfig, split: str, subset: int | None) -> ImageTensors:
    ds = load_image_dataset(cfg.source, split, cfg.data_dir)
    if cfg.exclude_labels:
        excluded = set(cfg.exclude_labels)
        ds = ds.filter(lambda labels: [lab not in excluded for lab in labels], input_columns="label", batched=True)
    if subset is not None:
        ds = ds.select(range(min(subset, len(ds))))
    if len(ds) == 0:
        raise DataSourceError(f"split {split!r} of {cfg.source!r} is empty after subset/exclude_labels")
    return to_tensors(ds, cfg.image_size, cfg.channels, cfg.resize)


def load_train_eval(cfg: DataConfig, seed: int = 0) -> tuple[ImageTensors, ImageTensors]:
    """The training split and an evaluation split (the named one, or a seeded hold-out of the training split)."""
    train = load_split(cfg, cfg.split, cfg.subset)
    if cfg.eval_split:
        try:
            return train, load_split(cfg, cfg.eval_split, cfg.eval_subset)
        except DataSourceError as err:
            if "split" not in str(err):
                raise
            logger.warning("no %r split (%s); holding out %.0f%% of %r for evaluation", cfg.eval_split, err, 100 * cfg.eval_fraction, cfg.split)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_eval = max(1, int(len(train) * cfg.eval_fraction))
    if len(train) - n_eval < 1:
        raise DataSourceError(f"only {len(train)} training images: too few to hold some out for evaluation")
    eval_idx = order[:n_eval][: cfg.eval_subset] if cfg.eval_subset else order[:n_eval]
    return train.select(order[n_eval:].sort().values), train.select(eval_idx.sort().values)


# ---- batches --------------------------------------------------------------------------------------------


def to_model_range(images: torch.Tensor, value_range: str) -> torch.Tensor:
    """uint8 [0, 255] -> float in [0, 1] or [-1, 1]."""
    x = images.float() / 255.0
    return x * 2 - 1 if value_range == "-1,1" else x


def to_unit_range(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """Model range -> [0, 1] (for images, grids and metrics)."""
    return ((x + 1) / 2).clamp(0, 1) if value_range == "-1,1" else x.clamp(0, 1)


def make_batch(data: ImageTensors, index: torch.Tensor, cfg: DataConfig, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A training batch: `image` (clean, model range), `input` (corrupted when configured) and `label`."""
    index = index.to(data.images.device)
    clean01 = data.images[index].float() / 255.0
    image = clean01 * 2 - 1 if cfg.value_range == "-1,1" else clean01
    batch = {"image": image, "label": data.labels[index]}
    if cfg.corruption:
        noisy01 = corrupt(clean01, cfg.corruption, cfg.corruption_level, generator)
        batch["input"] = noisy01 * 2 - 1 if cfg.value_range == "-1,1" else noisy01
    else:
        batch["input"] = image
    return batch


class ShardedBatches:
    """Seeded, epoch-shuffled batch indices addressed by step, so a resumed run continues exactly.

    Every process draws the same permutation and takes its own slice of each global batch (drop_last keeps
    the processes in step).
    """

    def __init__(self, n: int, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.per_epoch = n // (batch_size * num_processes)
        if self.per_epoch == 0:
            raise DataSourceError(f"{n} training images are fewer than one global batch ({batch_size} x {num_processes} processes); lower batch_size")
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        """Indices of this process's share of micro-batch number `step`."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        start = (i * self.num_processes + self.process_index) * self.batch_size
        return self._perm[start : start + self.batch_size]
