"""Unsupervised analysis of encoder latents: clustering scores, PCA / t-SNE plots, PCA baselines and anomaly detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import DBSCAN, AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    roc_auc_score,
)
from sklearn.neighbors import NearestNeighbors

from .data import ImageTensors


def has_encoder(family) -> bool:
    """Whether the family's model maps images to latents."""
    model = family.models.get("model")
    return model is not None and (hasattr(model, "encode") or hasattr(model, "hidden_probs"))


@torch.no_grad()
def encode(family, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Latents of images in [0, 1]: AE codes, VAE posterior means, RBM hidden probabilities."""
    model = family.models["model"]
    device = next(model.parameters()).device
    out = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device).float()
        z = model.hidden_probs(chunk) if hasattr(model, "hidden_probs") else model.encode(chunk)
        out.append((z[0] if isinstance(z, tuple) else z).float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def reconstruction_errors(family, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Per-image mean squared reconstruction error (images in [0, 1])."""
    model = family.models["model"]
    device = next(model.parameters()).device
    errors = [(model.reconstruct(x.to(device).float()).float() - x.to(device).float()).pow(2).flatten(1).mean(1).cpu() for x in images.split(batch_size)]
    return torch.cat(errors).numpy()


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def pca_baseline(train: np.ndarray, test: np.ndarray, k: int) -> tuple[float, PCA]:
    """Test MSE of the best rank-k linear reconstruction fitted on `train` (flattened images in [0, 1])."""
    pca = PCA(n_components=k, random_state=0).fit(train)
    recon = pca.inverse_transform(pca.transform(test)).clip(0, 1)
    return float(((recon - test) ** 2).mean()), pca


def clustering_scores(latents: np.ndarray, labels: np.ndarray, n_clusters: int, max_points: int = 3000, seed: int = 0) -> dict[str, dict[str, float]]:
    """ARI and NMI against the labels for K-Means, Ward hierarchical clustering and DBSCAN on (standardised) latents."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(latents))[:max_points]
    z, y = latents[idx], labels[idx]
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    # DBSCAN's eps: the 25th percentile of 10th-neighbour distances; larger values merge every class into one
    # cluster on autoencoder latents (measured on MNIST), smaller ones call most points noise
    distances, _ = NearestNeighbors(n_neighbors=10).fit(z).kneighbors(z)
    eps = float(np.percentile(distances[:, -1], 25))
    results = {}
    for name, algorithm in [("kmeans", KMeans(n_clusters, n_init=10, random_state=seed)), ("hierarchical", AgglomerativeClustering(n_clusters)),
                            ("dbscan", DBSCAN(eps=eps, min_samples=10))]:
        assigned = algorithm.fit_predict(z)
        results[name] = {"ari": float(adjusted_rand_score(y, assigned)), "nmi": float(normalized_mutual_info_score(y, assigned)),
                         "clusters": int(len(set(assigned) - {-1})), "noise_fraction": float((assigned == -1).mean())}
    return results


def anomaly_auroc(errors: np.ndarray, labels: np.ndarray, anomalous: list[int]) -> float:
    """AUROC of reconstruction error as a detector of the classes the model never saw."""
    positive = np.isin(labels, anomalous)
    if positive.all() or not positive.any():
        raise ValueError("anomaly detection needs both seen and unseen classes in the evaluation split")
    return float(roc_auc_score(positive, errors))


def plot_embeddings(latents: np.ndarray, labels: np.ndarray, class_names: list[str], path: str | Path, max_points: int = 2000, seed: int = 0) -> Path:
    """Side-by-side PCA and t-SNE scatter plots of the latents, coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    idx = np.random.default_rng(seed).permutation(len(latents))[:max_points]
    z, y = latents[idx], labels[idx]
    views = {"PCA": PCA(2, random_state=seed).fit_transform(z) if z.shape[1] > 2 else z,
             "t-SNE": TSNE(2, init="pca", random_state=seed, perplexity=min(30, len(z) - 1)).fit_transform(z)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (title, xy) in zip(axes, views.items()):
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=4, vmin=0, vmax=max(9, len(class_names) - 1))
        ax.set_title(f"{title} of {latents.shape[1]}-d latents")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(i))) for i in range(len(class_names))]
    fig.legend(handles, class_names, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def subspace_angles_to_pca(decoder_weight: np.ndarray, pca: PCA) -> np.ndarray:
    """Principal angles (degrees) between a linear decoder's column space and the PCA subspace of the same rank."""
    from scipy.linalg import subspace_angles

    return np.degrees(subspace_angles(decoder_weight, pca.components_.T))


def grid_points(n: int, span: float) -> torch.Tensor:
    """An n x n grid over [-span, span]^2, row-major from the top-left (y decreasing downwards), shape (n*n, 2)."""
    axis = torch.linspace(-span, span, n)
    return torch.stack(torch.meshgrid(axis.flip(0), axis, indexing="ij"), -1).reshape(-1, 2)[:, [1, 0]]


def to_flat(data: ImageTensors) -> np.ndarray:
    """uint8 images -> (N, pixels) floats in [0, 1]."""
    return (data.images.float() / 255.0).flatten(1).numpy()
