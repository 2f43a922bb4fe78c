"""Data at scale: genkit's decode cache against the `with_transform` + DataLoader recipe, on 10k to 1M images.

The script makes synthetic 32x32 RGB data sets (parquet, and imagefolder where asked), then measures, each in a fresh
process so memory figures do not mix:

- decode: today's single-threaded loop (genkit <= 0.1: `ds[a:b]["image"]` + PIL, into one array in memory) against the
  parallel decode into the memory-mapped cache (`load_split`, every core);
- time to the first training step, cold (nothing cached: the recipe converts parquet to Arrow, genkit decodes) and warm
  (second run), steady images/second over `--steps` steps and peak memory, for genkit's engine and for the recipe
  (the diffusers tutorial loop: `load_dataset` + `with_transform` decoding PIL per sample + `DataLoader(shuffle=True)`),
  same model (an MLP autoencoder, so the data path is what is measured), batch size and optimizer.

Peak memory is reported as private (anonymous) RSS, the memory a process owns; pages of memory-mapped files are the
kernel's page cache, shared by every process on the node and dropped under pressure, so they are not counted.

    python benchmarks/data_scale.py --sizes 10000 100000 1000000 --work /tmp/genkit-scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SIZE = 32


# ---- synthetic data ---------------------------------------------------------------------------------------


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` smooth 32x32 RGB images (upsampled random 4x4 colour fields plus mild noise) and labels in 10 classes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images = coarse.repeat(SIZE // 4, axis=1).repeat(SIZE // 4, axis=2)
    images = np.clip(images.astype(np.int16) + rng.integers(-8, 9, images.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    return images, rng.integers(0, 10, n)


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def make_parquet(folder: Path, n: int) -> Path:
    """A parquet data set (`image` as PNG bytes, `label`) in shards of 100k rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": [str(i) for i in range(10)]}}
    schema = pa.schema([("image", image_type), ("label", pa.int64())], metadata={"huggingface": json.dumps({"info": {"features": features}})})
    for shard, start in enumerate(range(0, n, 100_000)):
        images, labels = synthetic_images(min(100_000, n - start), seed=start)
        table = pa.table({"image": [{"bytes": png_bytes(x), "path": None} for x in images], "label": labels}, schema=schema)
        pq.write_table(table, folder / f"train-{shard:05d}.parquet", row_group_size=1000)
    return folder


def make_imagefolder(folder: Path, n: int) -> Path:
    """One PNG file per image, one sub-folder per class."""
    for c in range(10):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 100_000):
        images, labels = synthetic_images(min(100_000, n - start), seed=start)
        for i, (image, label) in enumerate(zip(images, labels)):
            (folder / f"class_{label}" / f"{start + i:07d}.png").write_bytes(png_bytes(image))
    return folder


# ---- measurements (each in its own process) ---------------------------------------------------------------


class PeakMemory:
    """Samples this process's private RSS (RssAnon) every 20 ms; `peak` in MiB."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def fit_v01(img, mode: str, size: int, resize: str) -> np.ndarray:
    """genkit 0.1's per-image fit, verbatim (0.1 converted every image, even one already in the wanted mode)."""
    from PIL import Image as PILImage

    if img.mode in ("RGBA", "LA", "P"):
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


def measure_decode_old(source: str) -> dict:
    """genkit 0.1's decode loop, verbatim: one process, datasets' PIL decoding, all pixels into one in-memory array."""
    from genkit.data import load_image_dataset

    memory = PeakMemory()
    started = time.perf_counter()
    ds = load_image_dataset(source, "train")
    loaded = time.perf_counter()
    out = np.empty((len(ds), SIZE, SIZE, 3), dtype=np.uint8)
    for start in range(0, len(ds), 2000):
        for i, img in enumerate(ds[start : start + 2000]["image"]):
            out[start + i] = fit_v01(img, "RGB", SIZE, "pad")
    return {"load_s": loaded - started, "decode_s": time.perf_counter() - loaded, "peak_mib": memory.stop()}


def measure_decode_new(source: str) -> dict:
    """genkit's decode into the memory-mapped cache, every core (the cache is empty: `--work` holds a fresh one)."""
    from genkit.config import DataConfig
    from genkit.data import _open_entry as open_entry
    from genkit.data import _write_entry as write_entry
    from genkit.data import cache_dir, load_image_dataset

    memory = PeakMemory()
    started = time.perf_counter()
    ds = load_image_dataset(source, "train")  # the listing / Arrow preparation, timed apart as the old loop's is
    loaded = time.perf_counter()
    cfg = DataConfig(source=source, image_size=SIZE, channels=3)
    write_entry(cache_dir() / "decoded" / "benchmark", cfg, "train", None, ds)
    decoded = time.perf_counter()
    data = open_entry(cache_dir() / "decoded" / "benchmark", cfg.storage)
    return {"load_s": loaded - started, "decode_s": decoded - loaded, "peak_mib": memory.stop(), "mapped": data.mapped}


def measure_genkit(source: str, steps: int, batch_size: int, out: str) -> dict:
    """Time to the first step and steady img/s through `genkit.engine.train` (MLP autoencoder)."""
    import genkit.engine as engine
    from genkit.config import TrainConfig

    memory = PeakMemory()
    started, first = time.perf_counter(), []
    make_batch = engine.make_batch

    def timed_make_batch(*args, **kwargs):
        if not first and kwargs.get("augment"):  # the first training batch: everything before it is start-up
            first.append(time.perf_counter() - started)
        return make_batch(*args, **kwargs)

    engine.make_batch = timed_make_batch
    config = TrainConfig.from_dict({
        "family": "autoencoder", "model": {"hidden_dims": [64, 32]}, "output_dir": out, "batch_size": batch_size, "max_steps": steps,
        "data": {"source": source, "image_size": SIZE, "channels": 3, "eval_split": None, "eval_fraction": 0.01, "eval_subset": 1000},
        "eval_every": steps, "checkpoint_every": steps, "eval_batches": 1, "num_samples": 8, "log_with": "none", "progress_bar": False,
    })
    summary = engine.train(config, overwrite=True)
    return {"first_step_s": first[0], "img_s": summary["images_per_second"], "peak_mib": memory.stop()}


def measure_recipe(source: str, steps: int, batch_size: int) -> dict:
    """The tutorial recipe with the same model: `with_transform` (PIL per sample) + DataLoader + Adam."""
    import datasets
    import torch
    import torch.nn.functional as F

    from genkit.families.autoencoder import MLPAutoencoder

    memory = PeakMemory()
    started = time.perf_counter()
    if Path(source, "class_0").is_dir():
        dataset = datasets.load_dataset("imagefolder", data_dir=source, split="train")
    else:
        dataset = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in Path(source).glob("*.parquet")), split="train")

    def transform(examples):
        return {"images": [torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1) for img in examples["image"]]}

    loader = torch.utils.data.DataLoader(dataset.with_transform(transform), batch_size=batch_size, shuffle=True, drop_last=True)
    model = MLPAutoencoder(image_shape=[3, SIZE, SIZE], hidden_dims=[64, 32])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first, step, timed_from = None, 0, None
    for batch in loader:
        x = batch["images"]
        loss = F.binary_cross_entropy_with_logits(model(x), x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if first is None:
            first = time.perf_counter() - started
            timed_from = time.perf_counter()
        if step == steps:
            break
    return {"first_step_s": first, "img_s": (steps - 1) * batch_size / (time.perf_counter() - timed_from), "peak_mib": memory.stop()}


def run_worker(kind: str, args: list[str], env: dict[str, str]) -> dict:
    """Run one measurement in a fresh Python process and read back its JSON line."""
    done = subprocess.run([sys.executable, __file__, "--worker", kind, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- driver -----------------------------------------------------------------------------------------------


def main() -> None:
    """Make the data sets, run every measurement, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--formats", nargs="+", default=["parquet", "imagefolder"], choices=["parquet", "imagefolder"])
    parser.add_argument("--imagefolder-max", type=int, default=100_000, help="largest size also written as one file per image")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--work", default="/tmp/genkit-data-scale", help="folder for the data sets and caches (several GB at 1M)")
    parser.add_argument("--skip-old-decode-above", type=int, default=10**9, help="skip the single-threaded decode above this size")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("worker_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # inside a measurement process
        functions = {"decode_old": measure_decode_old, "decode_new": measure_decode_new, "genkit": measure_genkit, "recipe": measure_recipe}
        values = [int(v) if v.isdigit() else v for v in args.worker_args]
        print(json.dumps(functions[args.worker](*values)))
        return

    work = Path(args.work)
    rows = []
    for n in args.sizes:
        for fmt in args.formats:
            if fmt == "imagefolder" and n > args.imagefolder_max:
                continue
            source = work / "data" / f"{fmt}-{n}"
            if not source.is_dir():
                started = time.perf_counter()
                (make_parquet if fmt == "parquet" else make_imagefolder)(source, n)
                print(f"made {fmt} {n:,} in {time.perf_counter() - started:.0f} s", flush=True)

            def env(tag: str) -> dict[str, str]:  # a cache folder per measurement series; "cold" empties it first
                return {**os.environ, "HF_DATASETS_CACHE": str(work / "cache" / tag / "hf"), "GENKIT_CACHE": str(work / "cache" / tag / "genkit"),
                        "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}

            def fresh(tag: str) -> dict[str, str]:
                shutil.rmtree(work / "cache" / tag, ignore_errors=True)
                return env(tag)

            for path in source.rglob("*"):  # the page cache warm for every measurement alike: decode speed, not disk speed
                if path.is_file():
                    path.read_bytes()
            row = {"format": fmt, "n": n}
            if n <= args.skip_old_decode_above:
                row["old"] = run_worker("decode_old", [str(source)], fresh("old"))
            row["new"] = run_worker("decode_new", [str(source)], fresh("new"))
            train_args = [str(source), str(args.steps), str(args.batch_size), str(work / "run")]
            row["genkit_cold"] = run_worker("genkit", train_args, fresh("genkit"))
            row["genkit_warm"] = run_worker("genkit", train_args, env("genkit"))
            row["recipe_cold"] = run_worker("recipe", train_args[:3], fresh("recipe"))
            row["recipe_warm"] = run_worker("recipe", train_args[:3], env("recipe"))
            rows.append(row)
            print(json.dumps(row), flush=True)
            for tag in ["old", "new", "genkit", "recipe"]:
                shutil.rmtree(work / "cache" / tag, ignore_errors=True)
    print_tables(rows, args)


def print_tables(rows: list[dict], args: argparse.Namespace) -> None:
    """Markdown tables: decode, then training start-up, speed and memory."""
    print(f"\n{os.cpu_count()} cores; 32x32 RGB PNG; MLP autoencoder 3072-64-32, batch {args.batch_size}, {args.steps} steps\n")
    print("| data set | images | decode, one process (s) | decode, genkit cache (s) | speed-up | peak private RSS old / new (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        old, new = r.get("old"), r["new"]
        print(f"| {r['format']} | {r['n']:,} | {old['decode_s']:.1f} | {new['decode_s']:.1f} | {old['decode_s'] / new['decode_s']:.2f}x | "
              f"{old['peak_mib']:,.0f} / {new['peak_mib']:,.0f} |" if old else
              f"| {r['format']} | {r['n']:,} | not run | {new['decode_s']:.1f} | | - / {new['peak_mib']:,.0f} |")
    print("\n| data set | images | first step, cold: recipe / genkit (s) | first step, warm: recipe / genkit (s) "
          "| steady img/s: recipe / genkit | ratio | peak private RSS: recipe / genkit (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rc, rw, gc, gw = r["recipe_cold"], r["recipe_warm"], r["genkit_cold"], r["genkit_warm"]
        print(f"| {r['format']} | {r['n']:,} | {rc['first_step_s']:.1f} / {gc['first_step_s']:.1f} | {rw['first_step_s']:.1f} / {gw['first_step_s']:.1f} | "
              f"{rw['img_s']:,.0f} / {gw['img_s']:,.0f} | {gw['img_s'] / rw['img_s']:.1f}x | {rw['peak_mib']:,.0f} / {gw['peak_mib']:,.0f} |")


if __name__ == "__main__":
    main()
