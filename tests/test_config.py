import json

import pytest

from genkit.config import ConfigError, DataConfig, TrainConfig


def test_yaml_and_json_round_trip(tmp_path):
    config = TrainConfig(family="autoencoder", model={"hidden_dims": [64, 32]}, data=DataConfig(subset=100, image_size=32), learning_rate=3e-4)
    for name in ["c.yaml", "c.json"]:
        config.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == config
    assert json.loads((tmp_path / "c.json").read_text())["data"]["subset"] == 100


def test_overrides_parse_values_and_nesting():
    config = TrainConfig().with_overrides(["data.subset=500", "learning_rate=1e-4", "model.hidden_dims=[128,16]", "ema_decay=null"])
    assert config.data.subset == 500 and config.learning_rate == 1e-4
    assert config.model == {"hidden_dims": [128, 16]} and config.ema_decay is None


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batchsize": 3}, "unknown config key(s) batchsize"),
        ({"data": {"sorce": "mnist"}}, "data.sorce"),
        ({"batch_size": "big"}, "batch_size must be of type int"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"data": {"value_range": "0,255"}}, "data.value_range"),
        ({"data": {"corruption": "blur"}}, "data.corruption"),
        ({"trainable_layers": 2}, "needs init_from"),
        ({"ema_decay": 1.5}, "ema_decay must be in (0, 1)"),
        ({"push_to_hub": True}, "needs hub_model_id"),
        ({"data": 3}, "data must be a mapping"),
    ],
)
def test_bad_configs_name_the_problem(values, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values)
    assert message in str(err.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        TrainConfig().with_overrides(["learning_rate"])
    with pytest.raises(ConfigError, match="unknown config section"):
        TrainConfig().with_overrides(["optim.lr=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("family: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.load(tmp_path / "list.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml")):
        TrainConfig.load(path)


@pytest.mark.parametrize("overrides, message", [
    (["epochs=.inf"], "epochs must be a finite number"),
    (["learning_rate=.nan"], "learning_rate must be a finite number"),
    (["model.hidden_dims=abc"], "model.hidden_dims must be a list of int like its default [64, 32], got 'abc'"),
    (["model.hidden_dims=[64, x]"], "model.hidden_dims must be a list of int"),
    (["model.latent_dim=1.5"], "model.latent_dim must be an integer"),
    (["model.linear=maybe"], "model.linear must be true or false"),
])
def test_mistyped_values_are_named_before_training(overrides, message, tmp_path):
    from genkit.engine import train

    with pytest.raises(ConfigError) as caught:
        train(TrainConfig(output_dir=str(tmp_path / "run")).with_overrides(overrides))
    assert message in str(caught.value)


def test_model_options_survive_the_json_round_trip(tmp_path):
    config = TrainConfig(model={"l2_weight": 1e-6, "hidden_dims": [8]})
    config.save(tmp_path / "training_config.json")
    assert TrainConfig.load(tmp_path).model == {"l2_weight": 1e-6, "hidden_dims": [8]}  # not the string '1e-06'
