"""Streamed Hub splits (`data.streaming`): decoded batch by batch straight into a cache entry, stopping at `subset`.

A stream has no fingerprint of the whole split, so its cache entry is keyed by (id, commit, config, split, subset,
options): the commit the revision resolves to when the Hub answers, else the revision as written (a pointer file
remembers which commit the last stream of that revision had, so an offline run finds the entry an online one made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..config import DataConfig
from .decode import DECODE_BATCH, _decode_rows
from .sources import DataSourceError, load_hub


def resolve_commit(dataset_id: str, revision: str | None) -> str | None:
    """The commit `revision` (default: the main branch) of a Hub dataset points at now; None when the Hub cannot say."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset_id, revision=revision).sha
    except Exception:  # offline, no such repo, or no permission: the stream itself will say which
        return None


def stream_version(dataset_id: str, revision: str | None, pointer: Path) -> str:
    """The version part of a streamed split's cache key: the resolved commit, else the one last seen for this revision."""
    commit = resolve_commit(dataset_id, revision)
    if commit:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(commit)
        return commit
    return pointer.read_text().strip() if pointer.is_file() else f"revision:{revision or 'default'}"


def write_stream(path: Path, cfg: DataConfig, dataset_id: str, split: str, subset: int | None,
                 names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Stream a Hub split, decode it batch by batch into the array file `path`; return its labels and class names."""
    ds = load_hub(dataset_id, split, cfg.revision, cfg.config_name, streaming=True)
    image_col, label_col, label_names = _columns(ds)
    ds = ds.select_columns([c for c in [image_col, label_col] if c]).cast_column(image_col, datasets.Image(decode=False))
    excluded = set(cfg.exclude_labels)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    labels: list[Any] = []
    with open(path, "wb") as f:
        header_length = _write_header(f, 0, shape)
        for batch in ds.iter(batch_size=DECODE_BATCH):
            values = batch[label_col] if label_col else [0] * len(batch[image_col])
            if excluded and any(isinstance(v, str) for v in values):
                raise DataSourceError(f"{dataset_id}: data.exclude_labels takes class numbers, but this stream's labels are names")
            keep = [i for i, v in enumerate(values) if v not in excluded][: None if subset is None else subset - len(labels)]
            f.write(_decode_rows([batch[image_col][i] for i in keep], len(labels), cfg.image_size, cfg.channels, cfg.resize).tobytes())
            labels += [values[i] for i in keep]
            if subset is not None and len(labels) >= subset:
                break  # the rest of the split is never fetched
        f.seek(0)
        if _write_header(f, len(labels), shape) != header_length:  # numpy leaves room to grow the first axis in place
            raise RuntimeError("numpy's .npy header changed length while growing")
    if not labels:
        raise DataSourceError(f"split {split!r} of {dataset_id!r} is empty after subset/exclude_labels")
    return _encode_labels(labels, names or label_names, label_col is None)


def _columns(ds: datasets.IterableDataset) -> tuple[str, str | None, list[str] | None]:
    """The image column, the label column (or None) and its class names when the features declare them."""
    features = ds.features or ds._resolve_features().features
    image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None:
        raise DataSourceError(f"dataset has no image column; columns: {list(features)}")
    label_col = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or next((c for c in ["label", "labels", "class", "target"] if c in features), None)
    feature = features.get(label_col) if label_col else None
    return image_col, label_col, list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _encode_labels(labels: list[Any], names: list[str] | None, unlabeled: bool) -> tuple[np.ndarray, list[str]]:
    """Integer labels and class names, as the non-streamed path names them (strings: sorted, as class_encode_column does)."""
    if unlabeled:
        return np.zeros(len(labels), dtype=np.int64), ["unlabeled"]
    if all(isinstance(v, (int, np.integer)) for v in labels):
        values = np.asarray(labels, dtype=np.int64)
        return values, names or [str(i) for i in range(int(values.max()) + 1)]
    classes = sorted({str(v) for v in labels})
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[str(v)] for v in labels], dtype=np.int64), classes


def _write_header(f, rows: int, shape: tuple[int, int, int]) -> int:
    """Write the .npy header of a uint8 array (rows, *shape) at the file's position; return its length."""
    start = f.tell()
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (rows, *shape)})
    return f.tell() - start
