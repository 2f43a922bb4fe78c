"""Docs whose code runs: every ```bash / ```sh / ```python block of README.md and docs/*.md is executed, ```yaml configs are
validated, links resolve, and the README stays a front page.

How a page runs: its blocks run in document order in a fresh working folder (tmp_path/work) beside a `../shared/data`
that holds tiny MNIST-format data sets (mnist/, fashion_mnist/), so commands run exactly as written. Each command line
of a shell block is split with shlex; `genkit ...` runs in this process through `genkit.cli.main` (the console script's
entry point: one interpreter start for the whole page instead of one per command), anything else as a subprocess.
Long work is cut short by the test, never by the library: `genkit train` gets `--set max_steps=2 ...` appended, and the
sample counts of `eval`, `generate` and `analyze` are capped (TINY_* below). A page that names `runs/NAME` before any of
its commands made it gets the run its shipped config makes (`output_dir: runs/NAME` in training/configs/), trained once
per session with the same tiny overrides. The Hub is a recorder of create_repo / upload_folder calls (offline machine);
`genkit app` is started on a free port, asked for its page, then closed.
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_idx_folder

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = {"bash", "sh", "shell", "python", "py"}
CONFIGS = {"yaml", "yml"}
QUIET = {"text", "console", "output", "json", "toml", "ini", "diff", "markdown", "md", "html"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
CI_BLOCKS = {("README.md", "Set-up")}  # run by .ci/run on a fresh machine (checked against it below), not inside pytest

# tiny stand-ins for long work, appended by the test (the later --set wins)
TINY_TRAIN = ["max_steps=2", "max_train_seconds=null", "eval_every=2", "checkpoint_every=2", "eval_batches=1", "num_samples=4",
              "batch_size=8", "log_with=none", "progress_bar=false", "eval_generation_samples=16"]
TINY_CAPS = {  # command: {flag: (cap, appended when absent)}
    "eval": {"--num-samples": (16, True), "--cas": (20, False), "--cas-real-subset": (20, True), "--nll-images": (8, True),
             "--nll-k": (4, True)},
    "generate": {"--n": (20, False)},
    "analyze": {"--num-images": (100, True), "--train-images": (100, True)},
    "sample": {"--n": (100, False)},
    "reflow-pairs": {"--n": (16, False)},
}
CAS_STEPS = 4  # genkit eval --cas trains four classifiers for 1,500 steps each; the docs test trains them 4
APP_START_SECONDS = 600  # generous: the machine may be busy; the test waits for the page, not for a fixed time


@dataclass
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    heading: str


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their language, first line and the heading above them."""
    blocks, heading, fence, lang, start, body = [], "", None, "", 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if fence is None:
            match = re.match(r"^(`{3,})\s*([\w+-]*)", line)
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number, []
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
        elif line.strip() == fence:
            blocks.append(Block(lang, "\n".join(body) + "\n", start, heading))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{path.name}:{start}: a code fence is never closed"
    return blocks


def logical_lines(code: str) -> list[tuple[int, str]]:
    """Shell lines with backslash continuations joined, each with its offset in the block."""
    lines, pending, first = [], "", 0
    for offset, line in enumerate(code.splitlines()):
        if not pending:
            first = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((first, pending + line))
        pending = ""
    return lines


def shell_commands(code: str) -> list[tuple[int, list[str]]]:
    """(offset, argv) of every command of a shell block; variables are expanded and `NAME=value` lines set them."""
    commands = []
    for offset, line in logical_lines(code):
        argv = shlex.split(os.path.expandvars(line), comments=True)
        if argv:
            commands.append((offset, argv))
    return commands


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# ------------------------------------------------------------------------------------------------ static checks


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the detail belongs in docs/"


def test_every_fence_says_what_it_holds():
    for path in DOCS:
        for block in parse_blocks(path):
            assert block.lang in RUNNABLE | CONFIGS | QUIET, (
                f"{path.name}:{block.line}: a ```{block.lang} fence; say ```bash / ```python (run by this test), ```yaml (a config, "
                "validated) or ```text (output, or a command not to be run)")


def test_links_resolve():
    """Every relative link and image of README and docs/ points at a file (and at a heading or anchor that exists)."""
    for path in DOCS:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{path.name}: link to {target}, which does not exist"
            if anchor and dest.suffix == ".md":
                page = dest.read_text()
                anchors = {slug(h) for h in re.findall(r"^#+\s+(.*)$", page, flags=re.M)} | set(re.findall(r'<a id="([^"]+)"', page))
                assert anchor in anchors, f"{path.name}: link to {target}, but {dest.name} has no such heading"


def test_setup_block_is_what_ci_runs():
    """The README's set-up commands, in order, are lines of .ci/run (which runs them on a fresh machine, then the tests)."""
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    blocks = [b for b in parse_blocks(REPO / "README.md") if (("README.md", b.heading) in CI_BLOCKS)]
    assert blocks, "README.md has no Set-up block"
    position = 0
    for block in blocks:
        for _, line in logical_lines(block.code):
            for command in re.split(r"\s*&&\s*", line.split(" #")[0].strip()):
                if not command:
                    continue
                found = [i for i, ci_line in enumerate(ci) if i >= position and ci_line.split(" #")[0].strip() == command]
                assert found, f"README set-up command {command!r} is not (in this order) a line of .ci/run"
                position = found[0] + 1


def test_yaml_blocks_are_valid_configs():
    from genkit.config import TrainConfig

    checked = 0
    for path in DOCS:
        for block in parse_blocks(path):
            if block.lang in CONFIGS:
                values = yaml.safe_load(block.code)
                if isinstance(values, dict) and "family" in values:  # a training config: it must load as one
                    TrainConfig.from_dict(values)
                    checked += 1
    assert checked >= 1


# ------------------------------------------------------------------------------------------------ running the pages


class HubRecorder:
    """Stands in for the Hub (this machine is offline): records the repos created and the files each upload holds."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.uploads = []
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: f"https://huggingface.co/{repo_id}")
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def upload_folder(self, folder_path, repo_id, **kwargs):  # set on the class as a bound method: HfApi's self is not passed
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        assert files, f"an empty upload to {repo_id}"
        self.uploads.append((repo_id, kwargs.get("repo_type"), files))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


@pytest.fixture(scope="session")
def docs_world(tmp_path_factory):
    """Tiny MNIST-format data under shared/data, and a store of tiny runs of the shipped configs (filled on demand)."""
    root = tmp_path_factory.mktemp("docs")
    data = root / "shared" / "data"
    make_idx_folder(data / "mnist", n_train=256, n_test=64, seed=0)
    make_idx_folder(data / "fashion_mnist", n_train=256, n_test=64, seed=1)
    (root / "store").mkdir()
    return root


def shipped_config(run_name: str) -> Path | None:
    """The config in training/configs/ whose output_dir is runs/<run_name>."""
    for config in sorted((REPO / "training" / "configs").glob("*.yaml")):
        if yaml.safe_load(config.read_text()).get("output_dir") == f"runs/{run_name}":
            return config
    return None


def call_genkit(argv: list[str]) -> int:
    from genkit.cli import main

    return main(argv)


def tiny_argv(argv: list[str]) -> list[str]:
    """A genkit command line with the long work cut to a few seconds."""
    argv = list(argv)
    command = argv[0]
    if command == "train":
        return [*argv, "--set", *TINY_TRAIN]
    for flag, (cap, append) in TINY_CAPS.get(command, {}).items():
        if flag in argv:
            i = argv.index(flag) + 1
            argv[i] = str(min(int(argv[i]), cap))
        elif append:
            argv += [flag, str(cap)]
    return argv


def created_run(argv: list[str]) -> str | None:
    """runs/NAME a `genkit train` (or `genkit reflow-pairs --out`) command line makes (None for other commands)."""
    if argv[:2] == ["genkit", "reflow-pairs"] and "--out" in argv:
        return argv[argv.index("--out") + 1].rstrip("/")
    if argv[:2] != ["genkit", "train"] and not (argv[:2] == ["accelerate", "launch"] and "train.py" in " ".join(argv)):
        return None
    if "--output-dir" in argv:
        return argv[argv.index("--output-dir") + 1].rstrip("/")
    config = Path(argv[argv.index("--config") + 1])
    return yaml.safe_load(config.read_text()).get("output_dir")


class PageRunner:
    """Runs one page's blocks in order in `work`, with the tiny stand-ins described in the module docstring."""

    def __init__(self, page: str, work: Path, world: Path, monkeypatch):
        self.page, self.work, self.world, self.monkeypatch = page, work, world, monkeypatch
        self.hub = HubRecorder(monkeypatch)

    def where(self, block: Block, offset: int = 0) -> str:
        return f"{self.page}:{block.line + 1 + offset}"

    def provide_runs(self, text: str, block: Block, offset: int, made_here: str | None = None) -> None:
        """Copy in the tiny run of the shipped config for every runs/NAME the text names that does not exist yet."""
        for name in sorted(set(re.findall(r"\bruns/([\w.-]+)", text))):
            if (self.work / "runs" / name).exists() or made_here == f"runs/{name}":
                continue
            config = shipped_config(name)
            assert config is not None, (f"{self.where(block, offset)} names runs/{name}, which no command before it makes and no config in "
                                        "training/configs/ writes: name a run the reader has")
            stored = self.world / "store" / name
            if not stored.exists():
                rc = call_genkit(tiny_argv(["train", "--config", str(config), "--output-dir", str(stored),
                                            "--set", f"data.data_dir={self.world / 'shared' / 'data' / 'mnist'}"]))
                assert rc == 0, f"training the stand-in for runs/{name} ({config.name}) failed"
            shutil.copytree(stored, self.work / "runs" / name)

    def run_block(self, block: Block) -> None:
        if block.lang in ("python", "py"):
            self.provide_runs(block.code, block, 0)
            namespace = {"__name__": "__main__"}
            exec(compile(block.code, f"{self.page}:{block.line + 1}", "exec"), namespace)
            return
        for offset, argv in shell_commands(block.code):
            operators = SHELL_OPERATORS & set(argv)
            assert not operators, f"{self.where(block, offset)}: shell operators {operators}: one plain command a line keeps docs runnable"
            if all(re.match(r"^[A-Za-z_]\w*=", arg) for arg in argv):  # NAME=value: a variable for the lines below
                for arg in argv:
                    name, _, value = arg.partition("=")
                    self.monkeypatch.setenv(name, value)
                continue
            self.provide_runs(" ".join(argv), block, offset, made_here=created_run(argv))
            self.run_command(argv, block, offset)

    def run_command(self, argv: list[str], block: Block, offset: int) -> None:
        where = f"{self.where(block, offset)}: `{shlex.join(argv)}`"
        if argv[0] == "genkit" and argv[1:2] == ["app"]:
            self.run_app(argv[1:], where)
        elif argv[0] == "genkit":
            rc = call_genkit(tiny_argv(argv[1:]))
            assert rc == 0, f"{where} exited with {rc}"
        else:
            if argv[:2] == ["accelerate", "launch"]:
                argv = [*argv, "--set", *TINY_TRAIN]
            result = subprocess.run(argv, cwd=self.work, capture_output=True, text=True, env=os.environ.copy())
            assert result.returncode == 0, f"{where} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    def run_app(self, argv: list[str], where: str) -> None:
        """Start the app on a free port, wait until its page answers, close it."""
        import gradio

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("rc", call_genkit([*argv, "--port", str(port)])), daemon=True)
        thread.start()
        deadline = time.monotonic() + APP_START_SECONDS
        served = []  # the app's Blocks once launch() has returned (closing it earlier breaks gradio's own start-up request)
        try:
            while not served:
                assert thread.is_alive(), f"{where}: the app stopped (exit code {outcome.get('rc')}) before serving its page"
                assert time.monotonic() < deadline, f"{where}: no page after {APP_START_SECONDS} s"
                time.sleep(0.5)
                if waiting_in(thread, "block_thread"):  # launch() is done: the app now serves until closed
                    served = [b for b in gradio.Blocks.get_instances() if b.is_running and getattr(b, "server_port", None) == port]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as response:
                assert response.status == 200, f"{where}: the page answered {response.status}"
        finally:
            for blocks in served:
                blocks.close()
            thread.join(60)
        assert outcome.get("rc") == 0, f"{where}: the app exited with {outcome.get('rc')}"


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """Whether `thread` is inside a call of `function` right now."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(REPO).as_posix() for p in DOCS])
def test_code_blocks_run(path, docs_world, tmp_path, monkeypatch):
    """Every ```bash / ```python block of the page runs, in order, in a fresh folder beside tiny data."""
    blocks = [b for b in parse_blocks(path) if b.lang in RUNNABLE and (path.name, b.heading) not in CI_BLOCKS]
    if not blocks:
        pytest.skip(f"{path.name} has no code to run")
    from genkit.evaluation import cas

    train_classifier = cas.train_and_test_classifier
    monkeypatch.setattr(cas, "train_and_test_classifier", lambda folder, like, test, steps, *a, **k: train_classifier(
        folder, like, test, min(steps, CAS_STEPS), *a, **k))
    monkeypatch.setenv("GENKIT_DATA_DIR", str(docs_world / "shared" / "data"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    (tmp_path / "shared").symlink_to(docs_world / "shared")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(REPO / "training", work / "training", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["docs"])
    runner = PageRunner(path.relative_to(REPO).as_posix(), work, docs_world, monkeypatch)
    for block in blocks:
        runner.run_block(block)
