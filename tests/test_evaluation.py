import json

import pytest
import torch
from conftest import tiny_config

from genkit.cli import main
from genkit.config import DataConfig
from genkit.evaluation import (
    class_accuracy,
    feature_distances,
    floors,
    get_classifier,
    real_images,
    to_unit,
)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_classifier_is_trained_once_and_cached(tiny_idx, cache):
    data = DataConfig(source="mnist", data_dir=str(tiny_idx))
    clf = get_classifier(data, epochs=4)
    folders = list((cache / "classifiers").iterdir())
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    mtime = (folders[0] / "model.safetensors").stat().st_mtime
    again = get_classifier(data, epochs=4)
    assert (folders[0] / "model.safetensors").stat().st_mtime == mtime
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))
    test = real_images(data, "test", 64)
    assert class_accuracy(to_unit(test), test.labels, clf) > 0.9  # the synthetic classes are easy


def test_fid_separates_real_from_fake_and_has_a_floor(tiny_idx, cache):
    data = DataConfig(source="mnist", data_dir=str(tiny_idx))
    clf = get_classifier(data, epochs=4)
    train, test = to_unit(real_images(data, "train", 200)), to_unit(real_images(data, "test", 64))
    floor = feature_distances(test, train, clf)
    noise = feature_distances(test, torch.rand(200, 1, 28, 28), clf)
    assert floor["fid"] >= 0 and noise["fid"] > 5 * floor["fid"] and noise["kid"] > floor["kid"]
    again = feature_distances(test, torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1)), clf)
    twice = feature_distances(test, torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1)), clf)
    assert again["kid"] == twice["kid"] and again["kid_std"] == twice["kid_std"]  # seeded subsets: one score per image set
    both = floors(data, test[:32], test[32:], clf)  # the training-data floor: as many training images against the same reference
    assert both["fid_train_floor"] == pytest.approx(feature_distances(test[:32], train[:32], clf)["fid"])
    assert both["fid_real_floor"] == pytest.approx(feature_distances(test[:32], test[32:], clf)["fid"])


def test_eval_command_on_a_diffusion_run(tiny_idx, tmp_path, cache, capsys):
    from genkit.engine import train

    cfg = tiny_config(tiny_idx, tmp_path / "run", family="diffusion", model={"preset": "tiny", "sample_steps": 2, "class_conditional": True},
                      data={"value_range": "-1,1"}, max_steps=2, num_samples=10)
    train(cfg)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--num-samples", "32", "--steps", "2", "--scheduler", "ddim"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    for line in ["genkit: generation metrics of 32 samples in classifier space ...", "genkit: generating 32 images to score",
                 "genkit: generation metrics of 32 samples in classifier space: done after"]:  # what runs, on stderr
        assert line in captured.err, captured.err
    result = json.loads(out[out.index("{"):])
    assert result["num_samples"] == 32 and result["fid"] > result["fid_real_floor"] >= 0 and result["fid_train_floor"] >= 0
    assert 0 <= result["class_accuracy"] <= 1 and "kid" in result
    assert all(0 <= result[key] <= 1 for key in ("precision", "recall", "coverage", "recall_real_floor", "precision_train_floor"))
    assert result["reference_split"] == "test" and result["feature_spaces"] == "classifier" and "warning" not in result  # no warning in classifier space
    assert json.loads((tmp_path / "run" / "eval_results.json").read_text()) == result
    assert main(["sample", str(tmp_path / "run"), "--n", "4", "--steps", "2", "--class-label", "3", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    assert main(["sample", str(tmp_path / "run"), "--class-label", "cat"]) == 2
    assert "neither a class index" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "run"), "--scheduler", "plms"]) == 2


def test_too_few_real_images_for_the_floor_is_a_clear_error(tiny_idx, cache):
    from genkit.config import ConfigError
    from genkit.evaluation import real_pair

    a, b = real_pair(DataConfig(source="mnist", data_dir=str(tiny_idx)), 32)
    assert a.shape == b.shape == (32, 1, 28, 28) and not torch.equal(a, b)
    with pytest.raises(ConfigError, match="too few for two disjoint sets"):
        real_pair(DataConfig(source="mnist", data_dir=str(tiny_idx)), 40)


def test_reference_sets_fall_back_to_halves_when_the_split_is_short(tiny_idx, cache):
    from genkit.config import ConfigError
    from genkit.evaluation import reference_sets

    data = DataConfig(source="mnist", data_dir=str(tiny_idx))  # 64 test images
    real, (a, b) = reference_sets(data, 32)
    assert torch.equal(a, real) and len(b) == 32 and not torch.equal(a, b)
    real, (a, b) = reference_sets(data, 40)  # the protocol of 10,000 samples against MNIST's 10,000 test images, in small
    assert len(real) == 40 and torch.equal(torch.cat([a, b]), real) and len(a) == len(b) == 20
    with pytest.raises(ConfigError, match="fewer than the 65 samples"):
        reference_sets(data, 65)
