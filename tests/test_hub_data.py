"""Hub data sources offline (a local dataset repo stands in for the Hub), and a decode cache that survives damage and Ctrl-C."""

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import genkit.data.cache as cache_mod
import genkit.data.decode as decode_mod
import genkit.data.stream as stream_mod
from genkit.config import ConfigError, DataConfig, TrainConfig
from genkit.data import DataSourceError, load_split


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    """A dataset repo with two configurations: `digits` (3 parquet shards of 10, ClassLabel) and `letters` (string labels)."""
    repo = tmp_path_factory.mktemp("hub") / "repo"
    (repo / "digits").mkdir(parents=True)
    (repo / "letters").mkdir()
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    for shard in range(3):
        rows = range(10 * shard, 10 * shard + 10)
        datasets.Dataset.from_dict({"img": [Image.fromarray(np.full((8, 8), 5 * i, np.uint8)) for i in rows], "label": [i % 3 for i in rows]},
                                   features=features).to_parquet(repo / "digits" / f"train-{shard:05d}.parquet")
    datasets.Dataset.from_dict({"picture": [Image.fromarray(np.full((6, 6), 100 + i, np.uint8)) for i in range(10)], "class": ["y", "x"] * 5},
                               features=datasets.Features({"picture": datasets.Image(), "class": datasets.Value("string")})
                               ).to_parquet(repo / "letters" / "train-00000.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: digits\n  data_files:\n  - split: train\n    path: digits/*.parquet\n"
                                    "- config_name: letters\n  data_files:\n  - split: train\n    path: letters/*.parquet\n---\n")
    return repo


@pytest.fixture
def hub(hub_repo, tmp_path, monkeypatch):
    """`someone/multi` on the 'Hub' is the local repo; every load_dataset call is recorded, and so is every row a stream yields."""
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    real = datasets.load_dataset
    calls, rows = [], []

    def fake(path, **kwargs):
        assert path == "someone/multi"
        calls.append(kwargs)
        ds = real(str(hub_repo), cache_dir=str(tmp_path / "hf"), **{k: v for k, v in kwargs.items() if k != "revision"})
        if not kwargs.get("streaming"):
            return ds
        for column in [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]:
            ds = ds.cast_column(column, datasets.Image(decode=False))  # counted as they are, undecoded
        return ds.map(lambda row: rows.append(1) or row, features=ds.features)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(stream_mod, "resolve_commit", lambda dataset_id, revision: None)  # offline by default
    return {"calls": calls, "rows": rows}


def test_revision_and_config_name_reach_the_hub_and_the_cache_key(hub, tmp_path):
    digits = load_split(DataConfig(source="someone/multi", config_name="digits", revision="v1", image_size=8), "train")
    assert len(digits) == 30 and digits.class_names == ["a", "b", "c"] and digits.images[7].max().item() == 35
    assert hub["calls"][-1] == {"name": "digits", "split": "train", "revision": "v1", "streaming": False}
    letters = load_split(DataConfig(source="someone/multi", config_name="letters", image_size=8), "train")
    assert len(letters) == 10 and letters.class_names == ["x", "y"] and letters.labels[:2].tolist() == [1, 0]
    load_split(DataConfig(source="someone/multi", config_name="digits", revision="v2", image_size=8), "train")
    assert len([p for p in (tmp_path / "cache" / "decoded").iterdir() if p.name != "streams"]) == 3  # one entry per (config, revision)
    with pytest.raises(DataSourceError, match=r"several configurations: set data.config_name to one of \['digits', 'letters'\]"):
        load_split(DataConfig(source="someone/multi", image_size=8), "train")
    with pytest.raises(DataSourceError, match="no configuration 'numbers'"):
        load_split(DataConfig(source="someone/multi", config_name="numbers", image_size=8), "train")


def test_streaming_decodes_batch_by_batch_and_stops_at_subset(hub, monkeypatch):
    monkeypatch.setattr(stream_mod, "DECODE_BATCH", 4)
    cfg = DataConfig(source="someone/multi", config_name="digits", image_size=8, streaming=True, subset=7, exclude_labels=[1])
    streamed = load_split(cfg, "train", cfg.subset)
    assert hub["calls"][-1]["streaming"] and len(hub["rows"]) < 20  # two or three batches of 4 pulled, not the 30 rows
    whole = load_split(DataConfig(**{**cfg.__dict__, "streaming": False}), "train", cfg.subset)
    assert len(streamed) == 7 and torch.equal(streamed.images, whole.images) and torch.equal(streamed.labels, whole.labels)
    assert streamed.class_names == whole.class_names == ["a", "b", "c"] and 1 not in streamed.labels.tolist()
    letters = DataConfig(source="someone/multi", config_name="letters", image_size=8)
    streamed, whole = load_split(DataConfig(**{**letters.__dict__, "streaming": True}), "train"), load_split(letters, "train")
    assert torch.equal(streamed.images, whole.images) and torch.equal(streamed.labels, whole.labels) and streamed.class_names == ["x", "y"]


def test_a_streamed_split_is_cached_by_commit(hub, tmp_path, monkeypatch):
    commit = {"sha": "c1"}
    monkeypatch.setattr(stream_mod, "resolve_commit", lambda dataset_id, revision: commit["sha"])
    cfg = DataConfig(source="someone/multi", config_name="digits", image_size=8, streaming=True)
    load_split(cfg, "train", 5)
    load_split(cfg, "train", 5)
    assert len(hub["calls"]) == 1  # the same commit: read from the cache
    commit["sha"] = "c2"
    load_split(cfg, "train", 5)
    assert len(hub["calls"]) == 2  # a new commit is streamed again
    commit["sha"] = None  # offline: the commit last seen for this revision finds its entry
    assert len(load_split(cfg, "train", 5)) == 5 and len(hub["calls"]) == 2
    meta = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "decoded").glob("*/meta.json")]
    assert sorted(m["rows"] for m in meta) == [5, 5] and all(m["streamed"] and m["config_name"] == "digits" for m in meta)


@pytest.mark.parametrize("damage", ["images", "labels", "meta"])
def test_a_cache_entry_whose_parts_disagree_is_rebuilt(tiny_idx, tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(source="mnist", data_dir=str(tiny_idx))
    first = load_split(cfg, "train")
    entry = next((tmp_path / "cache" / "decoded").iterdir())
    if damage == "images":  # 100 of 256 rows: a valid array, silently short
        np.save(entry / "images.npy", np.load(entry / "images.npy")[:100])
    elif damage == "labels":
        np.save(entry / "labels.npy", np.load(entry / "labels.npy")[:100])
    else:
        (entry / "meta.json").write_text(json.dumps({**json.loads((entry / "meta.json").read_text()), "rows": 512}))
    with caplog.at_level(logging.WARNING):
        again = load_split(cfg, "train")
    assert "rebuilding damaged cache entry" in caplog.text and "disagree" in caplog.text
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)


def test_absurd_image_sizes_are_refused_before_anything_is_allocated(tiny_idx, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"data.image_size must be in \[8, 4096\], got 100000"):
        TrainConfig.from_dict({"data": {"image_size": 100000}})
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10**6})())
    with pytest.raises(DataSourceError, match=r"decoding 256 images at 64x64x3 needs 3.0 MiB in the decode cache .* which has 1.0 MiB free"):
        load_split(DataConfig(source="mnist", data_dir=str(tiny_idx), image_size=64, channels=3), "train")
    assert not list((tmp_path / "cache" / "decoded").iterdir())
    monkeypatch.undo()
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_mod.psutil, "virtual_memory", lambda: type("Memory", (), {"available": 10**5})())
    with pytest.raises(DataSourceError, match="data.storage=memory: the split holds .* use data.storage=mmap"):
        load_split(DataConfig(source="mnist", data_dir=str(tiny_idx), storage="memory"), "train")


@pytest.mark.parametrize("source", ["idx", "imagefolder"])
def test_ctrl_c_during_the_decode_is_one_line_exit_130_and_nothing_half_written(tiny_idx, tmp_path, monkeypatch, capsys, source):
    from genkit import cli

    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    data = {"source": "mnist", "data_dir": str(tiny_idx)}
    if source == "imagefolder":
        for i in range(12):
            (tmp_path / "imgs" / str(i % 2)).mkdir(parents=True, exist_ok=True)
            Image.new("L", (28, 28), 20 * i).save(tmp_path / "imgs" / str(i % 2) / f"{i}.png")
        data = {"source": str(tmp_path / "imgs"), "data_dir": None, "eval_split": None, "eval_fraction": 0.25}
    decoded = []

    def interrupted(*args, **kwargs):
        decoded.append(1)
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of the decode

    monkeypatch.setattr(cache_mod if source == "idx" else decode_mod, "_fit_arrays" if source == "idx" else "_decode_rows", interrupted)
    tiny_config(tiny_idx, tmp_path / "run", data=data, batch_size=4).save(tmp_path / "config.yaml")
    assert cli.main(["train", "--config", str(tmp_path / "config.yaml")]) == 130
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # above it, only the decode's progress bar
    assert decoded and "Traceback" not in err and last.startswith("genkit train: interrupted while decoding split 'train'") and "nothing was cached" in last
    assert not list((tmp_path / "cache" / "decoded").iterdir())  # no entry, no temporary folder
