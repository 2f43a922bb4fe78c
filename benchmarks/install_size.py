"""Install size and time of genkit's dependency sets, each in a fresh throwaway venv with PyTorch's CPU build.

Protocol: for every set, `python -m venv`, then the CPU torch wheel (timed and measured alone), then the set (timed);
size = `du` of the venv's site-packages. The CPU torch wheel is taken from the pip config's find-links (this machine
has `torch==2.13.0+cpu` on disk; PyTorch's CPU index is not reachable here), everything else from the package index.
Wall time includes downloads, so it depends on the network and the cache: compare sizes first. Prints a markdown table.

    python benchmarks/install_size.py                    # before (the last commit's core list) / core / every extra
    python benchmarks/install_size.py --sets core space  # some of them
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CPU_TORCH = "torch==2.13.0+cpu"
BEFORE = "63cdee9"  # the last commit before gradio, transformers and mlxtend became extras


def du(path: Path) -> int:
    """Bytes on disk under `path` (du -sb)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def pip(venv: Path, *args: str) -> float:
    """Run the venv's pip; return the wall seconds it took."""
    start = time.perf_counter()
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def before_core() -> list[str]:
    """The core dependency list before the lean split (pyproject.toml at commit BEFORE)."""
    text = subprocess.run(["git", "show", f"{BEFORE}:pyproject.toml"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return tomllib.loads(text)["project"]["dependencies"]


def sets() -> dict[str, list[str]]:
    """Name -> pip arguments after CPU torch."""
    return {"before": before_core(), "core": [str(ROOT)], "all": [f"{ROOT}[all]"],
            "space": ["-r", str(ROOT / "spaces" / "requirements.txt")]}


def measure(name: str, args: list[str], python: str) -> dict:
    """Install CPU torch, then `args`, into a fresh venv; sizes in MB, times in s."""
    with tempfile.TemporaryDirectory(prefix=f"genkit-size-{name}-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        empty = du(site)
        t_torch = pip(venv, CPU_TORCH)
        with_torch = du(site)
        if name == "space":  # the Space's file pins torch's +cpu build from PyTorch's index: install the rest
            req = Path(tmp) / "requirements.txt"
            req.write_text("".join(line + "\n" for line in Path(args[1]).read_text().splitlines()
                                   if line.strip() and not line.startswith(("#", "--")) and not line.startswith("torch==")))
            args = ["-r", str(req), "gradio==" + __import__("importlib.metadata").metadata.version("gradio")]  # the SDK installs gradio too
        t_rest = pip(venv, CPU_TORCH, *args)  # torch stays the CPU build: torchvision resolves to its matching release
        total = du(site)
        count = len(list(site.glob("*.dist-info")))
    mb = 1e6
    return {"set": name, "packages": count, "torch_mb": (with_torch - empty) / mb, "rest_mb": (total - with_torch) / mb,
            "total_mb": (total - empty) / mb, "torch_s": t_torch, "rest_s": t_rest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["before", "core", "all"], choices=list(sets()))
    parser.add_argument("--python", default=sys.executable, help="interpreter the venvs are made from")
    args = parser.parse_args()
    rows = [measure(name, sets()[name], args.python) for name in args.sets]
    print("| set | packages | CPU torch MB | rest MB | total MB | torch install s | rest install s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['packages']} | {r['torch_mb']:.0f} | {r['rest_mb']:.0f} | {r['total_mb']:.0f} | {r['torch_s']:.0f} | {r['rest_s']:.0f} |")


if __name__ == "__main__":
    main()
