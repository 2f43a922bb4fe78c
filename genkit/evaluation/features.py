"""Feature spaces that images are scored in: genkit's shipped network (offline, the default), Inception-v3, DINOv2 and CLIP.

The default space, `genkit`, is the frozen network genkit ships for the data set (`genkit-mnist-v1`,
`genkit-fashion-mnist-v1`: genkit/feature_nets.py), the same on every machine. Data sets without a shipped network get
a classifier trained on this machine on first use instead, and its scores say so ("machine-local"): they compare runs
on one machine, not figures across machines. `classifier` is accepted as the old name of the `genkit` space.

Inception is torch-fidelity's extractor (the `pt_inception-2015-12-05` weights of the original TensorFlow FID, resized
to 299 with TensorFlow-1-style bilinear interpolation), as torch-fidelity and torchmetrics (`antialias=False`) compute
FID. DINOv2 and CLIP are any `transformers` model id or local folder, with that model's own image processor. Grey
images are repeated to three channels for all three.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, DataConfig
from ..extras import require

SPACES = ("genkit", "inception", "dinov2", "clip")
ALIASES = {"classifier": "genkit"}  # the default space's name before genkit shipped networks
MACHINE_LOCAL = "machine-local-classifier"
DEFAULT_MODELS = {"dinov2": "facebook/dinov2-large", "clip": "openai/clip-vit-base-patch32"}
WEIGHTS_ENV = {"inception": "GENKIT_INCEPTION_WEIGHTS", "dinov2": "GENKIT_DINOV2_MODEL", "clip": "GENKIT_CLIP_MODEL"}
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]


class FeatureSpace:
    """Images in [0, 1] (N, C, H, W) -> features (N, D), batch by batch on the model's device."""

    dtype = torch.float32  # of the features handed out (genkit's shipped networks: float64)

    def __init__(self, name: str, model: nn.Module, description: str, batch_size: int, source: str = ""):
        self.name, self.model, self.batch_size, self.description = name, model.eval(), batch_size, description
        self.device = next(model.parameters()).device
        self.identity = f"{name}:{source}:{weights_digest(model)}"  # keys the cached features of real images
        self.network = name  # what the scores' protocol names as the feature network

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """One batch of images (on the device) -> its features."""
        raise NotImplementedError

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Features of every image, on the CPU (float32; float64 for genkit's shipped networks)."""
        return torch.cat([self.embed(chunk.to(self.device)).to(self.dtype).cpu() for chunk in images.split(self.batch_size)])


class ClassifierSpace(FeatureSpace):
    """The penultimate features of the classifier this machine trained for a data set genkit ships no network for."""

    def __init__(self, classifier: nn.Module):
        super().__init__("genkit", classifier, f"{MACHINE_LOCAL}: a classifier trained on this machine on first use, {classifier.num_features}-d "
                         "penultimate features (machine-local: not comparable with scores from other machines)", 500)
        self.network = MACHINE_LOCAL

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier features."""
        return self.model.features(images.float())


class NetworkSpace(FeatureSpace):
    """The features of a network genkit ships (float64 on the CPU, so every machine computes the same figures)."""

    def __init__(self, model: nn.Module):
        from ..feature_nets import NETWORKS, describe

        self.name, self.model, self.batch_size, self.description = "genkit", model, 500, describe(model.name)
        self.device, self.network, self.dtype = torch.device("cpu"), model.name, torch.float64
        self.identity = f"genkit:{model.name}:{NETWORKS[model.name].sha256}"

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Network features, float64."""
        return self.model.features(images.cpu())


class InceptionSpace(FeatureSpace):
    """Inception-v3 pool3 features (2048-d), torch-fidelity's extractor."""

    def __init__(self, weights: Path, device: str | torch.device):
        inception = require("torch_fidelity.feature_extractor_inceptionv3", "metrics", "the inception feature space")
        try:
            torch.load(weights, map_location="cpu", weights_only=True)  # a plain state dict, checked before torch-fidelity unpickles it
            model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
        except Exception as err:
            raise ConfigError(f"{weights} holds no Inception-v3 weights for torch-fidelity ({type(err).__name__})") from None
        super().__init__("inception", model.to(device), f"Inception-v3 pool3, 2048-d, {weights.name}; resized to 299 (TF1 bilinear)", 50)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """pool3 features."""
        return self.model(rgb_uint8(images))[0]


class TransformersSpace(FeatureSpace):
    """DINOv2's CLS token (`pooler_output`) or CLIP's image embedding, through the model's own image processor."""

    def __init__(self, name: str, source: str, device: str | torch.device):
        transformers = require("transformers", "metrics", f"the {name} feature space")
        loader = transformers.CLIPVisionModelWithProjection if name == "clip" else transformers.AutoModel
        try:
            self.processor = transformers.AutoImageProcessor.from_pretrained(source)
            model = loader.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ConfigError(missing_model(name, source)) from err
        kind = "image embedding" if name == "clip" else "CLS token"
        super().__init__(name, model.to(device), f"{source} {kind}, {model.config.hidden_size if name != 'clip' else model.config.projection_dim}-d, "
                         "resized and normalised by its image processor", 64, source)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """DINOv2: the normalised CLS token; CLIP: the projected image embedding."""
        pixels = self.processor(images=list(rgb_uint8(images).cpu()), return_tensors="pt")["pixel_values"].to(self.device)
        out = self.model(pixel_values=pixels)
        return out.image_embeds if self.name == "clip" else out.pooler_output


def rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> uint8 RGB (grey repeated to three channels), as the pretrained extractors take them."""
    images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def weights_digest(model: nn.Module) -> str:
    """A short digest of a model's weights: which extractor made a cached feature set."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def missing_model(name: str, source: str) -> str:
    """One line: which model is missing and how to get it."""
    return (f"{name} model {source!r} is neither a local folder nor in the Hugging Face cache: download it once with `hf download {source}` "
            f"where the Hub is reachable, or pass --feature-weights {name}=FOLDER (or set {WEIGHTS_ENV[name]})")


def inception_weights(path: str | None = None) -> Path:
    """The Inception weights file: the given path, $GENKIT_INCEPTION_WEIGHTS, torch's hub cache, else a download (online)."""
    given = path or os.environ.get(WEIGHTS_ENV["inception"])
    if given:
        if not Path(given).expanduser().is_file():
            raise ConfigError(f"Inception weights {given} not found")
        return Path(given).expanduser()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not cached.is_file():
        missing = (f"Inception weights {INCEPTION_FILE} not found: download {INCEPTION_URL} and pass --feature-weights inception=FILE "
                   f"(or set {WEIGHTS_ENV['inception']}, or put it at {cached})")
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
            raise ConfigError(missing)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
        except Exception:
            raise ConfigError(missing) from None
    return cached


def parse_spaces(names: list[str], weights: list[str]) -> tuple[list[str], dict[str, str]]:
    """Space names (several, or comma-separated) and `[SPACE=]PATH` weights, checked: (spaces, {space: weights})."""
    spaces = list(dict.fromkeys(ALIASES.get(name, name) for entry in names for name in entry.split(",") if name))
    if unknown := [name for name in spaces if name not in SPACES]:
        raise ConfigError(f"--features: unknown feature space {unknown[0]!r}; choose from {', '.join(SPACES)}")
    pretrained = [space for space in spaces if space != "genkit"]
    chosen = {}
    for entry in weights:  # a bare PATH belongs to the one pretrained space asked for
        name, _, path = entry.partition("=") if entry.split("=", 1)[0] in SPACES else ("", "", entry)
        if not name and len(pretrained) != 1:
            raise ConfigError(f"--feature-weights {entry}: say which space it is for, e.g. --feature-weights inception={entry}")
        name = name or pretrained[0]
        if name not in pretrained:
            raise ConfigError(f"--feature-weights {entry}: --features does not ask for a pretrained {name} space")
        chosen[name] = path
    return spaces, chosen


def feature_space(name: str, data: DataConfig, device: str | torch.device = "cpu", weights: str | None = None) -> FeatureSpace:
    """The feature space `name`, its model loaded on `device` (`weights`: a file or model id/folder instead of the default)."""
    name = ALIASES.get(name, name)
    if name == "genkit":
        from ..eval_classifier import get_classifier
        from ..feature_nets import FeatureNet

        if weights:
            raise ConfigError("the genkit space takes no --feature-weights: it is the network genkit ships for the data set")
        model = get_classifier(data, device)
        return NetworkSpace(model) if isinstance(model, FeatureNet) else ClassifierSpace(model)
    if name == "inception":
        return InceptionSpace(inception_weights(weights), device)
    if name in ("dinov2", "clip"):
        return TransformersSpace(name, weights or os.environ.get(WEIGHTS_ENV[name]) or DEFAULT_MODELS[name], device)
    raise ConfigError(f"unknown feature space {name!r}; choose from {', '.join(SPACES)}")
