"""Run by test_train_eval under torchrun: a tiny GAN judged by FD while training, recording who evaluated."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_config  # noqa: E402

from genkit import engine, evaluation  # noqa: E402


def main(data_dir: str, out_dir: str) -> None:
    calls = []
    evaluate_generation = evaluation.evaluate_generation

    def recording(family, **kwargs):
        calls.append(kwargs["num_samples"])
        return evaluate_generation(family, **kwargs)

    evaluation.evaluate_generation = recording
    config = tiny_config(Path(data_dir), Path(out_dir) / "run", family="gan", model={}, data={"value_range": "-1,1"}, max_steps=4, batch_size=16,
                         eval_every=2, checkpoint_every=4, eval_generation_every=2, eval_generation_samples=16, save_best="fd", export_best=True)
    summary = engine.train(config)
    rank = int(os.environ["RANK"])
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"calls": calls, "summary": summary}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
