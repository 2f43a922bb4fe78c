"""Pretrained feature spaces (Inception, DINOv2, CLIP) with randomly initialised weights saved to files, and genkit eval
in them: Inception FID equals torchmetrics' on the same images and weights; real features are cached."""

import json
from unittest import mock

import pytest
import torch
from conftest import tiny_config

from genkit.cli import main
from genkit.config import ConfigError, DataConfig
from genkit.evaluation import evaluate_generation, evaluate_run, fd_kid, feature_space, real_images, to_unit
from genkit.evaluation.features import INCEPTION_FILE, FeatureSpace


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torch-fidelity's Inception-v3, randomly initialised (variance-preserving, so features differ between images), saved."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        model = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Tiny random DINOv2 and CLIP vision models with their image processors, saved as local folders."""
    from transformers import BitImageProcessor, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
                ).save_pretrained(root / "dinov2")
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "dinov2")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                   image_size=32, patch_size=8, projection_dim=16)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    return {"dinov2": str(root / "dinov2"), "clip": str(root / "clip")}


def test_inception_fid_equals_torchmetrics_on_the_same_images_and_weights(tiny_idx, inception_file):
    from torchmetrics.image.fid import FrechetInceptionDistance

    data = DataConfig(source="mnist", data_dir=str(tiny_idx))
    real = real_images(data, "test", 3).images  # uint8 grey images; few, as Inception at 299x299 is slow on a CPU
    fake = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    space = feature_space("inception", data, weights=str(inception_file))
    features = space.extract(torch.cat([real, fake]).float() / 255)
    assert features.shape == (6, 2048)
    ours = fd_kid(features[:3], features[3:])["fd"]  # genkit's float64 Fréchet distance on Inception features: FID
    reference = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_file), antialias=False)  # torch-fidelity's resize
    reference.update(real.repeat(1, 3, 1, 1), real=True)
    reference.update(fake.repeat(1, 3, 1, 1), real=False)
    expected = reference.compute().item()
    assert expected > 1e-3 and abs(ours - expected) <= 1e-4 * max(1.0, expected)


def test_missing_or_unusable_weights_are_one_line_errors(tiny_idx, tmp_path, monkeypatch):
    data = DataConfig(source="mnist", data_dir=str(tiny_idx))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch cache; the tests run with HF_HUB_OFFLINE=1
    monkeypatch.delenv("GENKIT_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ConfigError, match=f"{INCEPTION_FILE} not found: download https://.*GENKIT_INCEPTION_WEIGHTS") as err:
        feature_space("inception", data)
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="holds no Inception-v3 weights"):
        feature_space("inception", data, weights=str(tmp_path / "junk.pth"))
    with pytest.raises(ConfigError, match="neither a local folder nor in the Hugging Face cache: download it once with `hf download nobody/none`"):
        feature_space("dinov2", data, weights="nobody/none")


def test_eval_rejects_unknown_spaces_and_unattributed_weights(capsys):
    assert main(["eval", "no-such-run", "--features", "vgg"]) == 2
    assert "unknown feature space 'vgg'" in capsys.readouterr().err
    assert main(["eval", "no-such-run", "--features", "inception", "dinov2", "--feature-weights", "w.pth"]) == 2
    assert "say which space it is for" in capsys.readouterr().err
    assert main(["eval", "no-such-run", "--features", "classifier", "--feature-weights", "w.pth"]) == 2
    assert main(["eval", "no-such-run", "--features", "genkit", "--feature-weights", "genkit=w.pth"]) == 2


def test_eval_in_dinov2_and_clip_space_with_cached_real_features(tiny_idx, tmp_path, hf_models, monkeypatch, capsys):
    from genkit.engine import train

    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "vae"
    train(tiny_config(tiny_idx, run, family="vae", model={"latent_dim": 4, "hidden_dims": [32]}, max_steps=4))
    extracted = []
    original = FeatureSpace.extract
    monkeypatch.setattr(FeatureSpace, "extract", lambda self, images: extracted.append((self.name, len(images))) or original(self, images))
    args = ["eval", str(run), "--num-samples", "16", "--nll-k", "2", "--nll-images", "8", "--features", "classifier", "dinov2,clip",
            "--feature-weights", f"dinov2={hf_models['dinov2']}", "--feature-weights", f"clip={hf_models['clip']}"]
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert json.loads((run / "eval_results.json").read_text()) == result
    assert result["num_samples"] == 16 and result["reference_split"] == "test" and result["feature_spaces"] == "genkit,dinov2,clip"
    assert result["feature_network"] == "genkit-mnist-v1" and result["dinov2_feature_network"] == "dinov2"
    assert "dinov2 space is biased upward below 10,000" in result["warning"]
    for prefix in ("", "dinov2_", "clip_"):
        assert result[f"{prefix}fd"] > result[f"{prefix}fd_test_floor"] >= 0 and result[f"{prefix}fd_train_floor"] >= 0
        assert all(0 <= result[f"{prefix}{key}"] <= 1 for key in ("precision", "recall", "coverage", "precision_test_floor", "coverage_train_floor"))
        assert result[f"{prefix}density"] >= 0 and prefix + "feature_space" in result
    assert result["clip_cmmd"] > 0 and "cmmd" not in result and "dinov2_cmmd" not in result
    assert not any("fid" in key for key in result)  # FID is Inception's only
    assert sorted(extracted) == sorted([(space, 16) for space in ("genkit", "dinov2", "clip") for _ in range(4)])  # 3 real sets + samples
    extracted.clear()
    assert main(args) == 0  # the real images' features come from the cache: only the samples go through the extractors
    assert sorted(extracted) == [("clip", 16), ("dinov2", 16), ("genkit", 16)]
    again = json.loads((run / "eval_results.json").read_text())
    assert again["dinov2_fd"] == pytest.approx(result["dinov2_fd"]) and again["fd_train_floor"] == pytest.approx(result["fd_train_floor"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights anywhere: one line, exit 2, before any work
    monkeypatch.delenv("GENKIT_INCEPTION_WEIGHTS", raising=False)
    capsys.readouterr()
    assert main(["eval", str(run), "--features", "inception"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INCEPTION_FILE in err and "--feature-weights inception=FILE" in err


@pytest.mark.parametrize("family", ["gan", "rbm"])
def test_every_sampling_family_reports_fd_and_prdc(tiny_idx, tmp_path, family):
    from genkit.engine import train
    from genkit.runs import load_family

    model = {"width": 8, "latent_dim": 8} if family == "gan" else {"hidden": 16, "sample_steps": 5}
    train(tiny_config(tiny_idx, tmp_path / family, family=family, model=model, max_steps=2,
                      data={"value_range": "-1,1"} if family == "gan" else {}))
    result = evaluate_generation(load_family(str(tmp_path / family)), num_samples=8)
    assert {"fd", "kid", "precision", "recall", "density", "coverage", "fd_train_floor", "recall_test_floor"} <= set(result)
    assert result["fd"] > 0 and 0 <= result["precision"] <= 1
    assert all(isinstance(value, (int, float)) for value in result.values())  # numbers only: the training loop logs them


def test_autoencoders_that_cannot_sample_get_no_fd(tiny_idx, tmp_path):
    from genkit.engine import train
    from genkit.runs import load_family

    train(tiny_config(tiny_idx, tmp_path / "ae", max_steps=2))
    result = evaluate_run(load_family(str(tmp_path / "ae")), num_samples=8, features=["inception"])  # no weights needed: nothing to score
    assert "mse" in result and "fd" not in result and "inception_fid" not in result and "precision" not in result


def test_features_of_the_same_images_give_zero_distance(tiny_idx, hf_models):
    data = DataConfig(source="mnist", data_dir=str(tiny_idx))
    images = to_unit(real_images(data, "test", 8))
    for name in ("dinov2", "clip"):
        features = feature_space(name, data, weights=hf_models[name]).extract(images)
        assert features.shape[0] == 8 and abs(fd_kid(features, features)["fd"]) < 1e-4
