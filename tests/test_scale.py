"""Data at scale (decode cache, memory maps, parallel decode, flips) and the GPU speed options, checked on the CPU."""

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import genkit.data as data_mod
import genkit.data.cache as cache_mod
from genkit.config import ConfigError, DataConfig
from genkit.data import DataSourceError, load_image_dataset, load_split, load_train_eval, make_batch, to_tensors
from genkit.engine import train


def rgb_folder(root, n, size=16, broken=None):
    """An imagefolder of `n` random RGB PNGs in three classes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        if i == broken:
            (folder / f"{i:05d}.png").write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def rgb_2400(tmp_path_factory):
    return rgb_folder(tmp_path_factory.mktemp("rgb") / "imgs", 2400)


def test_parallel_decode_into_a_memory_map_matches_the_serial_decode(rgb_2400, tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    reference = to_tensors(load_image_dataset(str(rgb_2400)), 16, channels=3)
    calls = []
    real_map = datasets.Dataset.map
    monkeypatch.setattr(datasets.Dataset, "map", lambda self, *a, **k: calls.append(k.get("num_proc")) or real_map(self, *a, **k))
    cfg = DataConfig(source=str(rgb_2400), image_size=16, channels=3, storage="mmap", decode_workers=2)
    mapped = load_split(cfg, "train")
    assert calls == [2]  # two worker processes decoded it
    assert mapped.mapped and mapped.images.shape == (2400, 3, 16, 16) and mapped.class_names == ["class_0", "class_1", "class_2"]
    assert torch.equal(mapped.images, reference.images) and torch.equal(mapped.labels, reference.labels)
    in_memory = load_split(DataConfig(source=str(rgb_2400), image_size=16, channels=3, storage="memory"), "train")
    assert calls == [2] and not in_memory.mapped  # the same cache entry, read whole this time
    assert torch.equal(in_memory.images, reference.images)
    index = torch.tensor([5, 2000, 17, 17])
    a, b = make_batch(mapped, index, cfg), make_batch(in_memory, index, cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_broken_image_is_named_from_a_decode_worker_and_nothing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    folder = rgb_folder(tmp_path / "imgs", 2100, broken=1500)
    cfg = DataConfig(source=str(folder), image_size=16, channels=3, decode_workers=2)
    with pytest.raises(DataSourceError, match=r"cannot read image '.*01500\.png'.*Remove or replace"):
        load_split(cfg, "train")
    assert not list((tmp_path / "cache" / "decoded").iterdir())  # no half-written entry, no temp folder


def test_a_large_split_stays_mapped_and_its_hold_out_copies_no_pixels(rgb_2400, tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_mod, "MEMORY_LIMIT_BYTES", 100 * 3 * 16 * 16)  # "large" = more than 100 images here
    cfg = DataConfig(source=str(rgb_2400), image_size=16, channels=3, eval_split=None, eval_fraction=0.02)
    train_data, eval_data = load_train_eval(cfg, seed=3)
    assert train_data.mapped and train_data.rows is not None and len(train_data) == 2400 - 48
    assert not eval_data.mapped and len(eval_data) == 48  # small: copied into memory
    memory = DataConfig(**{**cfg.__dict__, "storage": "memory"})
    ref_train, ref_eval = load_train_eval(memory, seed=3)
    assert not ref_train.mapped and torch.equal(eval_data.images, ref_eval.images)
    index = torch.tensor([0, 999, 2351])
    assert torch.equal(train_data.take(index)[0], ref_train.take(index)[0])
    assert train_data.to("cpu") is train_data  # stays mapped: batches travel, the split does not


def test_hub_sources_are_cached_by_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    images = [Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8)) for i in range(20)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    version = {"fingerprint": "v1"}

    def fake_hub(source, split, data_dir=None, revision=None, config_name=None):
        ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(20)]}, features=features)
        ds._fingerprint = version["fingerprint"]
        return ds

    decodes = []
    real = cache_mod._decode_parallel
    monkeypatch.setattr(cache_mod, "load_image_dataset", fake_hub)
    monkeypatch.setattr(cache_mod, "_decode_parallel", lambda *a: decodes.append(1) or real(*a))
    cfg = DataConfig(source="someone/tiny-set", image_size=8)
    first = load_split(cfg, "train")
    assert len(decodes) == 1 and first.images[3].max().item() == 30 and first.class_names == ["a", "b"]
    load_split(cfg, "train")
    assert len(decodes) == 1  # same version: read from the cache
    version["fingerprint"] = "v2"
    load_split(cfg, "train")
    assert len(decodes) == 2  # a new version of the dataset is decoded again


def test_horizontal_flip_applies_to_training_batches_only():
    images = torch.zeros(64, 3, 4, 4, dtype=torch.uint8)
    images[..., 0] = 255  # a bright left column
    data = data_mod.ImageTensors(images, torch.zeros(64, dtype=torch.long), ["x"])
    cfg = DataConfig(channels=3, image_size=4, hflip=True)
    batch = make_batch(data, torch.arange(64), cfg, torch.Generator().manual_seed(0), augment=True)
    flipped = batch["image"][:, 0, 0, -1] == 1
    assert 16 < flipped.sum() < 48 and (batch["image"][flipped, :, :, 0] == 0).all()
    assert (make_batch(data, torch.arange(64), cfg)["image"][:, :, :, 0] == 1).all()  # evaluation: never flipped
    assert (make_batch(data, torch.arange(64), DataConfig(channels=3, image_size=4), augment=True)["image"][:, :, :, 0] == 1).all()


def test_mapped_training_matches_in_memory_training(tiny_idx, tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    runs = {}
    for storage in ["memory", "mmap"]:
        train(tiny_config(tiny_idx, tmp_path / storage, data={"storage": storage}, max_steps=6))
        runs[storage] = [r["loss"] for r in json.loads((tmp_path / storage / "metrics.json").read_text())["history"] if "loss" in r]
    assert runs["memory"] == runs["mmap"]


def losses(run_dir):
    return [r["loss"] for r in json.loads((run_dir / "metrics.json").read_text())["history"] if "loss" in r]


@pytest.mark.parametrize("option", [
    {"channels_last": True},
    {"fused_optimizer": True},
    {"allow_tf32": False},
    {"mixed_precision": "bf16"},
])
def test_speed_options_train_the_same_model(tiny_idx, tmp_path, option):
    """Each GPU speed option, run on the CPU, gives the loss curve of the plain run within tolerance."""
    base = dict(family="diffusion", model={"preset": "tiny"}, data={"value_range": "-1,1", "image_size": 28}, max_steps=6,
                learning_rate=1e-3, optimizer="adamw", num_samples=2, log_every=1)
    train(tiny_config(tiny_idx, tmp_path / "plain", **base))
    train(tiny_config(tiny_idx, tmp_path / "fast", **base, **option))
    plain, fast = losses(tmp_path / "plain"), losses(tmp_path / "fast")
    tolerance = 0.05 if option.get("mixed_precision") == "bf16" else 1e-3
    assert len(plain) == len(fast) == 6
    for a, b in zip(plain, fast):
        assert abs(a - b) <= tolerance * abs(a), (plain, fast)


@pytest.mark.slow
def test_compiled_training_matches_and_exports_plain_weights(tiny_idx, tmp_path):
    from genkit.families.autoencoder import MLPAutoencoder

    train(tiny_config(tiny_idx, tmp_path / "plain", max_steps=6, log_every=1))
    train(tiny_config(tiny_idx, tmp_path / "compiled", max_steps=6, log_every=1, compile=True))
    for a, b in zip(losses(tmp_path / "plain"), losses(tmp_path / "compiled")):
        assert abs(a - b) <= 1e-3 * abs(a)
    model = MLPAutoencoder.from_pretrained(str(tmp_path / "compiled"))  # parameter names without compile's prefix
    assert model.reconstruct(torch.rand(1, 1, 28, 28)).shape == (1, 1, 28, 28)


def test_bad_storage_options_are_named():
    from genkit.config import TrainConfig

    with pytest.raises(ConfigError, match="data.storage must be one of"):
        TrainConfig.from_dict({"data": {"storage": "disk"}})
    with pytest.raises(ConfigError, match="decode_workers must be >= 1"):
        TrainConfig.from_dict({"data": {"decode_workers": 0}})
    with pytest.raises(ConfigError, match="fused_optimizer applies to adam"):
        TrainConfig.from_dict({"optimizer": "sgd", "fused_optimizer": True})


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_unet_presets_are_valid_at_64_pixels_rgb(preset):
    from genkit.families.diffusion import PRESETS, build_unet

    unet = build_unet(64, 3, num_classes=10, **PRESETS[preset])
    out = unet(torch.randn(2, 3, 64, 64), torch.tensor([1, 500]), class_labels=torch.tensor([0, 10])).sample
    assert out.shape == (2, 3, 64, 64)


def test_commands_default_to_the_gpu_when_there_is_one(monkeypatch, capsys):
    from genkit import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for command in ["sample", "eval", "reconstruct", "analyze", "generate"]:
        extra = ["--n", "4", "--out", "x"] if command == "generate" else []
        assert cli.parse_args([command, "run", *extra]).device == "cuda", command
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.parse_args(["sample", "run"]).device == "cpu"
    assert cli.main(["sample", "run", "--device", "cuda"]) == 2  # refused before anything loads, in one line
    assert "no such CUDA device here" in capsys.readouterr().err
    assert cli.main(["sample", "run", "--device", "gpu0"]) == 2
    assert "not a device name" in capsys.readouterr().err
