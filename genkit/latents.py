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


EMBEDDING_POINTS = 2000  # latents shown in the PCA / ICA / t-SNE plot (t-SNE's cost grows with their number)


def embedding_points(n: int, max_points: int = EMBEDDING_POINTS, seed: int = 0) -> np.ndarray:
    """Which of `n` latents the embedding plot shows (a seeded random subset)."""
    return np.random.default_rng(seed).permutation(n)[:max_points]


def tsne(latents: np.ndarray, max_points: int = EMBEDDING_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 2-d t-SNE of (a subset of) the latents and the indices of that subset; its iterations show on the progress line."""
    import contextlib
    import io
    import re

    from sklearn.manifold import TSNE

    from .progress import note

    class Iterations(io.TextIOBase):  # sklearn prints "[t-SNE] Iteration 350: ..." every 50 iterations when verbose
        def write(self, text: str) -> int:
            found = re.search(r"Iteration (\d+)", text)
            if found:
                note(f"iteration {found.group(1)} of {getattr(model, 'max_iter', None) or getattr(model, 'n_iter', '?')}")
            return len(text)

    idx = embedding_points(len(latents), max_points, seed)
    z = latents[idx]
    model = TSNE(2, init="pca", random_state=seed, perplexity=min(30, len(z) - 1), verbose=2)
    with contextlib.redirect_stdout(Iterations()):
        return model.fit_transform(z), idx


def plot_embeddings(latents: np.ndarray, labels: np.ndarray, class_names: list[str], path: str | Path, max_points: int = EMBEDDING_POINTS,
                    seed: int = 0, ica: np.ndarray | None = None, embedding: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Side-by-side PCA, (ICA,) and t-SNE scatter plots of the latents, coloured by label; `ica` holds the ICA sources,
    `embedding` the t-SNE already computed (what `tsne` returns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    embedded, idx = embedding if embedding is not None else tsne(latents, max_points, seed)
    z, y = latents[idx], labels[idx]
    views = {"PCA": PCA(2, random_state=seed).fit_transform(z) if z.shape[1] > 2 else z}
    if ica is not None and ica.shape[1] >= 2:
        sources = ica[idx]
        views["ICA (2 most non-Gaussian sources)"] = sources[:, np.argsort(-np.abs(_kurtosis(sources)))[:2]]
    views["t-SNE"] = embedded
    fig, axes = plt.subplots(1, len(views), figsize=(6 * len(views), 5))
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


def _kurtosis(x: np.ndarray) -> np.ndarray:
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)
    return (x**4).mean(0) - 3


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


# ---- ICA and the self-organising map --------------------------------------------------------------------------


def pca_components(latents: np.ndarray, n_components: int = 10, seed: int = 0) -> np.ndarray:
    """The first principal components of the (standardised) latents: the baseline beside ICA."""
    z = (latents - latents.mean(0)) / (latents.std(0) + 1e-8)
    return PCA(min(n_components, z.shape[1]), random_state=seed).fit_transform(z)


def ica_components(latents: np.ndarray, n_components: int | None = None, seed: int = 0) -> np.ndarray:
    """FastICA sources of the (standardised) latents: at most 10 maximally non-Gaussian directions."""
    from sklearn.decomposition import FastICA

    z = latents[:, latents.std(0) > 1e-6]  # dead units (always zero) have no direction to unmix
    z = (z - z.mean(0)) / z.std(0)
    k = min(n_components or 10, int(np.linalg.matrix_rank(z)))  # whitening needs a full-rank set of directions
    return FastICA(k, whiten="unit-variance", random_state=seed, max_iter=1000, tol=1e-3).fit_transform(z)


class SelfOrganizingMap:
    """A rectangular Kohonen map trained in batch mode: every epoch each unit moves to the neighbourhood-weighted mean of
    the points, with a Gaussian neighbourhood that shrinks from half the map to one unit."""

    def __init__(self, rows: int = 10, cols: int = 10, epochs: int = 30, seed: int = 0):
        self.rows, self.cols, self.epochs, self.seed = rows, cols, epochs, seed
        grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2)
        self.grid_distances = ((grid[:, None, :] - grid[None, :, :]) ** 2).sum(-1)  # squared, unit to unit
        self.codebook: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> "SelfOrganizingMap":
        """Learn the codebook (units x features) from points initialised on random samples."""
        rng = np.random.default_rng(self.seed)
        self.codebook = x[rng.choice(len(x), self.rows * self.cols, replace=len(x) < self.rows * self.cols)].astype(np.float64)
        start, end = max(self.rows, self.cols) / 2, 1.0
        for epoch in range(self.epochs):
            sigma = start * (end / start) ** (epoch / max(1, self.epochs - 1))
            h = np.exp(-self.grid_distances / (2 * sigma**2))[self.bmu(x)]  # (points, units)
            self.codebook = (h.T @ x) / (h.sum(0)[:, None] + 1e-12)
        return self

    def bmu(self, x: np.ndarray) -> np.ndarray:
        """Index of each point's best-matching unit."""
        d = (x**2).sum(1)[:, None] - 2 * x @ self.codebook.T + (self.codebook**2).sum(1)[None]
        return d.argmin(1)

    def quantization_error(self, x: np.ndarray) -> float:
        """Mean distance of the points to their best-matching units."""
        return float(np.linalg.norm(x - self.codebook[self.bmu(x)], axis=1).mean())

    def topographic_error(self, x: np.ndarray) -> float:
        """Fraction of points whose two best units are not neighbours on the map (0: the map preserves topology)."""
        d = (x**2).sum(1)[:, None] - 2 * x @ self.codebook.T + (self.codebook**2).sum(1)[None]
        first, second = np.argsort(d, 1)[:, :2].T
        return float((self.grid_distances[first, second] > 2).mean())

    def u_matrix(self) -> np.ndarray:
        """(rows, cols): mean codebook distance of each unit to its 4 grid neighbours; ridges separate clusters."""
        near = self.grid_distances == 1
        dist = np.linalg.norm(self.codebook[:, None] - self.codebook[None], axis=-1)
        return ((dist * near).sum(1) / near.sum(1)).reshape(self.rows, self.cols)

    def class_map(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(rows, cols): the majority label of the points each unit wins (-1 for units that win none)."""
        winners = self.bmu(x)
        out = np.full(self.rows * self.cols, -1)
        for unit in np.unique(winners):
            out[unit] = np.bincount(labels[winners == unit]).argmax()
        return out.reshape(self.rows, self.cols)


def som_scores(latents: np.ndarray, labels: np.ndarray, n_clusters: int, rows: int = 10, cols: int = 10, max_points: int = 3000,
               seed: int = 0) -> tuple[dict[str, float], SelfOrganizingMap, np.ndarray, np.ndarray]:
    """Train a SOM on standardised latents; ARI/NMI of its units grouped into `n_clusters` (K-Means on the codebook),
    unit purity, quantisation and topographic errors. Also returns the map and the points and labels it saw."""
    idx = np.random.default_rng(seed).permutation(len(latents))[:max_points]
    z, y = latents[idx], labels[idx]
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    som = SelfOrganizingMap(rows, cols, seed=seed).fit(z)
    winners = som.bmu(z)
    groups = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(som.codebook)[winners]
    majority = som.class_map(z, y).reshape(-1)[winners]
    scores = {"ari": float(adjusted_rand_score(y, groups)), "nmi": float(normalized_mutual_info_score(y, groups)),
              "unit_purity": float((majority == y).mean()), "quantization_error": som.quantization_error(z),
              "topographic_error": som.topographic_error(z), "units": rows * cols}
    return scores, som, z, y


def plot_som(som: SelfOrganizingMap, z: np.ndarray, labels: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """The U-matrix beside the class map (majority label per unit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    shown = left.imshow(som.u_matrix(), cmap="bone_r")
    left.set_title("U-matrix (distance to neighbouring units)")
    fig.colorbar(shown, ax=left, fraction=0.046)
    classes = np.ma.masked_less(som.class_map(z, labels), 0)
    right.imshow(classes, cmap="tab10", vmin=0, vmax=max(9, len(class_names) - 1))
    for (r, c), value in np.ndenumerate(classes.filled(-1)):
        if value >= 0:
            right.text(c, r, class_names[value][:3], ha="center", va="center", fontsize=6)
    right.set_title("class map (majority label per unit)")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


# ---- k-NN probe and k-NN anomaly scores ----------------------------------------------------------------------


def knn_probe(train_latents: np.ndarray, train_labels: np.ndarray, test_latents: np.ndarray, test_labels: np.ndarray,
              ks: tuple[int, ...] = (1, 3, 5, 9, 15, 25), validation_fraction: float = 0.2, seed: int = 0) -> dict:
    """Test accuracy of a k-NN classifier on (standardised) latents, with k chosen on a validation split of the training latents."""
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit_z, val_z, fit_y, val_y = train_test_split(train_latents, train_labels, test_size=validation_fraction, random_state=seed)
    validation = {}
    for k in [k for k in ks if k <= len(fit_z)]:
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(k)).fit(fit_z, fit_y)
        validation[k] = float(model.score(val_z, val_y))
    best = max(validation, key=lambda k: (validation[k], -k))  # ties: the smaller k
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(best)).fit(train_latents, train_labels)  # refit on every training latent
    return {"accuracy": float(model.score(test_latents, test_labels)), "k": int(best), "validation_accuracy": {str(k): v for k, v in validation.items()},
            "train_images": int(len(train_latents)), "validation_images": int(len(val_z)), "test_images": int(len(test_latents))}


def knn_distances(reference: np.ndarray, latents: np.ndarray, k: int = 5) -> np.ndarray:
    """Anomaly score of each latent: mean distance to its k nearest reference latents (standardised by the reference)."""
    mean, std = reference.mean(0), reference.std(0) + 1e-8
    neighbours = NearestNeighbors(n_neighbors=min(k, len(reference))).fit((reference - mean) / std)
    distances, _ = neighbours.kneighbors((latents - mean) / std)
    return distances.mean(1)
