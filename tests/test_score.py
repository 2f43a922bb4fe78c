"""`genkit score` and the shipped feature networks: any images scored in the same space, the same figure everywhere.

Pinned figures: the features of a fixed batch and the score of a fixed sample file (tests/data/score_samples.npz, 64
drawn shapes) are stored here; another process with other thread counts must give the same figures.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_MNIST

from genkit.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "score_samples.npz"
# genkit-mnist-v1's features of the first 8 images of SAMPLES: per image, the sum and the L2 norm of its 64 features
PINNED_FEATURES = {"sum": [130.20327, 140.938006, 138.144124, 161.900625, 85.110894, 129.136747, 144.696515, 126.860116],
                   "norm": [26.871169, 30.911498, 29.000172, 34.066454, 17.143137, 25.446027, 29.533353, 25.709232]}
PINNED_SCORE = {"fd": 15.546785, "kid": -49.820411}  # SAMPLES against its mirror image (flipped left-right), all 64 images, genkit-mnist-v1
needs_mnist = pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="the real MNIST is not in ../shared/data")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fixed_images() -> torch.Tensor:
    with np.load(SAMPLES) as f:
        return torch.from_numpy(f["images"]).float()[:, None] / 255


def mirror(tmp_path: Path) -> Path:
    """SAMPLES flipped left-right, as a .npy array: a fixed second set."""
    with np.load(SAMPLES) as f:
        np.save(tmp_path / "mirror.npy", f["images"][:, :, ::-1].copy())
    return tmp_path / "mirror.npy"


def run_score(args: list[str], capsys) -> dict:
    capsys.readouterr()
    assert main(["score", *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_features_of_a_fixed_batch_match_the_stored_digest():
    from genkit.feature_nets import extract, load_network

    features = extract(load_network("genkit-mnist-v1"), fixed_images()[:8])
    assert features.dtype == torch.float64 and features.shape == (8, 64)
    assert features.sum(1).tolist() == pytest.approx(PINNED_FEATURES["sum"], abs=1e-4)
    assert features.norm(dim=1).tolist() == pytest.approx(PINNED_FEATURES["norm"], abs=1e-4)


def test_score_of_the_fixed_sample_file_is_pinned_and_the_same_with_other_thread_counts(tmp_path, cache, capsys):
    ref = mirror(tmp_path)
    result = run_score([str(SAMPLES), "--ref", str(ref), "--network", "genkit-mnist-v1", "--out", str(tmp_path / "s.json")], capsys)
    assert result["fd"] == pytest.approx(PINNED_SCORE["fd"], abs=1e-4) and result["kid"] == pytest.approx(PINNED_SCORE["kid"], abs=1e-4)
    assert result["num_samples"] == result["reference_images"] == 64 and result["feature_network"] == "genkit-mnist-v1"
    assert json.loads((tmp_path / "s.json").read_text()) == result
    assert 0 <= result["class_accuracy"] <= 1  # the .npz carries labels
    # a second process with other thread counts: the same figures (features and statistics in float64)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    code = f"import torch, sys; torch.set_num_threads(2); from genkit.cli import main; sys.exit(main(['score', {str(SAMPLES)!r}, '--ref', {str(ref)!r}]))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    other = json.loads(out[out.index("{"):])
    for key in ("fd", "kid", "precision", "recall", "density", "coverage", "class_accuracy"):
        assert other[key] == result[key], key  # bit for bit: features and statistics run on one thread, in float64


def test_inputs_in_every_layout_and_range_give_the_same_score(tmp_path, cache, capsys):
    with np.load(SAMPLES) as f:
        images = f["images"]
    ref = mirror(tmp_path)
    layouts = {"nhw_uint8.npy": images, "nchw_float01.npy": images[:, None] / 255.0, "nhwc_minus1to1.npy": images[..., None] / 127.5 - 1}
    scores = []
    for name, array in layouts.items():
        np.save(tmp_path / name, array.astype(np.float32) if array.dtype != np.uint8 else array)
        scores.append(run_score([str(tmp_path / name), "--ref", str(ref)], capsys)["fd"])
    assert scores == pytest.approx([scores[0]] * 3, abs=1e-4)
    assert "class_accuracy" not in run_score([str(tmp_path / "nhw_uint8.npy"), "--ref", str(ref)], capsys)  # no labels, no accuracy
    for bad, message in [("bad.npy", "cannot tell the channel axis"), ("missing.npz", "neither a standard split")]:
        if bad == "bad.npy":
            np.save(tmp_path / bad, np.zeros((4, 7, 28, 28), np.uint8))
            assert main(["score", str(tmp_path / bad), "--ref", str(ref)]) == 2
        else:
            assert main(["score", str(SAMPLES), "--ref", str(tmp_path / bad)]) == 2
        assert message in capsys.readouterr().err
    assert main(["score", str(SAMPLES), "--ref", "cifar-test"]) == 2
    assert main(["score", str(SAMPLES), "--ref", str(ref), "--network", "inception"]) == 2
    assert "unknown feature network 'inception'" in capsys.readouterr().err


WRITER = textwrap.dedent('''
    """Writes MNIST digits as PNGs in class folders with numpy and Pillow only: a user of another library."""
    import gzip, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    src, out, n, noise = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "noise"
    images = np.frombuffer(gzip.open(src / "train-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(src / "train-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    rng = np.random.default_rng(1)
    for i in rng.permutation(len(images))[:n]:
        image = rng.integers(0, 256, (28, 28), dtype=np.uint8) if noise else images[i]
        (out / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / str(labels[i]) / f"{i}.png")
    assert "genkit" not in sys.modules
''')


@needs_mnist
def test_a_folder_of_pngs_written_without_genkit_is_scored_against_the_mnist_test_split(tmp_path, cache, capsys):
    (tmp_path / "writer.py").write_text(WRITER)
    for kind in ("digits", "noise"):
        subprocess.run([sys.executable, str(tmp_path / "writer.py"), str(SHARED_MNIST), str(tmp_path / kind), "300", kind], check=True)
    capsys.readouterr()
    assert main(["score", str(tmp_path / "digits"), "--data-dir", str(SHARED_MNIST)]) == 0
    captured = capsys.readouterr()
    for line in ["genkit: reading the samples from", "genkit: genkit-mnist-v1 features of 300 samples ...",
                 "genkit: genkit-mnist-v1 features of the 10,000 mnist test images (once: cached in"]:
        assert line in captured.err, captured.err
    digits = json.loads(captured.out[captured.out.index("{"):])
    assert digits["num_samples"] == digits["reference_images"] == 300 and digits["reference"] == "mnist-test"
    assert digits["class_accuracy"] > 0.9 and digits["precision"] > 0.7 and digits["recall"] > 0.7
    assert digits["fd"] < 3 * digits["fd_test_floor"] and digits["fd_train_floor"] < 2 * digits["fd_test_floor"]  # training digits score like test ones
    noise = run_score([str(tmp_path / "noise"), "--data-dir", str(SHARED_MNIST), "--no-floors"], capsys)
    assert noise["fd"] > 20 * digits["fd"] and noise["kid"] > digits["kid"] and noise["precision"] < 0.1 and "fd_test_floor" not in noise
    assert len(list((cache / "reference").glob("genkit-mnist-v1-*.safetensors"))) == 1  # the split's features: computed once
    half = run_score([str(tmp_path / "digits"), "--data-dir", str(SHARED_MNIST), "--num-samples", "100", "--no-floors"], capsys)
    assert half["num_samples"] == half["reference_images"] == 100
    assert "features of the 10,000" not in capsys.readouterr().err


def test_fd_matches_pytorch_fids_formula_and_inception_keeps_the_name_fid():
    from scipy import linalg

    from genkit.evaluation import fd_kid
    from genkit.evaluation.generation import compare

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g, dtype=torch.float64), torch.randn(200, 8, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mu1, mu2, s1, s2 = a.mean(0).numpy(), b.mean(0).numpy(), np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)  # pytorch-fid's
    assert fd_kid(a, b)["fd"] == pytest.approx(expected, rel=1e-9)
    assert "fid" in compare(a, b, "inception") and "fd" not in compare(a, b, "inception")
    assert "fd" in compare(a, b, "dinov2") and "fid" not in compare(a, b, "genkit")
    same = fd_kid(a, torch.randn(300, 8, generator=g, dtype=torch.float64))  # unbiased: near 0 for the same distribution
    assert abs(same["kid"]) < 0.05 * fd_kid(a, b)["kid"] and same["kid_std"] == 0  # N <= 1,000 on both sides: one exact estimate
