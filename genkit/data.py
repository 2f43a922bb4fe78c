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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image as PILImage
from PIL import PngImagePlugin

from .config import DataConfig
from .corruption import corrupt

logger = logging.getLogger(__name__)

FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
BUILTIN = {  # name -> (Hub id, class names, folders searched for local IDX files)
    "mnist": ("ylecun/mnist", [str(i) for i in range(10)], []),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", FASHION_MNIST_NAMES, ["/usr/share/datasets/fashion-mnist"]),
}
IDX_PREFIX = {"train": "train", "test": "t10k"}
CACHE_VERSION = 2  # bump when the decoding changes
MAX_IDX_SIDE = 4096  # pixels per side of an IDX image
MAX_IDX_BYTES = 2**34  # 16 GiB: beyond any IDX data set, far below what a crafted header can claim
DECODE_BATCH = 1000  # images per datasets.map batch in the parallel decode
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


# ---- datasets.Dataset -> uint8 tensors, decoded once into a memory-mapped cache ----------------------------


@dataclass
class ImageTensors:
    """A decoded split: uint8 images (N, C, H, W), int64 labels and the class names.

    `images` is either in memory (small splits, on the GPU when there is one) or, with `mapped`, memory-mapped from
    the decode cache (large splits: pages are read as batches touch them, shared by every process on the node).
    `rows`, when set, makes this a lazy subset (`view`), so the training part of a held-out split copies no pixels.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mapped: bool = False
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.images)

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at `index` (positions within this split or subset)."""
        if self.rows is not None:
            index = self.rows[index.cpu()]
        index = index.to(self.images.device)
        return self.images[index], self.labels[index.to(self.labels.device)]

    def select(self, index: torch.Tensor) -> "ImageTensors":
        """A copy of the subset at `index`, in memory."""
        images, labels = self.take(index)
        return ImageTensors(images, labels, self.class_names)

    def view(self, index: torch.Tensor) -> "ImageTensors":
        """The subset at `index` as a lazy view: no pixel is copied (a 99 % training part of a split costs an index)."""
        rows = index.cpu() if self.rows is None else self.rows[index.cpu()]
        return ImageTensors(self.images, self.labels, self.class_names, self.mapped, rows)

    def in_memory(self) -> "ImageTensors":
        """The same data read whole into memory."""
        if not self.mapped and self.rows is None:
            return self
        images, labels = self.take(torch.arange(len(self)))
        return ImageTensors(images.clone(), labels.clone(), self.class_names)

    def to(self, device: torch.device | str) -> "ImageTensors":
        """Move images and labels to `device` (a memory-mapped split stays mapped on the CPU)."""
        if torch.device(device).type == "cpu" and (self.mapped or self.rows is not None):
            return self
        data = self.in_memory()
        return ImageTensors(data.images.to(device), data.labels.to(device), self.class_names)


MEMORY_LIMIT_BYTES = 2 * 2**30  # storage "auto": splits up to 2 GiB of pixels are held in (accelerator) memory


def to_tensors(ds: datasets.Dataset, image_size: int, channels: int = 1, resize: str = "pad", chunk: int = 2000) -> ImageTensors:
    """Decode every image once, in this process, into an in-memory uint8 tensor of the requested size and channels."""
    out = np.empty((len(ds), channels, image_size, image_size), dtype=np.uint8)
    raw = _undecoded(ds)
    for start in range(0, len(ds), chunk):
        rows = raw[start : start + chunk]["image"]
        out[start : start + len(rows)] = _decode_rows(rows, start, image_size, channels, resize)
    return ImageTensors(torch.from_numpy(out), torch.tensor(ds["label"], dtype=torch.int64), list(ds.features["label"].names))


def _undecoded(ds: datasets.Dataset) -> datasets.Dataset:
    """The image column as raw bytes/paths: genkit decodes itself, so a broken file can be named."""
    return ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))


def _decode_rows(rows: list[dict[str, Any]], start: int, size: int, channels: int, resize: str) -> np.ndarray:
    """Undecoded image cells -> uint8 array (n, C, size, size)."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(rows), channels, size, size), dtype=np.uint8)
    for i, item in enumerate(rows):
        try:
            with _open_image(item) as img:
                if resize == "resize" and img.format == "JPEG":
                    img.draft(mode, (size, size))  # let the JPEG decoder downscale: far less work for large photos
                out[i] = _fit(img, mode, size, resize).reshape(size, size, channels).transpose(2, 0, 1)
        except Exception as err:  # PIL raises many types for a broken file; name the file instead of a traceback
            name = repr(item.get("path") or f"row {start + i}")
            raise DataSourceError(f"cannot read image {name}: {type(err).__name__}: {err}. Remove or replace that file") from None
    return out


def _open_image(item: dict[str, Any]) -> PILImage.Image:
    """A PIL image from an undecoded cell (bytes or a path); PNGs skip PIL's format probing, ~15 % of a small PNG's cost."""
    data = item.get("bytes")
    if data is None:
        with open(item["path"], "rb") as f:
            data = f.read()
    if data[:8] == PNG_SIGNATURE:
        return PngImagePlugin.PngImageFile(io.BytesIO(data))
    return PILImage.open(io.BytesIO(data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_into(batch: dict[str, list], indices: list[int], path: str, size: int, channels: int, resize: str) -> None:
    """`datasets.map` worker: decode a batch and write it into the cache's memory map at its row numbers."""
    out = np.load(path, mmap_mode="r+")
    out[indices[0] : indices[-1] + 1] = _decode_rows(batch["image"], indices[0], size, channels, resize)
    out.flush()
def _fit(img: PILImage.Image, mode: str, size: int, resize: str) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "P"):  # flatten transparency onto black, the background of MNIST-like data
        img = img.convert("RGBA")
        background = PILImage.new("RGBA", img.size, (0, 0, 0, 255))
        img = PILImage.alpha_composite(background, img)
    if img.mode != mode:
        img = img.convert(mode)
    w, h = img.size
    if resize == "pad" and w <= size and h <= size:
        return _pad(np.asarray(img), size)
    return np.asarray(img.resize((size, size), PILImage.BILINEAR))


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre an (h, w[, c]) image on a black size x size canvas."""
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return arr
    top, left = (size - h) // 2, (size - w) // 2
    padded = np.zeros((size, size) + arr.shape[2:], dtype=np.uint8)
    padded[top : top + h, left : left + w] = arr
    return padded


def cache_dir() -> Path:
    """genkit's cache ($GENKIT_CACHE, else ~/.cache/genkit): decoded splits and evaluation classifiers."""
    return Path(os.environ.get("GENKIT_CACHE", Path.home() / ".cache" / "genkit"))


def _local_stamp(cfg: DataConfig, split: str) -> str | None:
    """A digest of the local files a split is read from (paths, sizes, modification times); None for Hub sources.

    One `stat` per file and no path resolution, so a million-file imagefolder is stamped in seconds.
    """
    name = cfg.source.lower().replace("-", "_")
    if name in BUILTIN:
        folder = locate_idx(name, split, cfg.data_dir)
        if not folder:
            return None
        root, files = folder.resolve(), [p.name for p in _find_idx(folder, split)]
    else:
        path = Path(cfg.source).expanduser()
        if not path.exists():
            return None
        root = path.resolve()
        files = [root.name] if root.is_file() else None
        root = root.parent if root.is_file() else root
    digest = hashlib.sha1(str(root).encode())
    if files is None:
        files = sorted(os.path.relpath(os.path.join(folder, f), root) for folder, _, names in os.walk(root) for f in names)
    for relative in files:
        st = os.stat(os.path.join(root, relative))
        digest.update(f"{relative}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_split(cfg: DataConfig, split: str, subset: int | None = None) -> ImageTensors:
    """One split, subset and filtered as `cfg` says, decoded once into the cache, then read from it.

    The cache entry is keyed by the source (local files by path, size and time; Hub datasets by their fingerprint)
    and every option that changes the pixels, so any process on the node, in any later run, reuses it.
    """
    stamp = _local_stamp(cfg, split)
    ds = None
    if stamp is None:  # a Hub dataset: its fingerprint says which version the local copy is
        ds = load_image_dataset(cfg.source, split, cfg.data_dir)
        stamp = ds._fingerprint
    key = json.dumps([cfg.source, stamp, split, subset, cfg.image_size, cfg.resize, cfg.channels, sorted(cfg.exclude_labels), CACHE_VERSION])
    entry = cache_dir() / "decoded" / hashlib.sha1(key.encode()).hexdigest()
    if (entry / "meta.json").is_file():
        try:
            return _open_entry(entry, cfg.storage)
        except Exception:  # a damaged entry is rebuilt, never fatal
            logger.warning("rebuilding unreadable cache entry %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
    _write_entry(entry, cfg, split, subset, ds)
    return _open_entry(entry, cfg.storage)


def _write_entry(entry: Path, cfg: DataConfig, split: str, subset: int | None, ds: datasets.Dataset | None) -> None:
    """Decode the split into a temporary folder, then rename it into place (concurrent writers never clash)."""
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        idx = None if ds is not None else _idx_arrays(cfg, split)
        if idx is not None:  # MNIST-format files are already pixel arrays: no image codec involved
            images, labels, names = _select(cfg, subset, *idx)
            out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(images), cfg.channels, cfg.image_size, cfg.image_size))
            for start in range(0, len(images), 10_000):
                out[start : start + 10_000] = _fit_arrays(images[start : start + 10_000], cfg)
            out.flush()
            del out
        else:
            ds = _filtered(ds if ds is not None else load_image_dataset(cfg.source, split, cfg.data_dir), cfg, split, subset)
            labels, names = np.asarray(ds["label"], dtype=np.int64), list(ds.features["label"].names)
            np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(ds), cfg.channels, cfg.image_size, cfg.image_size))
            _decode_parallel(ds, str(tmp / "images.npy"), cfg)
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps({"class_names": names, "source": cfg.source, "split": split, "subset": subset}))
        try:
            tmp.rename(entry)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open_entry(entry: Path, storage: str) -> ImageTensors:
    """A cache entry as ImageTensors: read whole when small (or asked), memory-mapped otherwise."""
    images = np.load(entry / "images.npy", mmap_mode="c")  # copy-on-write: the tensor is writable, the file never written
    labels = torch.from_numpy(np.load(entry / "labels.npy"))
    names = json.loads((entry / "meta.json").read_text())["class_names"]
    if storage == "memory" or storage == "auto" and images.nbytes <= MEMORY_LIMIT_BYTES:
        return ImageTensors(torch.from_numpy(np.array(images)), labels, names)
    return ImageTensors(torch.from_numpy(images), labels, names, mapped=True)


def _filtered(ds: datasets.Dataset, cfg: DataConfig, split: str, subset: int | None) -> datasets.Dataset:
    if cfg.exclude_labels:
        excluded = set(cfg.exclude_labels)
        ds = ds.filter(lambda labels: [lab not in excluded for lab in labels], input_columns="label", batched=True)
    if subset is not None:
        ds = ds.select(range(min(subset, len(ds))))
    if len(ds) == 0:
        raise DataSourceError(f"split {split!r} of {cfg.source!r} is empty after subset/exclude_labels")
    return ds


def _idx_arrays(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Images (N, H, W), labels and class names of a split stored as IDX files, else None."""
    name = cfg.source.lower().replace("-", "_")
    folder = locate_idx(name, split, cfg.data_dir) if name in BUILTIN else Path(cfg.source).expanduser()
    found = _find_idx(folder, split) if folder and folder.is_dir() else None
    if not found:
        return None
    images, labels = (_read_idx(p) for p in found)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(labels) == 0:
        raise DataSourceError(f"IDX files in {folder} do not hold images (N,H,W) with matching labels: {images.shape} vs {labels.shape}")
    names = BUILTIN[name][1] if name in BUILTIN else [str(i) for i in range(int(labels.max()) + 1)]
    return images, labels.astype(np.int64), names


def _select(cfg: DataConfig, subset: int | None, images: np.ndarray, labels: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    keep = ~np.isin(labels, cfg.exclude_labels) if cfg.exclude_labels else slice(None)
    images, labels = images[keep][:subset], labels[keep][:subset]
    if len(labels) == 0:
        raise DataSourceError(f"{cfg.source!r} is empty after subset/exclude_labels")
    return images, labels, names


def _fit_arrays(images: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Grey (n, h, w) arrays -> (n, C, size, size): padded with numpy, resized or coloured through PIL."""
    if cfg.channels == 1 and (cfg.resize == "pad" and max(images.shape[1:]) <= cfg.image_size):
        return np.stack([_pad(a, cfg.image_size) for a in images])[:, None]
    mode = "L" if cfg.channels == 1 else "RGB"
    return np.stack([_fit(PILImage.fromarray(a), mode, cfg.image_size, cfg.resize).reshape(cfg.image_size, cfg.image_size, cfg.channels)
                     for a in images]).transpose(0, 3, 1, 2)


def _decode_parallel(ds: datasets.Dataset, path: str, cfg: DataConfig) -> None:
    """Decode every image into the memory map at `path`, in `cfg.decode_workers` processes (default: all cores)."""
    workers = cfg.decode_workers or min(os.cpu_count() or 1, 16)
    workers = min(workers, max(1, len(ds) // DECODE_BATCH))  # a process per thousand images at least, or start-up dominates
    kwargs = {"path": path, "size": cfg.image_size, "channels": cfg.channels, "resize": cfg.resize}
    _undecoded(ds).map(_decode_into, batched=True, batch_size=DECODE_BATCH, with_indices=True, fn_kwargs=kwargs,
                       num_proc=workers if workers > 1 else None, load_from_cache_file=False, desc=f"decoding {len(ds):,} images")


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
    return train.view(order[n_eval:].sort().values), train.select(eval_idx.sort().values)


# ---- batches --------------------------------------------------------------------------------------------


def to_model_range(images: torch.Tensor, value_range: str) -> torch.Tensor:
    """uint8 [0, 255] -> float in [0, 1] or [-1, 1]."""
    x = images.float() / 255.0
    return x * 2 - 1 if value_range == "-1,1" else x


def to_unit_range(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """Model range -> [0, 1] (for images, grids and metrics)."""
    return ((x + 1) / 2).clamp(0, 1) if value_range == "-1,1" else x.clamp(0, 1)


def make_batch(data: ImageTensors, index: torch.Tensor, cfg: DataConfig, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, augment: bool = False) -> dict[str, torch.Tensor]:
    """A batch on `device`: `image` (clean, model range), `input` (corrupted when configured) and `label`.

    `augment` applies the training-time augmentation (`data.hflip`); evaluation batches leave it off.
    """
    images, labels = data.take(index)
    if device is not None and images.device != torch.device(device):  # a memory-mapped split: only the batch travels
        pin = torch.device(device).type == "cuda"
        images = (images.pin_memory() if pin else images).to(device, non_blocking=pin)
        labels = labels.to(device, non_blocking=pin)
    clean01 = images.float() / 255.0
    if cfg.binarize == "dynamic" and augment:  # a fresh draw every time an image is seen (Salakhutdinov & Murray's MNIST)
        clean01 = torch.bernoulli(clean01, generator=generator)
    elif cfg.binarize != "none":  # "fixed", and evaluation batches of "dynamic": one draw per image, forever
        clean01 = binarize_fixed(clean01, index.to(clean01.device))
    if augment and cfg.hflip:
        flip = torch.rand(len(clean01), generator=generator, device=generator.device if generator else "cpu") < 0.5
        clean01 = torch.where(flip.to(clean01.device)[:, None, None, None], clean01.flip(-1), clean01)
    image = clean01 * 2 - 1 if cfg.value_range == "-1,1" else clean01
    batch = {"image": image, "label": labels}
    if cfg.corruption:
        noisy01 = corrupt(clean01, cfg.corruption, cfg.corruption_level, generator)
        batch["input"] = noisy01 * 2 - 1 if cfg.value_range == "-1,1" else noisy01
    else:
        batch["input"] = image
    return batch


def binarize_fixed(images01: torch.Tensor, rows: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One Bernoulli draw per pixel that depends only on (seed, row, pixel): the same binary image in every batch.

    The uniform numbers come from a counter-based hash (splitmix64's finaliser), so no generator state or stored copy
    of the binarised set is needed, whatever the batch composition or storage.
    """
    n = images01[0].numel()
    x = (rows.long()[:, None] * n + torch.arange(n, device=rows.device)[None] + seed * 0x632BE59BD9B4E019) & 0x7FFFFFFFFFFFFFFF
    for shift, multiplier in [(30, 0x3F58476D1CE4E5B9), (27, 0x14D049BB133111EB)]:
        x = ((x ^ (x >> shift)) * multiplier) & 0x7FFFFFFFFFFFFFFF
    uniform = ((x ^ (x >> 31)) & 0xFFFFFF).float() / 2**24
    return (uniform.view(images01.shape) < images01).float()


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
