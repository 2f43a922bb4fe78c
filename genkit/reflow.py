"""Reflow (2-rectified flow, Liu et al. 2023): (noise, image, label) pairs drawn from a trained flow run with its own
sampler, stored as a `datasets` folder, and the paired noise a flow run trained on that folder regresses towards.

`write_pairs` saves the folder (`Dataset.save_to_disk`: columns `image`, `label`, `noise`, plus `genkit_reflow.json`),
so `data.source: <folder>` loads it through genkit's ordinary data pipeline (images and labels). The noise of each
pair travels beside it: `PairedNoise` finds it by the image's bytes, so the pipeline's caching, shuffling and hold-out
split need no change, and the family's loss uses it instead of fresh noise: straight, non-crossing paths that a flow
model samples in one or two steps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from .config import ConfigError, DataConfig

MARKER = "genkit_reflow.json"


def _key(image_u8: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image_u8, dtype=np.uint8).tobytes(), digest_size=16).digest()


def is_pairs_folder(source: str | Path | None) -> bool:
    """Whether a data source is a reflow pairs folder written by `write_pairs`."""
    return source is not None and (Path(str(source)).expanduser() / MARKER).is_file()


@torch.no_grad()
def write_pairs(run: str, out: str | Path, n: int, seed: int = 0, batch_size: int = 250, steps: int | None = None,
                guidance_scale: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Draw `n` (noise, image, label) pairs from a flow run's own sampler (its steps and guidance unless given) into `out`."""
    from tqdm.auto import tqdm

    from .runs import load_family

    out = Path(out)
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: choose a new folder for the pairs")
    family = load_family(run)
    if family.name != "diffusion" or not family.flow or getattr(family, "autoencoder", None) is not None:
        raise ConfigError(f"{run} is not a pixel-space flow-matching diffusion run: reflow pairs need a deterministic flow sampler on pixels")
    if getattr(family, "mean_flow", False):
        raise ConfigError(f"{run} is a MeanFlow run: draw reflow pairs from a flow-matching run")
    steps = steps or family.option("sample_steps")
    scale = family.option("guidance_scale") if guidance_scale is None else guidance_scale
    labels = family.class_labels("all", n) if family.conditional else None
    unet = family.models["unet"]
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    pipe = family.pipeline()
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {"image": [], "label": [], "noise": []}
    with tqdm(total=n, desc="reflow pairs", unit="pair", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            noise = torch.randn((count, *shape), generator=generator)
            wanted = None if labels is None else labels[start : start + count]
            images = pipe(count, wanted, scale, steps, latents=noise, output_type="pt").images.float().clamp(0, 1)
            u8 = (images * 255).round().to(torch.uint8).numpy()
            rows["image"] += [im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0) for im in u8]
            rows["label"] += [0] * count if wanted is None else wanted.tolist()
            rows["noise"] += list(noise.numpy())
            bar.update(count)
    names = family.info.class_names if family.conditional else ["unlabelled"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names)),
                                  "noise": datasets.Array3D(shape=shape, dtype="float32")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(out))
    info = {"generated_by": "genkit reflow-pairs", "run": str(run), "num_pairs": n, "seed": seed, "sampler": family.sampler, "steps": steps,
            "guidance_scale": scale, "conditional": family.conditional}
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return info


class PairedNoise:
    """The noise paired with each image of a reflow folder, looked up by the image's uint8 bytes."""

    def __init__(self, folder: str | Path):
        ds = datasets.load_from_disk(str(folder)).with_format("numpy")
        noise = np.asarray(ds["noise"], dtype=np.float32)
        self.noise = torch.from_numpy(noise)
        images = ds.with_format(None).cast_column("image", datasets.Image())["image"]
        self.index = {}
        for i, im in enumerate(images):
            self.index.setdefault(_key(np.asarray(im)), i)  # identical images (rare) share the first one's noise

    @classmethod
    def for_data(cls, data: DataConfig) -> "PairedNoise | None":
        """The pairs of `data.source` when it is a reflow folder, else None; refuses options that change the pixels."""
        if not is_pairs_folder(data.source):
            return None
        if data.hflip or data.binarize != "none" or data.corruption:
            raise ConfigError("a reflow pairs folder pairs each image with its noise: leave data.hflip, data.binarize and data.corruption off")
        return cls(Path(str(data.source)).expanduser())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The paired noise of a batch of images in [-1, 1] (model range), on their device."""
        u8 = ((images.detach().float().cpu() + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        rows = []
        for im in u8:
            row = self.index.get(_key(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)))
            if row is None:
                raise ConfigError("an image of the batch is not in the reflow pairs folder (was the data resized or filtered?); "
                                  "train on the pairs as written: data.source=<folder>, the run's image size")
            rows.append(row)
        return self.noise[torch.tensor(rows)].to(images.device, images.dtype).view_as(images)
