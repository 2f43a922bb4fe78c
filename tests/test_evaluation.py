import json

import pytest
import torch
from conftest import tiny_config

from genkit.cli import main
from genkit.config import DataConfig
from genkit.evaluation import (
    class_accuracy,
    feature_distances,
    feature_space,
    floors,
    get_classifier,
    protocol,
    real_images,
    to_unit,
)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_machine_local_classifier_is_trained_once_and_cached(tiny_idx, cache):
    data = DataConfig(source=str(tiny_idx))  # a data set genkit ships no network for: a classifier trained here, labelled machine-local
    clf = get_classifier(data, epochs=4)
    folders = list((cache / "classifiers").iterdir())
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    mtime = (folders[0] / "model.safetensors").stat().st_mtime
    again = get_classifier(data, epochs=4)
    assert (folders[0] / "model.safetensors").stat().st_mtime == mtime
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))
    test = real_images(data, "test", 64)
    assert class_accuracy(to_unit(test), test.labels, clf) > 0.9  # the synthetic classes are easy
    space = feature_space("genkit", data)
    assert space.network == "machine-local-classifier" and "machine-local" in space.description
    assert "machine_local" in protocol(data, 8, [space])


def test_shipped_network_is_the_default_space_of_mnist_and_fashion_mnist(tiny_idx, cache):
    from genkit.feature_nets import FeatureNet

    for source, name in [("mnist", "genkit-mnist-v1"), ("fashion-mnist", "genkit-fashion-mnist-v1"), ("fashion_mnist", "genkit-fashion-mnist-v1")]:
        model = get_classifier(DataConfig(source=source, data_dir=str(tiny_idx)))
        assert isinstance(model, FeatureNet) and model.name == name
    space = feature_space("classifier", DataConfig(source="mnist", data_dir=str(tiny_idx)))  # the old name of the default space
    assert space.name == "genkit" and space.network == "genkit-mnist-v1" and "sha256" in space.description
    assert not (cache / "classifiers").exists()  # nothing trained


def test_fd_separates_real_from_fake_and_has_a_floor(tiny_idx, cache):
    data = DataConfig(source=str(tiny_idx))
    clf = get_classifier(data, epochs=4)
    train, test = to_unit(real_images(data, "train", 200)), to_unit(real_images(data, "test", 64))
    floor = feature_distances(test, train, clf)
    noise = feature_distances(test, torch.rand(200, 1, 28, 28), clf)
    assert floor["fd"] >= 0 and noise["fd"] > 5 * floor["fd"] and noise["kid"] > floor["kid"]
    again = feature_distances(test, torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1)), clf)
    twice = feature_distances(test, torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1)), clf)
    assert again["kid"] == twice["kid"] and again["kid_std"] == twice["kid_std"]  # seeded subsets: one score per image set
    both = floors(data, test[:32], test[32:], clf)  # the training-data floor: as many training images against the same reference
    assert set(both) >= {"fd_train_floor", "fd_test_floor", "kid_test_floor", "recall_train_floor"} and not any("fid" in key for key in both)
    assert both["fd_test_floor"] == pytest.approx(feature_distances(test[:32], test[32:], clf)["fd"])


def test_eval_command_on_a_diffusion_run(tiny_idx, tmp_path, cache, capsys):
    from genkit.engine import train

    cfg = tiny_config(tiny_idx, tmp_path / "run", family="diffusion", model={"preset": "tiny", "sample_steps": 2, "class_conditional": True},
                      data={"value_range": "-1,1"}, max_steps=2, num_samples=10)
    train(cfg)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--num-samples", "32", "--steps", "2", "--scheduler", "ddim"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    for line in ["genkit: generation metrics of 32 samples in genkit-mnist-v1 space ...", "genkit: generating 32 images to score",
                 "genkit: generation metrics of 32 samples in genkit-mnist-v1 space: done after"]:  # what runs, on stderr
        assert line in captured.err, captured.err
    result = json.loads(out[out.index("{"):])
    assert result["num_samples"] == 32 and result["fd"] > result["fd_test_floor"] >= 0 and result["fd_train_floor"] >= 0
    assert not any("fid" in key for key in result)  # genkit's space is not Inception's: FD, never FID
    assert 0 <= result["class_accuracy"] <= 1 and "kid" in result
    assert all(0 <= result[key] <= 1 for key in ("precision", "recall", "coverage", "recall_test_floor", "precision_train_floor"))
    assert result["reference_split"] == "test" and result["feature_spaces"] == "genkit" and "warning" not in result  # no warning in genkit's space
    # the protocol beside the figures: N, reference, network + version, sampler and NFE, guidance, seed
    assert result["feature_network"] == "genkit-mnist-v1" and result["sampler"] == "ddim" and result["nfe"] == 2 and result["seed"] == 0
    assert result["guidance"] > 0 and result["reference_selection"].startswith("seeded shuffle") and "machine_local" not in result
    assert json.loads((tmp_path / "run" / "eval_results.json").read_text()) == result
    from huggingface_hub import ModelCard

    from genkit.hub import model_card

    card = model_card(tmp_path / "run", "someone/diffusion")  # model-index: named with the network, never FID; the protocol beside it
    scores = {r.metric_type: r for r in ModelCard(card).data.eval_results}
    fd = scores["FD_genkit-mnist-v1"]
    assert fd.metric_value == pytest.approx(result["fd"]) and "KID_genkit-mnist-v1" in scores and "FD_genkit-mnist-v1_test_floor" in scores
    assert not any("fid" in key.lower() for key in scores)
    assert fd.metric_args["num_samples"] == 32 and fd.metric_args["feature_network"] == "genkit-mnist-v1" and fd.metric_args["sampler"] == "ddim"
    assert fd.metric_args["nfe"] == 2 and fd.metric_args["seed"] == 0 and fd.metric_args["train_cpu_seconds"] > 0
    assert "Protocol of the generation scores: N 32, reference split test" in card
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


def test_reference_sets_are_a_seeded_shuffle_of_the_split_not_its_first_rows(tiny_idx, cache):
    from genkit.data import load_split
    from genkit.eval_classifier import classifier_data_config
    from genkit.evaluation.reference import shuffled

    data = DataConfig(source="mnist", data_dir=str(tiny_idx))
    split = load_split(classifier_data_config(data), "test")
    drawn = real_images(data, "test", 16)
    assert torch.equal(drawn.images, split.images[shuffled(len(split))[:16]]) and not torch.equal(drawn.images, split.images[:16])
    assert torch.equal(real_images(data, "test", 16).images, drawn.images)  # the same on every call and machine (seeded)


def test_a_damaged_or_replaced_network_file_is_refused(tmp_path, monkeypatch):
    import shutil

    import genkit.feature_nets as nets
    from genkit.config import ConfigError

    shutil.copy(nets.NETWORKS["genkit-mnist-v1"].path, tmp_path / "genkit-mnist-v1.safetensors")
    monkeypatch.setattr(nets, "WEIGHTS_DIR", tmp_path)
    nets._load.cache_clear()
    try:
        assert nets.load_network("genkit-mnist-v1").name == "genkit-mnist-v1"
        nets._load.cache_clear()
        with open(tmp_path / "genkit-mnist-v1.safetensors", "r+b") as f:  # one byte of the weights changed
            f.seek(-3, 2)
            f.write(b"\x01")
        with pytest.raises(ConfigError, match="has sha256 .* not .*reinstall genkit"):
            nets.load_network("genkit-mnist-v1")
        (tmp_path / "genkit-mnist-v1.safetensors").unlink()
        with pytest.raises(ConfigError, match="is missing: reinstall genkit"):
            nets.load_network("genkit-mnist-v1")
        with pytest.raises(ConfigError, match="unknown feature network 'genkit-cifar-v9'"):
            nets.load_network("genkit-cifar-v9")
    finally:
        nets._load.cache_clear()
