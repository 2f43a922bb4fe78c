"""`genkit analyze`: every latent analysis of an encoder run in one pass, one progress line per stage on stderr.

The stages are in genkit/latents.py (clustering, ICA, SOM, k-NN) and genkit/association.py (rules {units} -> class);
this module only runs them in order, times them and turns sklearn's convergence warnings into notes in the report.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from .config import ConfigError
from .progress import ticking


class Stages:
    """Announces each stage on stderr, times it, and collects convergence warnings as notes instead of printing them."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Run the block as the next stage."""
        self.done += 1
        print(f"analyze [{self.done}/{self.total}] {name} ...", file=self.stream, flush=True)
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, ticking(f"analyze [{self.done}/{self.total}] {name}"):
            warnings.simplefilter("always", ConvergenceWarning)
            yield
        for warning in caught:
            if issubclass(warning.category, ConvergenceWarning):
                note = f"{name}: {str(warning.message).strip()} (its result is used as it stands)"
                if note not in self.notes:
                    self.notes.append(note)
            else:
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        self.seconds[name] = round(time.perf_counter() - started, 2)
        print(f"analyze [{self.done}/{self.total}] {name}: {self.seconds[name]:.1f} s", file=self.stream, flush=True)


def binary_code_source(family) -> str | None:
    """What the association analysis reads as binary codes: RBM hidden units or a sparse autoencoder's code; None otherwise."""
    model = family.models["model"]
    if hasattr(model, "hidden_probs"):
        return "RBM hidden probabilities"
    if family.config.family == "autoencoder" and family.config.model.get("sparsity"):
        return f"sparse ({family.config.model['sparsity']}) autoencoder code units"
    return None


def default_code_threshold(family, latents: np.ndarray) -> float:
    """Where a unit counts as active: 0.5 for RBM hidden probabilities; for a sparse autoencoder, the value that the
    sparsity target's share of all code values exceeds (its 95th percentile for the usual 5 % target)."""
    if hasattr(family.models["model"], "hidden_probs"):
        return 0.5
    target = family.option("sparsity_target") if family.config.model.get("sparsity") == "kl" else 0.05
    return float(np.quantile(latents, 1 - target))


def analyze_run(family, out: Path, num_images: int = 5000, train_images: int = 10000, code_threshold: float | None = None,
                min_support: float = 0.02, min_confidence: float = 0.5, max_units: int = 2, max_items: int = 40, top_rules: int = 10,
                knn_k: int = 5, stream=None) -> dict[str, Any]:
    """Analyse the latents of `family` on the evaluation split; write plots, tables and `analysis.json` into `out`; return the report."""
    from . import latents as lat
    from .evaluation import real_images, to_unit

    data = family.config.data
    model = family.models["model"]
    names, k = family.info.class_names, family.info.num_classes
    codes_from = binary_code_source(family)
    linear = bool(getattr(model, "latent_dim", None) and family.config.model.get("linear"))
    stage = Stages(10 + bool(codes_from) + linear, stream)
    out.mkdir(parents=True, exist_ok=True)

    with stage(f"encoding {num_images} evaluation and {train_images} training images"):
        split = data.eval_split or data.split
        test = real_images(data, split, num_images)
        train = real_images(data, data.split, train_images, offset=len(test) if split == data.split else 0)  # disjoint from the test images
        latents, labels = lat.encode(family, to_unit(test)), test.labels.numpy()
        train_latents, train_labels = lat.encode(family, to_unit(train)), train.labels.numpy()
    if not (latents.std(0) > 1e-6).any():
        raise ConfigError(f"every latent unit of this run is constant over the {len(latents)} images (dead or saturated units): nothing to analyse")
    report: dict[str, Any] = {"latent_dim": int(latents.shape[1]), "images": int(len(latents))}
    with stage("K-Means, Ward and DBSCAN on the latents"):
        report["clustering"] = lat.clustering_scores(latents, labels, k)
    with stage("FastICA sources"):
        ica = lat.ica_components(latents)
        report["ica_components"] = int(ica.shape[1])
    with stage("clustering of the principal components and of the ICA sources"):
        report["pca_clustering"] = lat.clustering_scores(lat.pca_components(latents, ica.shape[1]), labels, k)
        report["ica_clustering"] = lat.clustering_scores(ica, labels, k)
    with stage("self-organising map"):
        report["som"], som, som_points, som_labels = lat.som_scores(latents, labels, k)
    with stage("k-NN classification probe"):
        report["knn_probe"] = lat.knn_probe(train_latents, train_labels, latents, labels)
    with stage("k-NN distance anomaly scores"):
        report["knn_anomaly"] = _anomaly(family, test, latents, labels, train_latents, train_labels, knn_k, out)
    if codes_from:
        with stage("association rules {units} -> class (Apriori)"):
            threshold = default_code_threshold(family, latents) if code_threshold is None else code_threshold
            report["association"] = _association(latents, labels, names, codes_from, threshold, min_support, min_confidence, max_units,
                                                 max_items, top_rules, out)
    with stage(f"t-SNE of {min(len(latents), lat.EMBEDDING_POINTS):,} latents"):
        embedding = lat.tsne(latents)
    with stage("PCA / ICA / t-SNE plot"):
        report["plot"] = str(lat.plot_embeddings(latents, labels, names, out / "latents.png", ica=ica, embedding=embedding))
    with stage("SOM plot"):
        report["som_plot"] = str(lat.plot_som(som, som_points, som_labels, names, out / "som.png"))
    if linear:
        with stage("linear autoencoder vs PCA"):
            _, pca = lat.pca_baseline(lat.to_flat(real_images(data, data.split, 10000)), lat.to_flat(test), model.latent_dim)
            angles = lat.subspace_angles_to_pca(model.decoder[-1].weight.detach().cpu().numpy(), pca)
            report["linear_ae_vs_pca"] = {"max_principal_angle_deg": float(angles.max()), "mean_principal_angle_deg": float(angles.mean())}
    report["notes"], report["seconds"] = stage.notes, stage.seconds
    return report


def summary(report: dict[str, Any], path: Path) -> str:
    """A few lines for the terminal: the headline figure of each analysis, and where the full report is."""
    def scores(result: dict[str, dict[str, float]]) -> str:
        return ", ".join(f"{name} {v['ari']:.3f} / {v['nmi']:.3f}" for name, v in result.items())

    lines = [f"{report['images']:,} evaluation images, {report['latent_dim']}-d latents; full report: {path}",
             f"clustering ARI / NMI against the labels: {scores(report['clustering'])}",
             f"  on {report['ica_components']} principal components: {scores(report['pca_clustering'])}; "
             f"on as many ICA sources: {scores(report['ica_clustering'])}",
             f"self-organising map: ARI {report['som']['ari']:.3f}, unit purity {report['som']['unit_purity']:.3f}, "
             f"topographic error {report['som']['topographic_error']:.3f}",
             f"k-NN probe: accuracy {report['knn_probe']['accuracy']:.3f} (k={report['knn_probe']['k']}, "
             f"{report['knn_probe']['train_images']:,} training images)"]
    anomaly = report["knn_anomaly"]
    line = f"k-NN anomaly score: mean distance {anomaly['mean_distance']:.3f}"
    if "auroc_knn_distance" in anomaly:
        line += f"; AUROC on the unseen classes {anomaly['unseen_classes']}: {anomaly['auroc_knn_distance']:.3f}"
        if "auroc_reconstruction_error" in anomaly:
            line += f" (reconstruction error: {anomaly['auroc_reconstruction_error']:.3f})"
    lines.append(f"{line}; per image: {anomaly['scores_csv']}")
    if "linear_ae_vs_pca" in report:
        lines.append(f"linear autoencoder vs PCA: largest principal angle {report['linear_ae_vs_pca']['max_principal_angle_deg']:.1f} deg")
    lines.append(f"plots: {', '.join(report[key] for key in ('plot', 'som_plot') if report.get(key))}")
    return "\n".join(lines)


def _anomaly(family, test, latents, labels, train_latents, train_labels, k, out: Path) -> dict[str, Any]:
    """k-NN distances to the training latents of the classes the model saw, beside reconstruction errors; AUROC of both
    when the run left classes out (`data.exclude_labels`). Per-image scores go to anomaly_scores.csv."""
    from scipy.stats import spearmanr

    from . import latents as lat
    from .evaluation import to_unit

    unseen = list(family.config.data.exclude_labels)
    reference = train_latents[~np.isin(train_labels, unseen)]  # "normal" = what the model was trained on
    scores = lat.knn_distances(reference, latents, k)
    result: dict[str, Any] = {"k": k, "reference_images": int(len(reference)), "mean_distance": float(scores.mean())}
    columns = {"label": labels, "knn_distance": scores}
    if hasattr(family.models["model"], "reconstruct"):
        errors = lat.reconstruction_errors(family, to_unit(test))
        columns["reconstruction_error"] = errors
        result["spearman_with_reconstruction_error"] = float(spearmanr(scores, errors).statistic)
    if unseen and np.isin(labels, unseen).any() and not np.isin(labels, unseen).all():
        result["unseen_classes"] = unseen
        result["auroc_knn_distance"] = lat.anomaly_auroc(scores, labels, unseen)
        if "reconstruction_error" in columns:
            result["auroc_reconstruction_error"] = lat.anomaly_auroc(columns["reconstruction_error"], labels, unseen)
    import pandas as pd

    path = out / "anomaly_scores.csv"
    pd.DataFrame(columns).to_csv(path, index_label="image", float_format="%.6g")
    result["scores_csv"] = str(path)
    return result


def _association(latents, labels, names, codes_from, threshold, min_support, min_confidence, max_units, max_items, top, out: Path) -> dict[str, Any]:
    """Rules {units} -> class among the active units; every rule to CSV/JSON, the strongest in the report, a plot."""
    from . import association as assoc

    codes = assoc.binary_codes(latents, threshold)
    rules = assoc.class_rules(codes, labels, names, min_support, min_confidence, max_units, max_items)
    csv_path, json_path = assoc.save_rules(rules, out)
    plot = assoc.plot_rules(rules, out / "association_rules.png")
    return {"codes": f"{codes_from} > {threshold:.4g}", "units": int(codes.shape[1]), "units_mined": min(max_items, int(codes.shape[1])),
            "active_units_per_image": float(codes.sum(1).mean()),
            "units_ever_active": int(codes.any(0).sum()), "min_support": min_support, "min_confidence": min_confidence, "max_units": max_units,
            "rules": int(len(rules)), "top_rules": assoc.rules_to_records(rules, top),
            "csv": str(csv_path), "json": str(json_path), "plot": str(plot) if plot else None}
