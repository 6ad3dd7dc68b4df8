"""The Frechet distance between two Gaussians, and the running statistics it is computed from.

``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` (Dowson & Landau 1982), computed as
pytorch-fid's ``calculate_frechet_distance`` does, so FID, FVD and E-FID here agree with the
numbers papers report: float64, ``scipy.linalg.sqrtm`` of the product, an ``eps`` added to both
diagonals when the product is singular, and an imaginary part dropped only when it is negligible.

numpy only at import; scipy is imported inside :func:`frechet_distance`.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

# pytorch-fid's offset for a singular product and its tolerance on the imaginary part of the
# diagonal of sqrt(S1 S2), which only rounding can put there.
SINGULAR_EPS = 1e-6
IMAGINARY_ATOL = 1e-3


class RunningGaussian:
    """Mean and covariance of feature vectors added in batches, without keeping the vectors.

    Holds the count, the sum and the sum of outer products in float64 (a 2048-d Inception feature
    costs 32 MB of state however many frames are added), of the features minus the first batch's
    mean, so a large common offset cannot cancel the covariance's digits away. :meth:`statistics`
    gives the mean and the unbiased covariance, as ``np.mean`` / ``np.cov(rowvar=False)`` in
    pytorch-fid.
    """

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self._shift = None
        self._sum = None
        self._outer = None

    def add(self, features) -> None:
        """``features [n, d]`` (numpy or anything ``np.asarray`` takes)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise ValueError(f"{self.name}: features must be [n, d], got shape {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError(f"{self.name}: the network gave NaN or infinite features; check the weight file")
        if self._sum is None:
            self._shift = features.mean(axis=0)
            self._sum = np.zeros(features.shape[1])
            self._outer = np.zeros((features.shape[1], features.shape[1]))
        elif features.shape[1] != self._sum.shape[0]:
            raise ValueError(f"{self.name}: features of size {features.shape[1]} after {self._sum.shape[0]}")
        centred = features - self._shift
        self.count += features.shape[0]
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu [d], sigma [d, d])``; ValueError with fewer than two samples (no covariance)."""
        if self.count < 2:
            raise ValueError(f"{self.name}: {self.count} sample(s); a covariance needs at least 2 "
                             "(give more or longer videos)")
        centred_mean = self._sum / self.count
        sigma = (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)
        mu = self._shift + centred_mean
        if self.count <= mu.shape[0]:
            logger.warning("%s: %d samples for %d-d features: the covariance is singular and the distance "
                           "biased; papers use thousands of samples", self.name, self.count, mu.shape[0])
        return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = SINGULAR_EPS) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid computes it.

    When ``sqrt(sigma1 @ sigma2)`` is not finite (a singular product, e.g. fewer samples than
    dimensions), ``eps`` is added to both diagonals and the root taken again. A complex root whose
    diagonal has an imaginary part above 1e-3 means the covariances are not valid (not positive
    semi-definite): ValueError rather than a silently wrong number.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched Gaussians: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _finite_sqrtm(linalg, sigma1 @ sigma2)
    if covmean is None:
        logger.info("singular covariance product; adding %g to the diagonals (as pytorch-fid does)", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _finite_sqrtm(linalg, (sigma1 + offset) @ (sigma2 + offset))
        if covmean is None:
            raise ValueError("the covariance product has no finite square root even with an eps offset; "
                             "the features are degenerate (check the videos and the weight file)")
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > IMAGINARY_ATOL:
            raise ValueError(f"sqrt(sigma1 sigma2) has an imaginary component of {imaginary:.3g}: "
                             "the covariances are not positive semi-definite")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _finite_sqrtm(linalg, matrix: np.ndarray):
    """``sqrtm(matrix)``, or None where it is not finite (SciPy warns and returns inf/nan then)."""
    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(matrix)
    return root if np.isfinite(root).all() else None


def frechet_distance_of(first: RunningGaussian, second: RunningGaussian) -> float:
    """:func:`frechet_distance` between the statistics of two feature sets."""
    return frechet_distance(*first.statistics(), *second.statistics())
