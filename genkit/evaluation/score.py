"""`genkit score`: any images (a folder of PNGs, an .npz/.npy array, a `datasets` folder or Hub id) scored in genkit's space.

What pytorch-fid and clean-fid do for Inception, for genkit's shipped networks: the samples' features against those of
a reference (the MNIST or Fashion-MNIST test split, or another folder), giving FD, KID (unbiased), precision / recall /
density / coverage, class accuracy when the samples carry labels, and the two floors of the standard splits, with the
protocol beside them. Features of the standard splits are computed once and cached, keyed by the network's sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, DataConfig
from ..data import cache_dir, load_split
from ..data.sources import IMAGE_EXTENSIONS
from ..feature_nets import INPUT_SIZE, NETWORKS, extract, load_network, network_for
from ..progress import stage
from .distances import fd_kid
from .manifold import DENSITY_COVERAGE_K, PRECISION_RECALL_K, prdc
from .reference import REFERENCE_SEED, shuffled

STANDARD = {f"{name}-{split}": (source, split) for source, name in (("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")) for split in ("test", "train")}
ARRAY_KEYS = ("images", "x", "samples", "arr_0", "data")
LABEL_KEYS = ("labels", "label", "y", "classes")
REFERENCE_CACHE_VERSION = 1


def to_unit_images(array: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """An image array in any common layout and range -> float (N, C, H, W) in [0, 1].

    Layouts: (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4 (alpha dropped). Ranges: uint8 0-255; floats in
    [0, 1], or in [-1, 1] (a negative value is the sign), or 0-255 (a value above 1).
    """
    x = torch.as_tensor(np.asarray(array))
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or len(x) == 0:
        raise ConfigError(f"{what}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3, 4):
        raise ConfigError(f"{what}: cannot tell the channel axis of images shaped {tuple(x.shape)} (1, 3 or 4 channels expected)")
    x = x[:, :3]
    if x.dtype == torch.uint8:
        return x.float() / 255
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in (torch.int16, torch.int32, torch.int64)):
        raise ConfigError(f"{what}: images of dtype {x.dtype} are not supported (uint8 or float)")
    x = x.double()
    if not torch.isfinite(x).all():
        raise ConfigError(f"{what}: the images hold NaN or infinite values")
    low, high = x.min().item(), x.max().item()
    if low < -1e-3:
        x = (x + 1) / 2  # [-1, 1], the range most generators emit
    elif high > 1 + 1e-3:
        x = x / 255
    return x.float().clamp(0, 1)


def _read_png_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Every image under `folder` (sorted paths); labels from the sub-folder names when each image sits in a class folder."""
    from PIL import Image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ConfigError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB" if image.mode not in ("L", "LA", "P", "1", "I", "I;16") else "L")))
    rgb = any(a.ndim == 3 for a in arrays)
    arrays = [np.repeat(a[..., None], 3, 2) if rgb and a.ndim == 2 else a for a in arrays]
    if len({a.shape for a in arrays}) > 1:  # mixed sizes: each brought to the network's input size on its own
        images = torch.cat([_resized(to_unit_images(a[None], str(folder))) for a in arrays])
    else:
        images = to_unit_images(np.stack(arrays), str(folder))
    parents = [p.parent.relative_to(folder) for p in paths]
    labels = None
    if all(len(parent.parts) == 1 and parent.parts[0].isdigit() for parent in parents):  # imagefolder layout 0/, 1/, ...
        labels = torch.tensor([int(parent.parts[0]) for parent in parents])
    return images, labels, len(paths)


def _resized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)


def _read_array(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (and labels, when the .npz has them) from a NumPy file; pickled objects are refused."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path} is not a NumPy array file genkit can read ({err})") from None
    if isinstance(loaded, np.ndarray):
        return to_unit_images(loaded, str(path)), None
    with loaded:
        keys = list(loaded.keys())
        key = next((k for k in ARRAY_KEYS if k in keys), None) or next((k for k in keys if loaded[k].ndim >= 3), None)
        if key is None:
            raise ConfigError(f"{path} holds no image array (arrays: {', '.join(keys) or 'none'}); name it 'images'")
        images = to_unit_images(loaded[key], f"{path}[{key}]")
        label_key = next((k for k in LABEL_KEYS if k in keys), None)
        labels = torch.as_tensor(loaded[label_key]).long().reshape(-1) if label_key else None
    if labels is not None and len(labels) != len(images):
        raise ConfigError(f"{path}: {len(labels)} labels for {len(images)} images")
    return images, labels


def _read_dataset(source: str, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A `datasets` folder (save_to_disk, parquet, imagefolder) or Hub id, decoded at its own size."""
    from ..data.sources import load_image_dataset

    ds = load_image_dataset(source, split)
    arrays, rgb = [], False
    for item in ds:
        image = item["image"]
        array = np.asarray(image.convert("RGB" if image.mode not in ("L", "LA", "P", "1") else "L"))
        rgb |= array.ndim == 3
        arrays.append(array)
    arrays = [np.repeat(a[..., None], 3, 2) if rgb and a.ndim == 2 else a for a in arrays]
    if len({a.shape for a in arrays}) > 1:
        images = torch.cat([_resized(to_unit_images(a[None], source)) for a in arrays])
    else:
        images = to_unit_images(np.stack(arrays), source)
    labels = torch.tensor(ds["label"]) if "label" in ds.column_names and min(ds["label"], default=-1) >= 0 else None
    return images, labels


def load_samples(source: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Images in [0, 1] (N, C, H, W), their labels when known, and what they were read from."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in (".npz", ".npy"):
        images, labels = _read_array(path)
        return images, labels, f"{path.suffix[1:]} array {path.name}"
    if path.is_dir() and not any((path / marker).exists() for marker in ("dataset_dict.json", "state.json")) and not any(path.rglob("*.parquet")):
        images, labels, count = _read_png_folder(path)
        return images, labels, f"folder of {count:,} images"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{source}: expected a folder of images, an .npz/.npy file, or a datasets folder / Hub id")
    images, labels = _read_dataset(source, split)
    return images, labels, f"datasets {'folder' if path.is_dir() else 'Hub id'} {source} ({split})"


def reference_features(name: str, source: str, split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float64) and labels of a whole standard split in network `name`, in the split's order; computed once, cached.

    The cache key holds the network's sha256 and a digest of the split's pixels: another network version or other files
    under the same name are a new entry, never a stale one.
    """
    from safetensors.torch import load_file, save_file

    data = load_split(DataConfig(source=source, data_dir=data_dir, image_size=INPUT_SIZE, channels=1, value_range="0,1"), split)
    pixels = hashlib.sha1(data.images.contiguous().numpy().tobytes()).hexdigest()[:16]
    path = cache_dir() / "reference" / f"{name}-{NETWORKS[name].sha256[:16]}-{source}-{split}-{pixels}-v{REFERENCE_CACHE_VERSION}.safetensors"
    if path.is_file():
        try:
            stored = load_file(path)
            return stored["features"], stored["labels"]
        except Exception:  # a damaged entry is recomputed, never fatal
            path.unlink(missing_ok=True)
    with stage(f"{name} features of the {len(data):,} {source} {split} images (once: cached in {path.parent})"):
        features = extract(load_network(name), data.images.float() / 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file({"features": features.contiguous(), "labels": data.labels.contiguous()}, str(tmp), metadata={"network": name, "source": source, "split": split})
    os.replace(tmp, path)
    return features, data.labels


def _scores(reference: torch.Tensor, features: torch.Tensor) -> dict[str, float]:
    return {**fd_kid(reference, features), **prdc(reference, features)}


def score(samples: str, ref: str = "mnist-test", num_samples: int | None = None, network: str | None = None, data_dir: str | None = None,
          split: str = "train", floors: bool = True) -> dict[str, Any]:
    """Every score of the images in `samples` against `ref` in a shipped network's space, with the protocol beside them."""
    if ref in STANDARD:
        source, ref_split = STANDARD[ref]
        name = network or network_for(source)
    elif Path(ref).expanduser().exists():
        source, ref_split, name = None, None, network or "genkit-mnist-v1"
    else:
        raise ConfigError(f"--ref {ref!r} is neither a standard split ({', '.join(STANDARD)}) nor an existing folder or file")
    if name not in NETWORKS:
        raise ConfigError(f"unknown feature network {name!r}; genkit ships {', '.join(NETWORKS)}")
    if num_samples is not None and num_samples < 2:
        raise ConfigError(f"--num-samples must be at least 2, got {num_samples}")
    model = load_network(name)
    with stage(f"reading the samples from {samples}"):
        images, labels, described = load_samples(samples, split)
    n = min(len(images), num_samples or len(images))
    if n < 2:
        raise ConfigError(f"{samples}: {len(images)} image(s); scores need at least 2")
    if n < len(images):  # a subset: drawn by the same seeded shuffle as the references, never the first rows
        keep = shuffled(len(images))[:n]
        images, labels = images[keep], None if labels is None else labels[keep]
    with stage(f"{name} features of {n:,} samples"):
        features = extract(model, images)
    result: dict[str, Any] = {"samples": str(samples), "samples_read": described, "num_samples": n}
    if source is not None:
        split_features, _ = reference_features(name, source, ref_split, data_dir)
        order = shuffled(len(split_features))
        m = min(n, len(split_features))
        reference = split_features[order[:m]]
        result.update({"reference": ref, "reference_images": m, "reference_selection": f"seeded shuffle of the split (seed {REFERENCE_SEED})"})
    else:
        with stage(f"reading the reference images from {ref}"):
            ref_images, _, ref_described = load_samples(ref, split)
        m = min(n, len(ref_images))
        ref_images = ref_images[shuffled(len(ref_images))[:m]]
        with stage(f"{name} features of {m:,} reference images"):
            reference = extract(model, ref_images)
        result.update({"reference": str(ref), "reference_images": m, "reference_read": ref_described})
    if m < PRECISION_RECALL_K + 3 or n < DENSITY_COVERAGE_K + 2:
        raise ConfigError(f"{n} samples against {m} reference images: too few for precision/recall/density/coverage (at least 8 each)")
    with stage("FD, KID, precision, recall, density and coverage"):
        result.update(_scores(reference, features))
    with torch.no_grad():
        predicted = torch.cat([model.head(chunk) for chunk in features.split(1000)]).argmax(1)
    result["predicted_class_counts"] = torch.bincount(predicted, minlength=model.head.out_features).tolist()
    if labels is not None:
        result["class_accuracy"] = float((predicted == labels).double().mean())
    if floors and source is not None and 2 * m <= len(split_features):
        with stage(f"floors: {m:,} other {ref_split} images and {m:,} {'test' if ref_split == 'train' else 'training'} images against the reference"):
            other = split_features[order[m : 2 * m]]
            result.update({f"{key}_test_floor": value for key, value in fd_kid(reference, other).items() if key != "kid_std"})
            floor_split = "test" if ref_split == "train" else "train"
            train_data = load_split(DataConfig(source=source, data_dir=data_dir, image_size=INPUT_SIZE, channels=1, value_range="0,1"), floor_split)
            seen = extract(model, train_data.select(shuffled(len(train_data))[:m]).images.float() / 255)
            result.update({f"{key}_train_floor": value for key, value in fd_kid(reference, seen).items() if key != "kid_std"})
    result.update({"feature_network": name, "feature_network_sha256": NETWORKS[name].sha256, "fd_name": f"FD_{name}",
                   "kid_estimator": "unbiased MMD^2, cubic kernel, subsets of at most 1,000 (clean-fid)",
                   "prdc_k": f"precision/recall k={PRECISION_RECALL_K}, density/coverage k={DENSITY_COVERAGE_K}"})
    return result
