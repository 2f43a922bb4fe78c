"""Two CPU processes through accelerate's debug_launcher (not `accelerate launch --cpu`, which silently runs one)."""

import json
from pathlib import Path

import torch

from conftest import tiny_config


def _worker(data_dir: str, out_dir: str) -> None:
    from accelerate.state import AcceleratorState

    from genkit import engine

    AcceleratorState._reset_state(reset_partial_state=True)  # forked from pytest: forget its single-process state
    torch.set_num_threads(1)
    seen: list[int] = []
    make_batch, save_checkpoint = engine.make_batch, engine.save_checkpoint

    def recording_make_batch(data, index, cfg, generator=None):
        if generator is None:  # training batches only (evaluation batches pass a generator)
            seen.extend(index.tolist())
        return make_batch(data, index, cfg, generator)

    sums: list[float] = []

    def recording_save(accelerator, run_dir, state, keep_last):
        sums.append(sum(p.double().sum().item() for p in accelerator._models[0].parameters()))
        save_checkpoint(accelerator, run_dir, state, keep_last)

    engine.make_batch, engine.save_checkpoint = recording_make_batch, recording_save
    summary = engine.train(tiny_config(Path(data_dir), Path(out_dir) / "run", max_steps=8, checkpoint_every=4, batch_size=16))
    rank = torch.distributed.get_rank()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "sums": sums, "num_processes": summary["num_processes"]}))


def test_two_processes_shard_data_and_stay_in_sync(tiny_idx, tmp_path):
    from accelerate import debug_launcher

    debug_launcher(_worker, args=(str(tiny_idx), str(tmp_path)), num_processes=2)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert r0["num_processes"] == r1["num_processes"] == 2
    assert len(r0["seen"]) == len(r1["seen"]) == 8 * 16
    # each global batch is split between the processes: 16 steps x 16 images, 256 distinct images = one epoch
    first_epoch = r0["seen"] + r1["seen"]
    assert len(set(first_epoch)) == len(first_epoch) == 256 - 256 % 32
    # replicas hold identical weights at every checkpoint, and training moved them
    assert r0["sums"] == r1["sums"] and r0["sums"][0] != r0["sums"][1]
    assert (tmp_path / "run" / "model.safetensors").is_file()
