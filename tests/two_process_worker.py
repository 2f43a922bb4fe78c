"""Run by test_distributed under torchrun: trains a tiny model and records what each process saw and held."""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_config  # noqa: E402

from genkit import engine  # noqa: E402


def main(data_dir: str, out_dir: str, mode: str = "steps") -> None:
    seen: list[int] = []
    sums: list[float] = []
    make_batch, save_checkpoint = engine.make_batch, engine.save_checkpoint

    def recording_make_batch(data, index, cfg, generator=None, **kwargs):
        if kwargs.get("augment"):  # training batches only
            seen.extend(index.tolist())
        return make_batch(data, index, cfg, generator, **kwargs)

    def recording_save(accelerator, run_dir, state, *args):
        sums.append(sum(p.double().sum().item() for p in accelerator._models[0].parameters()))
        save_checkpoint(accelerator, run_dir, state, *args)

    engine.make_batch, engine.save_checkpoint = recording_make_batch, recording_save
    options = dict(max_steps=8, checkpoint_every=4, batch_size=16)
    if mode == "budget":  # rank 1 is slower: the shared clock must still stop both at the same step, with the same lr
        from genkit.families.autoencoder import AutoencoderFamily

        original = AutoencoderFamily.loss

        def loss(self, part, batch):
            if os.environ["RANK"] == "1":
                time.sleep(0.05)
            return original(self, part, batch)

        AutoencoderFamily.loss = loss
        options = dict(max_steps=1000, max_train_seconds=0.5, lr_scheduler="cosine", checkpoint_every=4, batch_size=16)
    summary = engine.train(tiny_config(Path(data_dir), Path(out_dir) / "run", **options))
    rank = int(os.environ["RANK"])  # end_training() has already torn the process group down
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "sums": sums, "num_processes": summary["num_processes"],
                                                                "step": summary["step"], "stop_reason": summary["stop_reason"]}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
