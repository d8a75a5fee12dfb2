"""The metric catalogue: canonical keys, short table headers, and which direction means collapse.

`MetricInfo.better` states each key's direction: "lower" (lower is more collapsed, or a better
fit for mse), "higher" (accuracy, evr, r2: higher is better) or "-" (nrc3_gamma and
nrc3_gamma_ratio: parameters, not scores); the definitions are in docs/metrics.md. A leaf module
(no imports from ncinspect): the single place the metric tables, the table legends and
`--metrics` validation read from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    key: str
    header: str
    better: str  # "lower", "higher" or "-" (a parameter, not a score)
    summary: str


_CLASSIFICATION = (
    MetricInfo("nc1", "NC1", "lower", "tr(Sigma_W pinv(Sigma_B))/K: within- vs between-class"),
    MetricInfo("nc1_cdnv", "CDNV", "lower", "class-distance normalized variance, mean over pairs"),
    MetricInfo("nc2_equinorm_means", "NormM", "lower", "std/mean of centred class-mean norms"),
    MetricInfo("nc2_equinorm_weights", "NormW", "lower", "std/mean of classifier-row norms"),
    MetricInfo("nc2_equiangle_means", "AngM", "lower", "std of pairwise cosines of centred means"),
    MetricInfo("nc2_equiangle_weights", "AngW", "lower", "std of pairwise cosines of rows of W"),
    MetricInfo("nc2_maxangle_means", "MaxAngM", "lower", "mean |cos + 1/(K-1)| of centred means"),
    MetricInfo("nc2_maxangle_weights", "MaxAngW", "lower", "mean |cos + 1/(K-1)| of rows of W"),
    MetricInfo("nc2_etf_means", "ETFM", "lower", "distance of normalized Mc Mc^T to the ETF"),
    MetricInfo("nc2_etf_weights", "ETFW", "lower", "distance of normalized W W^T to the ETF"),
    MetricInfo("nc3", "NC3", "lower", "||W/||W|| - Mc/||Mc||||^2 (self-duality)"),
    MetricInfo("nc3_etf", "NC3etf", "lower", "distance of normalized W Mc^T to the ETF"),
    MetricInfo("nc4", "NC4", "lower", "fraction where classifier != nearest class mean"),
    MetricInfo("accuracy", "Acc", "higher", "fraction classified correctly"),
    MetricInfo("bias_gap", "BiasGap", "lower", "||W mu_G + b||"),
)

_REGRESSION = (
    MetricInfo("nrc1", "NRC1", "lower", "unit features' distance to the top-T PCA subspace"),
    MetricInfo("nrc2", "NRC2", "lower", "unit features' distance to the row space of W"),
    MetricInfo("nrc1_centered", "NRC1c", "lower", "nrc1 on centred, then normalized features"),
    MetricInfo("nrc2_centered", "NRC2c", "lower", "nrc2 on centred, then normalized features"),
    MetricInfo("nrc3", "NRC3", "lower", "distance of W W^T to Sigma^1/2 - sqrt(gamma) I"),
    MetricInfo("nrc3_gamma", "gamma", "-", "the gamma used for nrc3"),
    MetricInfo("nrc3_gamma_ratio", "g/lmin", "-", "nrc3_gamma / lambda_min"),
    MetricInfo("evr", "EVR", "higher", "variance explained by the top-T principal components"),
    MetricInfo("mse", "MSE", "lower", "mean squared error per target"),
    MetricInfo("r2", "R2", "higher", "coefficient of determination, pooled over targets"),
)

CLASSIFICATION_KEYS: tuple[str, ...] = tuple(m.key for m in _CLASSIFICATION)
REGRESSION_KEYS: tuple[str, ...] = tuple(m.key for m in _REGRESSION)
METRICS: dict[str, MetricInfo] = {m.key: m for m in (*_CLASSIFICATION, *_REGRESSION)}

# The columns a default table shows (JSON and CSV always carry every key).
TABLE_DEFAULT: dict[str, tuple[str, ...]] = {
    "classification": (
        "nc1",
        "nc1_cdnv",
        "nc2_equinorm_means",
        "nc2_equiangle_means",
        "nc2_etf_means",
        "nc2_etf_weights",
        "nc3",
        "nc3_etf",
        "nc4",
        "accuracy",
    ),
    "regression": (
        "nrc1",
        "nrc1_centered",
        "nrc2",
        "nrc2_centered",
        "nrc3",
        "nrc3_gamma",
        "evr",
        "r2",
    ),
}


def keys_for(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_KEYS if task == "classification" else REGRESSION_KEYS
