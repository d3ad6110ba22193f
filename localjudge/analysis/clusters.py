"""Clusters of saliency maps within a class, as SpRAy (Lapuschkin et al., 2019): the maps downsampled to a small grid
(each as the distribution of its mass), a k-nearest-neighbour affinity between them (SpRAy's, as CoRelAy's
SparseKNN: each map linked to its k nearest, the links made symmetric by their mean), spectral clustering with the
number of clusters chosen by the eigengap of the normalised graph Laplacian, seeded. A neighbour graph, unlike a
Gaussian of the distances with one width for all, lets a tight group of a few maps (a marker at one place) stand
apart from a spread-out majority: on the planted-tag test a Gaussian kept every class one cluster. Pure functions
over arrays (scikit-learn and scipy do the linear algebra); the labels are assigned by k-means on the spectral
embedding, as SpRAy's.

Per cluster: its size, the mean of its maps (on the grid), the share of that mean map's mass on the border of the
grid, and whatever per-map figures the caller gives (score, accuracy, region mass). A cluster is a *shortcut
candidate* when it is not the class's largest (its main way of looking) and looks elsewhere: where its maps and the
main cluster's have ground-truth regions, when its maps put at least REGION_GAP less of their mass on the object
(the object may sit anywhere, so a differently placed map on it is no shortcut); without regions, when its mean
map is unlike the main cluster's (Pearson correlation below MAIN_SIMILARITY)."""

from __future__ import annotations

import numpy as np

from ..config import CLUSTER_DEFAULTS
from .bootstrap import mean_interval

GRID = CLUSTER_DEFAULTS["grid"]
MAX_CLUSTERS = CLUSTER_DEFAULTS["max_clusters"]
NEIGHBOURS = CLUSTER_DEFAULTS["neighbours"]  # CoRelAy's SparseKNN default (at most the class's size - 1)
MIN_MAPS = CLUSTER_DEFAULTS["min_maps"]  # a class with fewer maps is not clustered
MAIN_SIMILARITY = 0.3
REGION_GAP = 0.2
BORDER = 1 / 8  # the border's width, as a share of the grid's side (2 cells of 16)


def downsample(saliency: np.ndarray, grid: int = GRID) -> np.ndarray:
    """The map's mean over each cell of a grid x grid partition (area averaging), as a vector summing to 1: where
    the map's mass lies, whatever its overall strength (a map without mass: zeros)."""
    saliency = np.asarray(saliency, dtype=np.float64)
    height, width = saliency.shape
    rows = np.linspace(0, height, grid + 1).astype(int)
    columns = np.linspace(0, width, grid + 1).astype(int)
    cells = np.add.reduceat(np.add.reduceat(saliency, rows[:-1], axis=0), columns[:-1], axis=1)
    sizes = np.outer(np.diff(rows), np.diff(columns))
    means = (cells / np.maximum(sizes, 1)).ravel()
    total = means.sum()
    return means / total if total > 0 else means


def knn_affinity(features: np.ndarray, neighbours: int) -> np.ndarray:
    """1 between a map and each of its `neighbours` nearest (Euclidean), then the mean with the transpose: 1 for a
    mutual link, 0.5 for a one-sided one."""
    from scipy.spatial.distance import pdist, squareform

    distances = squareform(pdist(np.asarray(features, dtype=np.float64)))
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :neighbours]
    links = np.zeros_like(distances)
    np.put_along_axis(links, nearest, 1.0, axis=1)
    return (links + links.T) / 2


def eigengap_clusters(features: np.ndarray, max_clusters: int = MAX_CLUSTERS, seed: int = 0,
                      neighbours: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (0 = the largest cluster, then by size) and the normalised Laplacian's smallest eigenvalues.
    k clusters (1 <= k <= max_clusters) where the gap between the k-th and (k+1)-th eigenvalue is largest (the
    eigengap heuristic, von Luxburg 2007, as SpRAy): k well separated groups give k eigenvalues near 0, then a gap;
    maps that vary smoothly stay one cluster."""
    import warnings

    from scipy.sparse.csgraph import laplacian
    from sklearn.cluster import SpectralClustering

    features = np.asarray(features, dtype=np.float64)
    count = len(features)
    if count < 3:
        return np.zeros(count, dtype=int), np.zeros(0)
    affinity = knn_affinity(features, min(neighbours, count - 1))
    values = np.sort(np.linalg.eigvalsh(laplacian(affinity, normed=True)))
    top = min(max_clusters, count - 1)
    gaps = np.diff(values[:top + 1])  # gaps[k - 1] = lambda_(k+1) - lambda_k
    k = int(np.argmax(gaps)) + 1 if len(gaps) else 1
    if k == 1:
        return np.zeros(count, dtype=int), values[:top + 1]
    with warnings.catch_warnings():  # a graph of separate components is the clearest case, not a problem
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                    assign_labels="kmeans").fit_predict(affinity)
    order = sorted(set(labels.tolist()), key=lambda c: (-int((labels == c).sum()), int(np.flatnonzero(labels == c)[0])))
    renumber = {old: new for new, old in enumerate(order)}
    return np.array([renumber[c] for c in labels]), values[:top + 1]


def border_share(mean_map: np.ndarray, grid: int = GRID, border: float = BORDER) -> float | None:
    """The share of a grid map's mass in its outer `border` of the side (at least one cell, and less than half the
    side so that an inside remains)."""
    cells = np.asarray(mean_map, dtype=np.float64).reshape(grid, grid)
    total = cells.sum()
    if total <= 0:
        return None
    width = min(max(1, round(border * grid)), (grid - 1) // 2)
    inner = cells[width:grid - width, width:grid - width].sum()
    return float((total - inner) / total)


def describe_clusters(features: np.ndarray, labels: np.ndarray, figures: dict[str, np.ndarray],
                      grid: int = GRID) -> list[dict]:
    """Each cluster's size, mean map, border share, the means of `figures` (NaN left out) and whether it is a
    shortcut candidate (see the module's rule)."""
    features = np.asarray(features, dtype=np.float64)
    clusters = []
    for cluster in range(int(labels.max()) + 1 if len(labels) else 0):
        members = labels == cluster
        mean_map = features[members].mean(axis=0)
        entry = {"cluster": cluster, "size": int(members.sum()), "mean_map": mean_map,
                 "border_share": border_share(mean_map, grid)}
        for name, values in figures.items():
            chosen = np.asarray(values, dtype=np.float64)[members]
            chosen = chosen[~np.isnan(chosen)]
            entry[name] = float(chosen.mean()) if len(chosen) else None
            entry[f"{name}_interval"] = list(mean_interval(chosen))  # the cluster's maps resampled
        clusters.append(entry)
    main = clusters[0] if clusters else None
    for entry in clusters:
        entry["similarity_to_main"] = None if entry is main else _pearson(entry["mean_map"], main["mean_map"])
        reasons = []
        if entry is not main:
            own, main_mass = entry.get("mass_in_region"), main.get("mass_in_region")
            if own is not None and main_mass is not None:
                if main_mass - own >= REGION_GAP:
                    reasons.append(f"it puts {main_mass - own:.2f} less of its mass on the object than the main "
                                   "cluster")
            elif entry["similarity_to_main"] is not None and entry["similarity_to_main"] < MAIN_SIMILARITY:
                reasons.append(f"its mean map is unlike the main cluster's (r = {entry['similarity_to_main']:.2f})")
        entry["shortcut_candidate"] = bool(reasons)
        entry["reasons"] = reasons
    return clusters


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])
