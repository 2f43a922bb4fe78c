"""The decode cache: each split decoded once per node into `images.npy` + `labels.npy` + `meta.json`, then memory-mapped.

An entry is keyed by the source (local files by path, size and time; Hub datasets by their fingerprint, streamed Hub
splits by their commit), its revision and configuration, and every option that changes the pixels, so any process on
the node, in any later run, reuses it. An entry whose parts disagree (rows of images, labels and meta.json) is rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import psutil
import torch

from ..config import DataConfig
from .decode import _decode_parallel, _fit_arrays
from .sources import BUILTIN, DataSourceError, DecodeInterrupted, _find_idx, _read_idx, hub_source, load_image_dataset, locate_idx
from .stream import stream_version, write_stream
from .tensors import ImageTensors

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the decoding changes
MEMORY_LIMIT_BYTES = 2 * 2**30  # storage "auto": splits up to 2 GiB of pixels are held in (accelerator) memory


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

    The cache entry is keyed by the source (local files by path, size and time; Hub datasets by their fingerprint,
    streamed ones by their commit, see `stream`), its revision and configuration, and every option that changes the
    pixels, so any process on the node, in any later run, reuses it.
    """
    stamp = _local_stamp(cfg, split)
    ds = None
    if stamp is None and cfg.streaming:  # no whole split to fingerprint: the commit names the version
        hub_id = hub_source(cfg.source, split, cfg.data_dir)[0]
        pointer = cache_dir() / "decoded" / "streams" / hashlib.sha1(json.dumps([hub_id, cfg.revision, cfg.config_name]).encode()).hexdigest()
        stamp = f"stream:{stream_version(hub_id, cfg.revision, pointer)}"
    elif stamp is None:  # a Hub dataset: its fingerprint says which version the local copy is
        ds = load_image_dataset(cfg.source, split, cfg.data_dir, cfg.revision, cfg.config_name)
        stamp = ds._fingerprint
    key = json.dumps([cfg.source, stamp, cfg.revision, cfg.config_name, split, subset, cfg.image_size, cfg.resize, cfg.channels,
                      sorted(cfg.exclude_labels), CACHE_VERSION])
    entry = cache_dir() / "decoded" / hashlib.sha1(key.encode()).hexdigest()
    if (entry / "meta.json").is_file():
        try:
            return _open_entry(entry, cfg.storage, (cfg.channels, cfg.image_size, cfg.image_size))
        except DataSourceError:
            raise
        except Exception as err:  # a damaged entry is rebuilt, never fatal
            logger.warning("rebuilding damaged cache entry %s (%s)", entry, err)
            shutil.rmtree(entry, ignore_errors=True)
    _write_entry(entry, cfg, split, subset, ds)
    return _open_entry(entry, cfg.storage)


def _write_entry(entry: Path, cfg: DataConfig, split: str, subset: int | None, ds: datasets.Dataset | None) -> None:
    """Decode the split into a temporary folder, then rename it into place (concurrent writers never clash).

    Whatever stops the decode (a broken image, a full disk, Ctrl-C) removes the temporary folder: no half-written entry.
    """
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"source": cfg.source, "split": split, "subset": subset, "revision": cfg.revision, "config_name": cfg.config_name}
    try:
        hub = None if ds is not None else hub_source(cfg.source, split, cfg.data_dir)
        idx = None if ds is not None or hub is not None else _idx_arrays(cfg, split)
        if idx is not None:  # MNIST-format files are already pixel arrays: no image codec involved
            images, labels, names = _select(cfg, subset, *idx)
            out = _allocate(tmp / "images.npy", len(images), cfg)
            for start in range(0, len(images), 10_000):
                out[start : start + 10_000] = _fit_arrays(images[start : start + 10_000], cfg)
            out.flush()
            del out
        elif hub is not None and cfg.streaming:  # batch by batch from the stream; with subset, the rest is never fetched
            if subset is not None:
                _check_room(tmp, subset, cfg)
            labels, names = write_stream(tmp / "images.npy", cfg, hub[0], split, subset, hub[1])
            meta["streamed"] = True
        else:
            ds = _filtered(ds if ds is not None else load_image_dataset(cfg.source, split, cfg.data_dir, cfg.revision, cfg.config_name),
                           cfg, split, subset)
            labels, names = np.asarray(ds["label"], dtype=np.int64), list(ds.features["label"].names)
            _allocate(tmp / "images.npy", len(ds), cfg).flush()  # the workers write into it
            _decode_parallel(ds, str(tmp / "images.npy"), cfg)
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps({"class_names": names, "rows": len(labels), **meta}))
        try:
            tmp.rename(entry)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DecodeInterrupted(f"interrupted while decoding split {split!r} of {cfg.source!r}; nothing was cached, the next run decodes it again") from None
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise DataSourceError(f"the disk of the decode cache {tmp.parent} is full; free some space or point GENKIT_CACHE at a larger disk") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _allocate(path: Path, rows: int, cfg: DataConfig) -> np.memmap:
    """The entry's image array, after checking the disk can hold it (a sparse file would otherwise fail mid-training)."""
    _check_room(path.parent, rows, cfg)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, cfg.channels, cfg.image_size, cfg.image_size))


def _check_room(folder: Path, rows: int, cfg: DataConfig) -> None:
    need, free = rows * cfg.channels * cfg.image_size**2, shutil.disk_usage(folder).free
    if need > free:
        raise DataSourceError(f"decoding {rows:,} images at {cfg.image_size}x{cfg.image_size}x{cfg.channels} needs {_gib(need)} in the decode cache "
                              f"{folder.parent}, which has {_gib(free)} free; lower data.image_size or data.subset, or point GENKIT_CACHE at a larger disk")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _open_entry(entry: Path, storage: str, shape: tuple[int, int, int] | None = None) -> ImageTensors:
    """A cache entry as ImageTensors: read whole when small (or asked), memory-mapped otherwise.

    Rows of images, labels and meta.json must agree (and the image shape with `shape`): a ValueError says the entry
    is damaged, e.g. an images.npy cut short by a crash or a copy.
    """
    images = np.load(entry / "images.npy", mmap_mode="c")  # copy-on-write: the tensor is writable, the file never written
    labels = np.load(entry / "labels.npy")
    meta = json.loads((entry / "meta.json").read_text())
    rows = {len(images), len(labels), meta.get("rows", len(labels))}
    if images.ndim != 4 or labels.ndim != 1 or len(rows) != 1 or shape and images.shape[1:] != shape:
        raise ValueError(f"images {images.shape}, labels {labels.shape} and meta.json ({meta.get('rows')} rows) disagree")
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(meta["class_names"]):
        raise ValueError(f"labels outside the {len(meta['class_names'])} class names")
    if storage == "memory" or storage == "auto" and images.nbytes <= MEMORY_LIMIT_BYTES:
        available = psutil.virtual_memory().available
        if images.nbytes > available:
            raise DataSourceError(f"data.storage=memory: the split holds {_gib(images.nbytes)} of pixels, {_gib(available)} of memory is available; "
                                  "use data.storage=mmap (or auto), or a smaller data.image_size or data.subset")
        return ImageTensors(torch.from_numpy(np.array(images)), torch.from_numpy(labels), meta["class_names"])
    return ImageTensors(torch.from_numpy(images), torch.from_numpy(labels), meta["class_names"], mapped=True)


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
