"""Run by test_distributed under torchrun: trains a tiny model and records what each process saw and held."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_config  # noqa: E402

from genkit import engine  # noqa: E402


def main(data_dir: str, out_dir: str) -> None:
    seen: list[int] = []
    sums: list[float] = []
    make_batch, save_checkpoint = engine.make_batch, engine.save_checkpoint

    def recording_make_batch(data, index, cfg, generator=None, **kwargs):
        if kwargs.get("augment"):  # training batches only
            seen.extend(index.tolist())
        return make_batch(data, index, cfg, generator, **kwargs)

    def recording_save(accelerator, run_dir, state, keep_last):
        sums.append(sum(p.double().sum().item() for p in accelerator._models[0].parameters()))
        save_checkpoint(accelerator, run_dir, state, keep_last)

    engine.make_batch, engine.save_checkpoint = recording_make_batch, recording_save
    summary = engine.train(tiny_config(Path(data_dir), Path(out_dir) / "run", max_steps=8, checkpoint_every=4, batch_size=16))
    rank = int(os.environ["RANK"])  # end_training() has already torn the process group down
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "sums": sums, "num_processes": summary["num_processes"]}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
