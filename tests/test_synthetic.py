"""Synthetic data sets (export, load, train on, push), the Classification Accuracy Score, and ICA / SOM analysis."""

import json
import re

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config
from test_hub import Recorder

from genkit.cli import main
from genkit.engine import train
from genkit.runs import load_family


def last_json(out: str) -> dict:
    return json.loads(out[out.index("{"):])


@pytest.fixture(scope="module")
def cgan(tiny_idx, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "cgan"
    train(tiny_config(tiny_idx, out, family="gan", model={"architecture": "dcgan", "conditional": True, "width": 8, "latent_dim": 8},
                      data={"value_range": "-1,1", "source": "fashion_mnist"}, max_steps=4))
    return out


@pytest.mark.parametrize("fmt", ["save_to_disk", "parquet", "imagefolder"])
def test_export_round_trip_loads_with_datasets_and_trains(cgan, tmp_path, fmt, capsys, tiny_idx):
    out = tmp_path / fmt
    assert main(["generate", str(cgan), "--n", "45", "--out", str(out), "--format", fmt, "--batch-size", "10", "--seed", "3"]) == 0
    report = last_json(capsys.readouterr().out)
    assert report["num_images"] == 45 and report["labels"].startswith("requested from the conditional model")
    if fmt == "save_to_disk":
        ds = datasets.load_from_disk(str(out))["train"]
    elif fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files=str(out / "train-*.parquet"), split="train")
    else:
        ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    names = ds.features["label"].names
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    if fmt == "imagefolder":  # folders sorted by name, '/' made a '-'
        assert sorted(names) == sorted(n.replace("/", "-") for n in fashion)
    else:
        assert names == fashion  # the run's class order, exactly
    counts = np.bincount([names.index(names[i]) for i in ds["label"]], minlength=10)
    assert len(ds) == 45 and counts.min() == 4 and counts.max() == 5  # balanced: every class in turn
    pixels = np.stack([np.asarray(im) for im in ds["image"]])
    assert pixels.shape == (45, 28, 28) and pixels.dtype == np.uint8 and pixels.max() > pixels.min()
    info = json.loads((out / "genkit_generation.json").read_text())
    assert info["seed"] == 3 and info["family"] == "gan" and info["run"] == "cgan" and str(tmp_path) not in (out / "README.md").read_text()
    # and genkit trains on it directly
    summary = train(tiny_config(tiny_idx, tmp_path / f"ae-{fmt}", data={"source": str(out), "data_dir": None}, max_steps=2, batch_size=8))
    assert summary["step"] == 2


def test_generation_is_seeded_and_one_class_can_be_asked_for(cgan, tmp_path):
    from genkit.synthetic import export

    family = load_family(str(cgan))
    export(family, tmp_path / "a", 12, seed=1, progress=False, class_label="Bag")
    export(family, tmp_path / "b", 12, seed=1, progress=False, class_label="Bag")
    a, b = (datasets.load_from_disk(str(tmp_path / x))["train"] for x in "ab")
    assert set(a["label"]) == {8} and [np.asarray(i).tolist() for i in a["image"]] == [np.asarray(i).tolist() for i in b["image"]]
    from genkit.config import ConfigError

    with pytest.raises(ConfigError, match="not empty"):
        export(family, tmp_path / "a", 12, progress=False)
    with pytest.raises(ValueError, match="class label 'Cat'"):
        export(family, tmp_path / "c", 12, progress=False, class_label="Cat")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.parametrize("fmt", ["imagefolder", "save_to_disk"])
def test_a_failed_export_leaves_no_partial_folder_and_names_the_file(cgan, tmp_path, fmt, monkeypatch, capsys):
    import errno
    from pathlib import Path

    real, written = Path.write_bytes, []

    def disk_fills_up(self, data):  # the fourth image does not fit
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        written.append(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_fills_up)
    if fmt == "save_to_disk":  # the data set is complete, then saving it fails
        monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", lambda self, path, **kw: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "train" / "data-00000-of-00001.arrow"))))
    assert main(["generate", str(cgan), "--n", "12", "--out", str(tmp_path / "out"), "--format", fmt, "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err
    if fmt == "imagefolder":  # the file named where it would have been, in the requested folder
        assert re.search(re.escape(str(tmp_path / "out" / "train")) + r"/[^/]+/0000003\.png", err), err
    else:
        assert str(tmp_path / "out" / "train" / "data-00000-of-00001.arrow") in err, err
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no staging left behind


def test_large_sets_stream_batch_by_batch(cgan):
    from genkit.synthetic import generate_batches

    batches = generate_batches(load_family(str(cgan)), 1000, batch_size=64, progress=False)
    first = next(batches)  # a generator: nothing beyond the first batch exists yet
    assert first[0].shape == (64, 1, 28, 28) and first[0].dtype == torch.uint8
    assert sum(len(labels) for _, labels in batches) == 1000 - 64


def test_unconditional_models_are_labelled_by_the_classifier(tiny_idx, tmp_path, capsys):
    run = tmp_path / "vae"
    train(tiny_config(tiny_idx, run, family="vae", model={"hidden_dims": [16], "latent_dim": 4}, max_steps=4))
    assert main(["generate", str(run), "--n", "20", "--out", str(tmp_path / "out")]) == 0
    assert "evaluation classifier" in last_json(capsys.readouterr().out)["labels"]
    ds = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    assert len(ds) == 20 and ds.features["label"].names == [str(i) for i in range(10)]
    assert main(["generate", str(run), "--n", "5", "--out", str(tmp_path / "o2"), "--class-label", "3"]) == 2
    assert "not class-conditional" in capsys.readouterr().err


def test_push_dataset_offline(cgan, tmp_path, monkeypatch, capsys):
    hub = Recorder(monkeypatch)
    assert main(["generate", str(cgan), "--n", "20", "--out", str(tmp_path / "pq"), "--push-to-hub", "someone/synthetic-fashion", "--private"]) == 0
    assert hub.calls[0] == ("create_repo", "someone/synthetic-fashion", {"private": True, "exist_ok": True, "repo_type": "dataset"})
    assert hub.calls[1][2]["repo_type"] == "dataset" and hub.calls[1][2]["allow_patterns"] == ["train-*.parquet", "README.md", "genkit_generation.json"]
    card = (tmp_path / "pq" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["configs"][0]["data_files"][0]["path"] == "train-*.parquet"
    assert meta["dataset_info"]["features"][1]["dtype"]["class_label"]["names"][0] == "T-shirt/top"
    # provenance: the license, the generating model (a local run here: named, not linked) and what it learnt from
    assert meta["license"] == "apache-2.0" and meta["source_datasets"] == ["zalando-datasets/fashion_mnist"]
    assert "**Source model**: the local run `cgan` (not on the Hub), trained on [zalando-datasets/fashion_mnist]" in card
    from genkit.synthetic import dataset_card

    info = json.loads((tmp_path / "pq" / "genkit_generation.json").read_text())
    assert info["source_model"] is None and info["trained_on"] == "zalando-datasets/fashion_mnist"
    linked = dataset_card({**info, "source_model": "someone/cgan"}, "parquet")
    assert "**Source model**: [someone/cgan](https://huggingface.co/someone/cgan), trained on" in linked
    assert main(["generate", str(cgan), "--n", "5", "--out", str(tmp_path / "x"), "--format", "imagefolder", "--push-to-hub", "a/b"]) == 2


def test_push_dataset_refuses_symlinks(tmp_path, monkeypatch):
    from genkit.config import ConfigError
    from genkit.synthetic import push_dataset

    hub = Recorder(monkeypatch)
    (tmp_path / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (tmp_path / "README.md").symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match="README.md"):
        push_dataset(tmp_path, "someone/data")
    assert hub.calls == []


def test_classification_accuracy_score_on_a_tiny_run(cgan):
    from genkit.evaluation import classification_accuracy_score

    family = load_family(str(cgan))
    result = classification_accuracy_score(family, num_images=100, real_subset=30, steps=30, test_images=64)
    for key in ["cas", "cas_real_baseline", "augment_real_only", "augment_real_plus_generated"]:
        assert 0 <= result[key] <= 1
    assert result["cas_real_baseline"] > 0.5  # the tiny data's classes (bars at ten heights) are easy for real images
    assert result["cas_ratio"] == pytest.approx(result["cas"] / result["cas_real_baseline"])
    assert result["augment_gain"] == pytest.approx(result["augment_real_plus_generated"] - result["augment_real_only"])


def test_som_orders_clusters_and_ica_unmixes_sources():
    from genkit.latents import ica_components, som_scores

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 6
    labels = np.repeat(np.arange(3), 200)
    points = centers[labels] + rng.normal(size=(600, 5))
    scores, som, z, y = som_scores(points, labels, 3, rows=6, cols=6)
    assert scores["ari"] > 0.9 and scores["unit_purity"] > 0.95 and scores["topographic_error"] < 0.2
    assert som.u_matrix().shape == (6, 6) and som.class_map(z, y).shape == (6, 6)
    one_unit = np.linalg.norm(z - z.mean(0), axis=1).mean()  # the error of a map with a single unit
    assert scores["quantization_error"] < 0.5 * one_unit
    sources = np.stack([rng.uniform(-1, 1, 2000), np.sign(rng.normal(size=2000)) * rng.exponential(size=2000)], 1)
    mixed = sources @ np.array([[1.0, 0.6], [0.4, 1.0]])
    recovered = ica_components(mixed)
    correlation = np.abs(np.corrcoef(recovered.T, sources.T)[:2, 2:])
    assert (correlation.max(1) > 0.95).all()
