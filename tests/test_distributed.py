"""Two CPU processes under torchrun (not `accelerate launch --cpu`, which silently runs one)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("two_process_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(tiny_idx, tmp_path, mode="steps"):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), str(tiny_idx), str(tmp_path), mode]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]


def test_two_processes_shard_data_and_stay_in_sync(tiny_idx, tmp_path):
    r0, r1 = run_two(tiny_idx, tmp_path)
    assert r0["num_processes"] == r1["num_processes"] == 2
    assert len(r0["seen"]) == len(r1["seen"]) == 8 * 16
    # each global batch of 32 is split between the processes: 8 steps cover the 256 images exactly once
    both = r0["seen"] + r1["seen"]
    assert sorted(both) == list(range(256))
    # replicas hold identical weights at every checkpoint, and training moved them
    assert r0["sums"] == r1["sums"] and r0["sums"][0] != r0["sums"][1]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_time_budget_stops_every_process_at_the_same_step(tiny_idx, tmp_path):
    r0, r1 = run_two(tiny_idx, tmp_path, "budget")  # rank 1 sleeps 50 ms a step: unshared clocks would disagree and hang
    assert r0["step"] == r1["step"] > 1 and r0["stop_reason"].startswith("time budget spent")
    assert r0["sums"] == r1["sums"]  # the same learning rate on both replicas at every step
