"""An activation atlas of a reward model: responses placed by their activations, coloured by
reward, with representative texts per region (after Carter et al. 2019, "Activation Atlas", for
a language reward model: the 2-D layout is a projection of pooled activations rather than a
feature-visualised grid)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rlhf_jax.interpret.options import PROJECTIONS  # noqa: F401 (re-exported)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of the rows of `x` ([N, 2] coordinates) and the share
    of variance each explains, by an SVD of the centred data (signs fixed so the largest
    loading of each component is positive)."""
    xc = np.asarray(x, np.float64) - np.mean(x, 0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    sign = np.sign(vt[np.arange(2), np.argmax(np.abs(vt[:2]), axis=1)])
    coords = (u[:, :2] * s[:2]) * sign
    return coords, (s[:2] ** 2) / max(np.sum(s ** 2), 1e-30)


def project(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates of the rows of `x`: PCA, or UMAP (McInnes et al. 2018) when the
    umap-learn package is installed."""
    if method == "pca":
        return pca_2d(x)[0]
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("projection='umap' needs the umap-learn package "
                             "(`pip install umap-learn`); use projection='pca'") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise ValueError(f"projection={method!r}: expected one of {PROJECTIONS}")


@dataclasses.dataclass(frozen=True)
class Region:
    """A region of the atlas: its centre, members, mean reward and the texts nearest its centre."""

    index: int
    centre: tuple
    size: int
    mean_reward: float
    texts: list


def regions(coords: np.ndarray, rewards: np.ndarray, texts: Sequence[str], k: int = 6,
            per_region: int = 3, seed: int = 0) -> tuple[np.ndarray, list[Region]]:
    """k-means (scikit-learn) regions of the 2-D layout, ordered by mean reward (highest first),
    each with the `per_region` distinct texts nearest its centre."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(coords)))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(coords)
    order = np.argsort([-rewards[km.labels_ == c].mean() for c in range(k)])
    relabel = np.empty(k, int)
    relabel[order] = np.arange(k)
    labels = relabel[km.labels_]
    out = []
    for new, c in enumerate(order):
        members = np.flatnonzero(km.labels_ == c)
        dist = np.linalg.norm(coords[members] - km.cluster_centers_[c], axis=1)
        picked = []
        for i in members[np.argsort(dist)]:
            if texts[i] not in picked:
                picked.append(texts[i])
            if len(picked) == per_region:
                break
        out.append(Region(new, tuple(float(v) for v in km.cluster_centers_[c]), len(members),
                          float(rewards[members].mean()), picked))
    return labels, out


def plot_atlas(coords: np.ndarray, rewards: np.ndarray, regs: list[Region], path,
               title: str = "Reward-model activation atlas", axis_label: str = "PC") -> None:
    """The atlas figure: every response a point coloured by reward, each region's number at
    its centre (its texts go in the report beside the figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5))
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=rewards, cmap="coolwarm_r", s=14, alpha=0.8)
    fig.colorbar(sc, ax=ax, label="reward (normalised)")
    for r in regs:
        ax.annotate(str(r.index + 1), r.centre, ha="center", va="center", fontsize=11,
                    weight="bold", bbox=dict(boxstyle="circle", fc="white", alpha=0.85))
    ax.set(xlabel=f"{axis_label} 1", ylabel=f"{axis_label} 2", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
