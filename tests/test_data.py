import gzip

import datasets
import pytest
import torch

from genkit.config import DataConfig
from genkit.corruption import corrupt
from genkit.data import (
    DataSourceError,
    ShardedBatches,
    load_image_dataset,
    load_split,
    load_train_eval,
    make_batch,
    read_idx_folder,
    to_tensors,
)


def test_idx_folder_has_shared_schema(tiny_idx):
    ds = load_image_dataset("mnist", "train", str(tiny_idx))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == [str(i) for i in range(10)]
    assert len(ds) == 256 and len(load_image_dataset("mnist", "test", str(tiny_idx))) == 64


def test_fashion_mnist_gets_class_names(tiny_idx):
    ds = load_image_dataset("fashion_mnist", "test", str(tiny_idx))
    assert ds.features["label"].names[0] == "T-shirt/top" and ds.features["label"].names[9] == "Ankle boot"


def _reference(tiny_idx):
    return to_tensors(read_idx_folder(tiny_idx, "train"), 28)


def test_save_to_disk_round_trip(tiny_idx, tmp_path):
    ref = _reference(tiny_idx)
    read_idx_folder(tiny_idx, "train").save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"train": read_idx_folder(tiny_idx, "train"), "test": read_idx_folder(tiny_idx, "test")}).save_to_disk(tmp_path / "dict")
    for path in [tmp_path / "single", tmp_path / "dict"]:
        got = to_tensors(load_image_dataset(str(path), "train"), 28)
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels) and got.class_names == ref.class_names
    with pytest.raises(DataSourceError, match="splits"):
        load_image_dataset(str(tmp_path / "dict"), "validation")


def test_parquet_round_trip(tiny_idx, tmp_path):
    ref = _reference(tiny_idx)
    (tmp_path / "pq").mkdir()
    read_idx_folder(tiny_idx, "train").to_parquet(tmp_path / "pq" / "train-00000.parquet")
    read_idx_folder(tiny_idx, "test").to_parquet(tmp_path / "pq" / "test-00000.parquet")
    for source in [tmp_path / "pq", tmp_path / "pq" / "train-00000.parquet"]:
        got = to_tensors(load_image_dataset(str(source), "train"), 28)
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels)
    assert len(load_image_dataset(str(tmp_path / "pq"), "test")) == 64


def test_imagefolder_round_trip(tiny_idx, tmp_path):
    ds = read_idx_folder(tiny_idx, "train").select(range(40))
    for i, row in enumerate(ds):
        folder = tmp_path / "imgs" / "train" / f"class_{row['label']}"
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"{i:04d}.png")
    got = to_tensors(load_image_dataset(str(tmp_path / "imgs"), "train"), 28)
    assert len(got) == 40
    names = got.class_names
    want = sorted((to_tensors(ds, 28).images[i].sum().item(), f"class_{ds[i]['label']}") for i in range(40))
    have = sorted((got.images[i].sum().item(), names[got.labels[i]]) for i in range(40))
    assert want == have  # same pixels with the same class, whatever order the folder is read in
    with pytest.raises(DataSourceError, match="no 'test' sub-folder"):
        load_image_dataset(str(tmp_path / "imgs"), "test")


def test_rgba_and_odd_sizes_are_fitted(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(tmp_path / "imgs" / "a" / "x.png")
    Image.new("L", (20, 20), 200).save(tmp_path / "imgs" / "a" / "y.png")
    got = to_tensors(load_image_dataset(str(tmp_path / "imgs")), 32, channels=3)
    assert got.images.shape == (2, 3, 32, 32) and got.images.dtype == torch.uint8
    assert got.class_names == ["unlabeled"] or got.class_names == ["a"]


def test_padding_channels_and_value_range(tiny_idx):
    cfg = DataConfig(source="mnist", data_dir=str(tiny_idx), image_size=32, channels=3, value_range="-1,1")
    data = load_split(cfg, "train")
    assert data.images.shape == (256, 3, 32, 32)
    assert (data.images[:, :, :2, :] == 0).all() and (data.images[:, :, :, -2:] == 0).all()  # 2-pixel zero border
    batch = make_batch(data, torch.arange(8), cfg)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1 and batch["image"].min() == -1
    assert batch["input"] is batch["image"]


def test_subset_exclude_and_holdout(tiny_idx):
    cfg = DataConfig(source="mnist", data_dir=str(tiny_idx), subset=100, exclude_labels=[3], eval_split=None, eval_fraction=0.2)
    train, evaluation = load_train_eval(cfg, seed=1)
    assert len(train) + len(evaluation) == 100 and len(evaluation) == 20
    assert not (train.labels == 3).any() and not (evaluation.labels == 3).any()


@pytest.mark.parametrize("kind", ["gaussian", "salt_and_pepper", "mask"])
def test_corruptions(kind):
    x = torch.full((64, 1, 28, 28), 0.5)
    y = corrupt(x, kind, 0.3, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = (y != x).float().mean().item()
    if kind == "gaussian":
        assert abs((y - x).std().item() - 0.3) < 0.05
    else:
        assert abs(changed - 0.3) < 0.02
    if kind == "mask":
        assert (y[y != x] == 0).all()
    if kind == "salt_and_pepper":
        assert set(y[y != x].unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "blur", 0.1)


def test_sharded_batches_are_disjoint_and_deterministic():
    one = ShardedBatches(100, 10, seed=3)
    a, b = ShardedBatches(100, 5, seed=3, num_processes=2, process_index=0), ShardedBatches(100, 5, seed=3, num_processes=2, process_index=1)
    for step in range(25):  # crosses epoch boundaries
        assert torch.equal(torch.cat([a(step), b(step)]), one(step))
        assert not set(a(step).tolist()) & set(b(step).tolist())
    epoch0 = torch.cat([one(s) for s in range(10)])
    assert sorted(epoch0.tolist()) == list(range(100))
    assert not torch.equal(one(0), one(10))  # reshuffled next epoch
    with pytest.raises(DataSourceError, match="fewer than one global batch"):
        ShardedBatches(10, 8, 0, num_processes=2)


def test_missing_sources_explain_how_to_work_offline(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        load_image_dataset(str(tmp_path / "missing"))
    with pytest.raises(DataSourceError, match="no IDX files"):
        load_image_dataset("mnist", "train", str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="holds no images"):
        load_image_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataSourceError) as err:
        load_image_dataset("someone/no-such-dataset")  # HF_HUB_OFFLINE=1 in conftest
    assert "data.data_dir" in str(err.value) and "imagefolder" in str(err.value)


def test_corrupt_idx_files_are_reported(tiny_idx, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = gzip.open(tiny_idx / "train-images-idx3-ubyte.gz").read()
    gzip.open(bad / "train-images-idx3-ubyte.gz", "wb").write(raw[:1000])
    (bad / "train-labels-idx1-ubyte.gz").write_bytes((tiny_idx / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataSourceError, match="truncated"):
        load_image_dataset("mnist", "train", str(bad))
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataSourceError, match="cannot read"):
        load_image_dataset("mnist", "train", str(bad))


def test_real_mnist(mnist_dir):
    data = load_split(DataConfig(source="mnist", data_dir=str(mnist_dir)), "test")
    assert data.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.labels).tolist()[:3] == [980, 1135, 1032]
    assert abs(data.images.float().mean().item() / 255 - 0.1325) < 0.001


def test_decoded_splits_are_cached_and_invalidated(tmp_path, monkeypatch):
    from conftest import make_idx_folder

    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    folder = make_idx_folder(tmp_path / "idx", n_train=64, n_test=16)
    cfg = DataConfig(source="mnist", data_dir=str(folder))
    first = load_split(cfg, "train")
    entries = list((tmp_path / "cache" / "decoded").iterdir())
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == ["images.npy", "labels.npy", "meta.json"]
    again = load_split(cfg, "train")
    assert torch.equal(first.images, again.images) and first.class_names == again.class_names
    make_idx_folder(folder, n_train=32, n_test=16, seed=5)  # the files change: the cache must not answer
    assert len(load_split(cfg, "train")) == 32
    newest = max((tmp_path / "cache" / "decoded").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    (newest / "images.npy").write_bytes(b"garbage")  # a damaged entry is rebuilt, not fatal
    assert len(load_split(cfg, "train")) == 32
    assert not list((tmp_path / "cache" / "decoded").glob("*.tmp"))


@pytest.mark.parametrize("damage", ["not_an_image", "truncated"])
def test_imagefolder_with_a_broken_file_names_it(tmp_path, damage):
    import io

    from PIL import Image

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.new("L", (28, 28), 40 * i).save(folder / f"{i}.png")
    good = io.BytesIO()
    Image.effect_noise((28, 28), 50).save(good, "PNG")
    bad = b"this is a text file named like a picture" if damage == "not_an_image" else good.getvalue()[: len(good.getvalue()) // 2]
    (folder / "3.png").write_bytes(bad)
    with pytest.raises(DataSourceError, match=r"cannot read image '.*3\.png'.*Remove or replace that file"):
        to_tensors(load_image_dataset(str(tmp_path / "imgs")), 28)


@pytest.mark.parametrize("header, message", [
    (bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (2**31).to_bytes(4, "big") + (2**31).to_bytes(4, "big"), "not a plausible"),
    (bytes([0, 0, 8, 3]) + (2**32 - 1).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big"), "not a plausible"),
    (bytes([0, 0, 8, 200]) + b"\x00" * 8, "labels .1 dimension. or images .3 dimensions."),
    (bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big"), "header ends early"),
    (bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big") + b"\x00" * 100, "truncated or corrupt"),
    (bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big"), "do not hold images"),
    (b"\x1f\x8b", "bad magic number"),
])
def test_idx_headers_with_absurd_dimensions_are_refused_before_reading(tmp_path, header, message):
    import numpy as np
    from conftest import write_idx

    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(header)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(0 if "do not hold" in message else 10, dtype=np.uint8))
    with pytest.raises(DataSourceError, match=message):
        read_idx_folder(folder, "train")
