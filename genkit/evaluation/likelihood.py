"""Scores that need no samples: reconstruction error beside PCA, VAE likelihood (ELBO, IW-NLL), RBM likelihood by AIS."""

from __future__ import annotations

import torch

from ..data import binarize_fixed, load_split
from ..eval_classifier import classifier_data_config
from .reference import real_images, to_unit


@torch.no_grad()
def evaluate_reconstruction(family, num_images: int = 10000, pca_train: int = 10000, device: str | torch.device = "cpu") -> dict[str, float]:
    """Reconstruction MSE / PSNR on the eval split beside PCA with as many components as the model has latents."""
    from ..corruption import corrupt
    from ..latents import (
        anomaly_auroc,
        encode,
        pca_baseline,
        psnr,
        reconstruction_errors,
        to_flat,
    )

    data = family.config.data
    test = real_images(data, data.eval_split or data.split, num_images)
    images = to_unit(test)
    errors = reconstruction_errors(family, images)
    result = {"mse": float(errors.mean()), "psnr": psnr(float(errors.mean())), "num_images": len(test)}
    if data.corruption:  # denoisers: corrupted input -> clean target
        noisy = corrupt(images, data.corruption, data.corruption_level, torch.Generator().manual_seed(0))
        model = family.models["model"]
        recon = torch.cat([model.reconstruct(x.to(device)).float().cpu() for x in noisy.split(1000)])
        result["denoise_mse"] = float((recon - images).pow(2).mean())
        result["noisy_input_mse"] = float((noisy - images).pow(2).mean())
    k = encode(family, images[:2]).shape[1]
    if k < images[0].numel():
        train_flat = to_flat(real_images(data, data.split, pca_train))
        result[f"pca{k}_mse"], _ = pca_baseline(train_flat, images.flatten(1).numpy(), k)
        result[f"pca{k}_psnr"] = psnr(result[f"pca{k}_mse"])
    if data.exclude_labels:
        result["anomaly_auroc"] = anomaly_auroc(errors, test.labels.numpy(), data.exclude_labels)
    return result


@torch.no_grad()
def evaluate_likelihood(family, num_images: int | None = 1000, k: int = 100, device: str | torch.device = "cpu") -> dict[str, float]:
    """VAE: mean ELBO and importance-weighted NLL (k samples) on the eval split (`num_images` None: all of it), in nats.

    A run trained with `data.binarize` is scored on the binarised test set (one fixed draw per image), as in the
    literature; otherwise on grey levels, which is no likelihood of a discrete distribution and not comparable with it.
    """
    data = family.config.data
    split = data.eval_split or data.split
    images = to_unit(real_images(data, split, num_images) if num_images else load_split(classifier_data_config(data), split)).to(device)
    if data.binarize != "none":
        images = binarize_fixed(images, torch.arange(len(images), device=images.device))
    model = family.models["model"]
    generator = torch.Generator(device).manual_seed(0)
    batch = max(1, 50_000 // max(k, 100))  # k draws of a batch decoded at once, in chunks of 500: bounded memory
    elbo = torch.cat([-model(x, generator=generator)["loss"] for x in images.split(500)]).mean().item()
    nll = torch.cat([model.importance_nll(x, k, generator) for x in images.split(batch)]).mean().item()
    return {"elbo": elbo, f"nll_iw{k}": nll, "likelihood_images": len(images), "likelihood_data": "binarized" if data.binarize != "none" else "grey levels"}


@torch.no_grad()
def evaluate_rbm_likelihood(family, num_images: int = 10000, runs: int = 100, betas: int = 14_500, device: str | torch.device = "cpu") -> dict[str, float]:
    """RBM: test log-likelihood in nats per image, log Z by annealed importance sampling (Salakhutdinov & Murray 2008).

    Test images are binarised once with a fixed seed; the AIS base model takes the training pixels' mean rates.
    """
    data = family.config.data
    model = family.models["model"]
    train = to_unit(real_images(data, data.split, 10_000)).to(device).flatten(1)
    rate = train.mean(0).clamp(0.5 / len(train), 1 - 0.5 / len(train))  # smoothed: no infinite logits for always-black pixels
    log_z, stderr = model.ais_log_partition(torch.log(rate) - torch.log1p(-rate), runs, betas, torch.Generator(device).manual_seed(0))
    test = to_unit(real_images(data, data.eval_split or data.split, num_images)).to(device)
    test = binarize_fixed(test, torch.arange(len(test), device=test.device)).flatten(1)
    log_likelihood = torch.cat([model.log_likelihood(x, log_z) for x in test.split(1000)]).mean().item()
    return {"test_log_likelihood": log_likelihood, "ais_log_z": log_z, "ais_log_z_stderr": stderr, "ais_runs": runs, "ais_betas": betas,
            "likelihood_images": len(test)}
