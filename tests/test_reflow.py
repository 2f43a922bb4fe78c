"""Reflow (2-rectified flow): `genkit reflow-pairs` writes (noise, image, label) drawn from a flow run's own sampler, and a
flow run trained on that folder regresses along the straight line from each image's own noise."""

import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import REPO, tiny_config

from genkit.cli import main
from genkit.engine import train
from genkit.families.diffusion import DiffusionFamily
from genkit.reflow import MARKER, PairedNoise
from genkit.runs import load_family


def flow_config(tiny_idx, out, **overrides):
    return tiny_config(tiny_idx, out, family="diffusion", model={"preset": "tiny", "objective": "flow_matching", "class_conditional": True,
                                                                 "sample_steps": 2, "guidance_scale": 1.5},
                       num_samples=10, max_steps=2, eval_every=2, checkpoint_every=2, **overrides)


@pytest.fixture(scope="module")
def pairs(tiny_idx, tmp_path_factory):
    root = tmp_path_factory.mktemp("reflow")
    train(flow_config(tiny_idx, root / "flow", data={"value_range": "-1,1"}))
    assert main(["reflow-pairs", str(root / "flow"), "--n", "12", "--out", str(root / "pairs"), "--batch-size", "5", "--seed", "3"]) == 0
    return root


def test_pairs_are_the_runs_own_samples_of_their_noise(pairs):
    info = json.loads((pairs / "pairs" / MARKER).read_text())
    assert info["num_pairs"] == 12 and info["steps"] == 2 and info["guidance_scale"] == 1.5
    ds = datasets.load_from_disk(str(pairs / "pairs"))
    assert len(ds) == 12 and ds["label"][:11] == [i % 10 for i in range(11)]
    family = load_family(str(pairs / "flow"))
    noise = torch.tensor(np.asarray(ds.with_format("numpy")["noise"][:3]))
    again = family.pipeline()(3, torch.tensor(ds["label"][:3]), 1.5, 2, latents=noise, output_type="pt").images
    stored = torch.tensor(np.stack([np.asarray(im) for im in ds["image"][:3]]))[:, None].float() / 255
    assert (again - stored).abs().max() <= 1 / 255 + 1e-6
    assert main(["reflow-pairs", str(pairs / "flow"), "--n", "2", "--out", str(pairs / "pairs")]) == 2  # never overwrites
    assert main(["reflow-pairs", str(pairs / "flow"), "--n", "2", "--guidance-scale", "nan", "--out", str(pairs / "nan")]) == 2
    assert not (pairs / "nan").exists()


def test_a_run_on_the_pairs_trains_towards_each_images_own_noise(pairs, tmp_path):
    config = flow_config(pairs / "unused", tmp_path / "reflow", data={"source": str(pairs / "pairs"), "data_dir": None, "value_range": "-1,1"})
    info = SimpleNamespace(channels=1, image_size=28, num_classes=10, class_names=[str(i) for i in range(10)])
    family = DiffusionFamily(config, info)
    seen = {}

    class Recorder(torch.nn.Module):
        config = family.models["unet"].config

        def forward(self, x, t, class_labels=None):
            seen["x"], seen["s"] = x, t / 1000
            return SimpleNamespace(sample=torch.zeros_like(x))

    family.models["unet"] = Recorder()
    ds = datasets.load_from_disk(str(pairs / "pairs")).with_format("numpy")
    images = torch.tensor(np.asarray(ds["image"][4:8])).float()[:, None] / 255 * 2 - 1
    family.loss("unet", {"image": images, "label": torch.tensor(ds["label"][4:8])}, torch.Generator().manual_seed(0))
    s = seen["s"].view(-1, 1, 1, 1)
    used = (seen["x"] - (1 - s) * images) / s
    assert torch.allclose(used, torch.tensor(np.asarray(ds["noise"][4:8])), atol=1e-4)
    with pytest.raises(ValueError, match="not in the reflow pairs folder"):
        PairedNoise(pairs / "pairs")(torch.zeros(1, 1, 28, 28))
    # and the engine trains a flow run on the folder, starting from the flow run
    summary = train(flow_config(pairs, tmp_path / "run", data={"source": str(pairs / "pairs"), "data_dir": None, "value_range": "-1,1"},
                                init_from=str(pairs / "flow"), batch_size=4))
    assert summary["step"] == 2 and load_family(str(tmp_path / "run")).generate(2, torch.Generator().manual_seed(0), steps=1).shape == (2, 1, 28, 28)


def test_meanflow_on_the_pairs_regresses_from_each_images_own_noise(pairs, tmp_path):
    """Reflow + MeanFlow (the best 1-NFE row of docs/one-step.md): MeanFlow's path also starts at each image's own noise."""
    config = flow_config(pairs, tmp_path / "mf", data={"source": str(pairs / "pairs"), "data_dir": None, "value_range": "-1,1"},
                         init_from=str(pairs / "flow"), batch_size=4)
    config.model.update(objective="mean_flow", mf_ratio=0.0, mf_omega=1.0, mf_jvp="fd")  # r = t: the target is v = e - x, exactly
    info = SimpleNamespace(channels=1, image_size=28, num_classes=10, class_names=[str(i) for i in range(10)])
    family = DiffusionFamily(config, info)
    seen = {}
    unet = family.models["unet"]

    def record(x, t, class_labels=None):
        seen["x"], seen["s"] = x[:, :1], t / 1000
        return SimpleNamespace(sample=torch.zeros_like(x[:, :1]))

    unet.forward = record
    ds = datasets.load_from_disk(str(pairs / "pairs")).with_format("numpy")
    images = torch.tensor(np.asarray(ds["image"][4:8])).float()[:, None] / 255 * 2 - 1
    family.loss("unet", {"image": images, "label": torch.tensor(ds["label"][4:8])}, torch.Generator().manual_seed(0))
    s = seen["s"].view(-1, 1, 1, 1)
    assert torch.allclose((seen["x"] - (1 - s) * images) / s, torch.tensor(np.asarray(ds["noise"][4:8])), atol=1e-4)
    summary = train(config)
    assert summary["step"] == 2 and load_family(str(tmp_path / "mf")).generate(2, torch.Generator().manual_seed(0)).shape == (2, 1, 28, 28)


def test_the_shipped_distill_config_trains_on_the_pairs_at_the_samplers_times(pairs, tmp_path):
    """reflow_distill_mnist.yaml (the best 1-NFE row of docs/one-step.md): from the teacher, on its pairs, only at t = 1
    and 1/2, and its run samples in one step with no CFG."""
    from genkit.config import TrainConfig

    config = TrainConfig.load(str(REPO / "training" / "configs" / "reflow_distill_mnist.yaml")).with_overrides(
        [f"data.source={pairs / 'pairs'}", f"init_from={pairs / 'flow'}", f"output_dir={tmp_path / 'run'}", "max_train_seconds=null",
         "max_steps=3", "batch_size=4", "eval_batches=1", "num_samples=4", "log_with=none", "progress_bar=false"])
    info = SimpleNamespace(channels=1, image_size=28, num_classes=10, class_names=[str(i) for i in range(10)])
    family = DiffusionFamily(config, info)
    assert set(family.flow_times(1000, torch.Generator().manual_seed(0), "cpu").tolist()) == {0.5, 1.0}
    assert train(config)["step"] == 3
    run = load_family(str(tmp_path / "run"))
    assert run.option("sample_steps") == 1 and run.option("guidance_scale") == 1.0 and run.paired_noise is not None
    calls = []
    unet = run.models["unet"]
    forward = unet.forward
    unet.forward = lambda *a, **k: calls.append(len(a[0])) or forward(*a, **k)
    assert run.generate(3, torch.Generator().manual_seed(0), torch.tensor([1, 2, 3])).shape == (3, 1, 28, 28)
    assert calls == [3]  # one evaluation, unguided
