"""Run directories: what they hold, who they belong to, and loading a finished run back as a family."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator

import torch

from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig
from .families import FAMILIES, DataInfo, Family, get_family

# run-level files written by train / eval beside the exported models; with Family.export_files, all that is published
RUN_FILES = ["training_config.json", "data_info.json", "metrics.json", "eval_results.json", "samples.png", "loss_curve.png"]
LOAD_FILES = ["training_config.json", "data_info.json"]  # with Family.required_files, what loading a run reads
# what genkit itself writes into a run directory besides the exported models (cleared by --overwrite)
HUB_RECORD = "hub.json"  # written by `genkit push`: where the run was published (a fine-tune's card cites it as base_model)
GENERATED = [*RUN_FILES, "run.json", HUB_RECORD, "checkpoints", "samples", "logs", "reconstructions.png", "analysis.json", "latents.png", "som.png"]
RUN_ID_FILE = "run.json"
LOCK_FILE = ".lock"  # flocked by the running trainer
FINISHED_MARKER = "metrics.json"  # written last by a training: a run directory with a run id but without it has not finished
EXPORT_TMP = ".tmp-export"  # what a kill during the export leaves (--overwrite removes it too)
GENERATED += [EXPORT_TMP, f".tmp-{FINISHED_MARKER}", f".tmp-{RUN_ID_FILE}"]
HUB_MIXIN_CHATTER = "Loading weights from local directory\n"  # a bare print() in huggingface_hub's PyTorchModelHubMixin


def new_run_id(run_dir: Path) -> str:
    """Give a fresh run its identity (checkpoints carry it, so a resume never mixes two runs)."""
    run_id = uuid.uuid4().hex
    (run_dir / RUN_ID_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")
    return run_id


def run_id(run_dir: Path) -> str | None:
    """The identity of the run in `run_dir` (None for runs made before genkit recorded one)."""
    path = Path(run_dir) / RUN_ID_FILE
    return json.loads(path.read_text()).get("run_id") if path.is_file() else None


def export_files(run_dir: Path, family: str) -> list[str]:
    """The run's publishable files that exist: run-level files plus the files the family's `save` writes."""
    names = {*RUN_FILES, *get_family(family).export_files()}  # diffusion: pipeline.py and decoder/ are in its export_files
    return sorted(name for name in names if (Path(run_dir) / name).is_file())


def clear_outputs(run_dir: Path) -> list[str]:
    """Remove everything genkit wrote into `run_dir` (for --overwrite); files of the user's own stay. Returns what went."""
    run_dir = Path(run_dir)
    owned = set(GENERATED)
    for name in FAMILIES:
        owned.update(get_family(name).export_files())
    owned.update(f"{Path(name).parent}/README.md" for name in list(owned) if "/" in name)  # the hub mixin's model cards
    owned.add("README.md")
    removed = []
    for name in sorted(owned):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
        else:
            continue
        removed.append(name)
    for folder in sorted({Path(name).parts[0] for name in owned if "/" in name}):  # part folders left empty
        if (run_dir / folder).is_dir() and not any((run_dir / folder).iterdir()):
            (run_dir / folder).rmdir()
    return removed


def check_finished(path: Path, config: TrainConfig) -> None:
    """A run directory whose training has not ended (killed, interrupted, still running) says how to resume it; its weights must parse."""
    family = get_family(config.family)
    missing = [name for name in family.required_files() if not (path / name).is_file() and not (path / family.published_name(name)).is_file()]
    if (path / RUN_ID_FILE).is_file() and not (path / FINISHED_MARKER).is_file():  # trained here (not a Hub snapshot) but not to the end
        missing.append(FINISHED_MARKER)
    if not missing:
        verify_weights(path, config.family)
        return
    found = ckpt.list_checkpoints(path)
    if found:
        step = ckpt.read_state(found[-1])["step"]
        raise ConfigError(f"{path} has not finished training (last checkpoint: step {step}); resume it with "
                          f"`genkit train --config {path / 'training_config.json'} --resume latest`")
    raise ConfigError(f"{path} holds no trained model (missing {', '.join(missing)}): has the run finished?")


def save_export(family: Family, run_dir: Path) -> None:
    """Export the models into a temp folder, then move each file into place: a kill never leaves half a file.

    The finished marker goes first, so until `finish` writes it again the run reads as unfinished (resumable), never as
    a mix of old and new files that passes for a finished run.
    """
    (run_dir / FINISHED_MARKER).unlink(missing_ok=True)
    tmp = run_dir / EXPORT_TMP
    if tmp.exists():
        shutil.rmtree(tmp)
    family.save(tmp)
    ckpt.usual_permissions(tmp)
    code = {str(path.relative_to(tmp)): file_sha256(path) for path in sorted(tmp.rglob("*.py"))}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        target = run_dir / path.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(tmp)
    record_exported_code(run_dir, code)
    verify_weights(run_dir, family.name)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_exported_code(run_dir: Path, code: dict[str, str]) -> None:
    """Note in run.json the SHA-256 of each code file the export wrote (pipeline.py): `genkit push` publishes them only unchanged."""
    path = Path(run_dir) / RUN_ID_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["code_sha256"] = code
    tmp = path.with_name(f".tmp-{RUN_ID_FILE}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def exported_code(run_dir: Path) -> dict[str, str] | None:
    """The code files (relative path -> SHA-256) genkit wrote with the run's export; None when it recorded none (older runs, Hub snapshots)."""
    path = Path(run_dir) / RUN_ID_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    code = record.get("code_sha256") if isinstance(record, dict) else None
    return code if isinstance(code, dict) else None


def finish(run_dir: Path, metrics: dict) -> None:
    """Write metrics.json (atomically), the last file of a training: from then on the run counts as finished."""
    tmp = run_dir / f".tmp-{FINISHED_MARKER}"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, run_dir / FINISHED_MARKER)


def verify_weights(run_dir: Path, family: str, models: dict | None = None) -> None:
    """Every exported safetensors file of the run parses whole; with `models`, each model's file holds exactly its tensors.

    A file belongs to the model of its folder (`unet/`, `generator/`, ...), a root file to a family's only model; files of
    no genkit model (a latent pipeline's `decoder/`) are only parsed.
    """
    models = models or {}
    cls = get_family(family)
    for name in cls.export_files():
        path = Path(run_dir) / name
        if not name.endswith(".safetensors") or not path.is_file():
            continue
        try:
            header = ckpt.check_safetensors(path)
        except (ValueError, OSError) as err:
            raise ConfigError(f"{path} is damaged ({err}); it can be neither loaded nor published. "
                              "If the run's checkpoints are intact, `--resume latest` exports the model again") from None
        folder = Path(name).parts[0] if len(Path(name).parts) > 1 else None
        model = models.get(folder) if folder else models.get(cls.hub_root) if cls.hub_root else (next(iter(models.values())) if len(models) == 1 else None)
        if model is None:
            continue
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        tensors = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        if tensors != expected:
            wrong = sorted(k for k in expected.keys() & tensors.keys() if expected[k] != tensors[k])
            raise ConfigError(f"{path} is incomplete or does not match its model (config.json): missing {sorted(expected.keys() - tensors.keys())[:5]}, "
                              f"unexpected {sorted(tensors.keys() - expected.keys())[:5]}, other shapes {wrong[:5]}")


def resolve(source: str, hub_only: bool = False) -> Path:
    """A local run directory, or the snapshot of a Hub repo id (trusted use: the CLI and a local app); with `hub_only`,
    a Hub id and never a local path (what a downloaded run names is not looked up on this machine)."""
    from .safe_load import HUB_ID

    if hub_only:
        if not isinstance(source, str) or not HUB_ID.match(source):
            raise ConfigError(f"{source!r} is not a Hub repo id (owner/name); a downloaded run may name models only by Hub id")
        return _download(source)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "training_config.json").is_file():
            raise ConfigError(f"{path} is not a genkit run directory (no training_config.json)")
        return path
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ConfigError(f"{source!r} is neither an existing run directory nor a Hub repo id (owner/name)")
    return _download(source)


def _download(source: str) -> Path:
    """The snapshot of Hub repo `source`, as a ConfigError when it cannot be had."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as err:
        raise ConfigError(f"cannot download {source!r} from the Hub ({type(err).__name__}: {str(err)[:200]})") from None


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu": the default of every command that loads a model."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before anything is loaded onto it."""
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if kind.type == "cuda" and (not torch.cuda.is_available() or (kind.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu")


def load_run(path: Path, device: str | torch.device = "cpu") -> Family:
    """The trained family stored in the run directory `path`, models in eval mode on `device`."""
    config = TrainConfig.load(path)
    check_finished(path, config)
    cls = get_family(config.family)
    with quiet_loading():
        models = cls.load_models(path)
    verify_weights(path, config.family, models)
    for model in models.values():
        model.to(device).eval()
    return cls(config, DataInfo.load(path), models)


def load_family(source: str, device: str | torch.device = "cpu", hub_only: bool = False) -> Family:
    """The trained family of a run directory or Hub repo id (only a Hub id with `hub_only`), models in eval mode on `device`."""
    return load_run(resolve(source, hub_only), device)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Drop huggingface_hub's "Loading weights from local directory" line (a print, not a log); other output passes."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        sys.stdout.write(buffer.getvalue().replace(HUB_MIXIN_CHATTER, ""))


class RunDirError(ValueError):
    """The output directory cannot be used as asked (it holds another run, or the resume does not match)."""


@contextlib.contextmanager
def run_lock(run_dir: Path, required: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on RUN/.lock (the main process only) while the block runs; a second trainer is refused.

    The kernel drops the lock when its process dies, so a killed run never leaves a stale lock behind. Where the
    filesystem has no locks, training is refused with the way out (`required=False`, `genkit train --no-lock`).
    """
    if not required:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: trainings are not locked
        fcntl = None
    handle = None
    if fcntl is not None and os.environ.get("RANK", "0") == "0":  # one lock per run, not one per process
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(run_dir / LOCK_FILE, "a")
        except OSError:  # an unwritable directory: _check_writable says why
            handle = None
    if handle is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunDirError(f"{run_dir} is in use by another genkit train (it holds {run_dir / LOCK_FILE}); "
                              "wait for it to end, or train into another output_dir") from None
        except OSError as err:  # ENOLCK, EOPNOTSUPP, ...: a filesystem without file locks (NFS without lockd, some FUSE mounts)
            handle.close()
            raise RunDirError(f"cannot lock {run_dir / LOCK_FILE}: {err.strerror or err} (this filesystem has no file locks); "
                              "train with --no-lock (train(..., lock=False)) if no other genkit train uses this output_dir, "
                              "or train into an output_dir on a local disk") from None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # closing releases the lock
