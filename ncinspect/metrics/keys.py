"""The metric catalogue: canonical keys, short table headers, and which direction means collapse.

`MetricInfo.better` states each key's direction: "lower" (lower is more collapsed, or a better
fit for mse), "higher" (accuracy, evr, r2: higher is better; ncc_accuracy: higher is more
collapsed) or "-" (nrc3_gamma,
nrc3_gamma_ratio, temperature: parameters; norms and evr_j: descriptive; neither is a score); the
definitions are in docs/metrics.md. A leaf module (no imports from ncinspect): the single place
the metric tables, the table legends and `--metrics` validation read from.
"""

from __future__ import annotations

from dataclasses import dataclass

# evr_j and nrc1_at_k exist for j, k = 1 .. this (null beyond min(D, this)).
PCA_COMPONENTS = 10


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
    MetricInfo("mean_norm_means", "MeanNormM", "-", "mean_k ||mu_k - mu_G||"),
    MetricInfo("mean_norm_weights", "MeanNormW", "-", "mean_k ||w_k||"),
    MetricInfo("mean_norm_features", "MeanNormH", "-", "(1/N) sum_i ||h_i - mu_G||"),
    MetricInfo("norm_ratio", "NormRatio", "-", "mean_norm_weights / mean_norm_means"),
    MetricInfo(
        "separation_fuzziness", "Fuzz", "lower", "tr(Sigma_W pinv(Sigma_B)) = K x nc1 (He & Su)"
    ),
    MetricInfo("ncc_accuracy", "NCCAcc", "higher", "fraction nearest to their own class mean"),
    MetricInfo("gnc2_log", "GNC2log", "lower", "mean_{i<j} log(1/||u_i - u_j||) of the hat means"),
    MetricInfo("gnc2_riesz", "GNC2riesz", "lower", "mean_{i<j} ||u_i - u_j||^-s, s = D - 2"),
    MetricInfo("unc3", "UNC3", "lower", "std / mean over k of cos(w_k, mu_k - mu_G)"),
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
    *(
        MetricInfo(f"evr_{j}", f"EVR{j}", "-", f"variance share of principal component {j}")
        for j in range(1, PCA_COMPONENTS + 1)
    ),
    *(
        MetricInfo(f"nrc1_at_{k}", f"NRC1@{k}", "lower", f"nrc1 with the top {k} components")
        for k in range(1, PCA_COMPONENTS + 1)
    ),
)

# Calibration of the stored logits (classification sources with outputs): metrics.calibration
_CALIBRATION = (
    MetricInfo("ece", "ECE", "lower", "expected calibration error, equal-width bins"),
    MetricInfo("mce", "MCE", "lower", "largest |accuracy - confidence| over the bins"),
    MetricInfo("adaece", "AdaECE", "lower", "ece over equal-mass bins"),
    MetricInfo("cw_ece", "cwECE", "lower", "class-wise ece, mean over the K classes"),
    MetricInfo("nll", "NLL", "lower", "mean -log p of the label"),
    MetricInfo("brier", "Brier", "lower", "mean squared distance of softmax to one-hot"),
    MetricInfo("temperature", "Temp", "-", "the temperature minimising the NLL"),
    MetricInfo("ece_ts", "ECE-TS", "lower", "ece after temperature scaling"),
)

CLASSIFICATION_KEYS: tuple[str, ...] = tuple(m.key for m in _CLASSIFICATION)
CALIBRATION_KEYS: tuple[str, ...] = tuple(m.key for m in _CALIBRATION)
REGRESSION_KEYS: tuple[str, ...] = tuple(m.key for m in _REGRESSION)
METRICS: dict[str, MetricInfo] = {m.key: m for m in (*_CLASSIFICATION, *_CALIBRATION, *_REGRESSION)}

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
    """Every key a result of the task carries (classification: the calibration keys too)."""
    if task == "classification":
        return CLASSIFICATION_KEYS + CALIBRATION_KEYS
    return REGRESSION_KEYS


# How a checkpoint generalises: the keys a paired report (`report --nc-split A --eval-split B`)
# takes from the evaluation split; "table": those its default table shows.
EVALUATION_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "nc4", *CALIBRATION_KEYS),
    "regression": ("mse", "r2"),
    "table": ("accuracy", "nc4", "ece", "nll", "mse", "r2"),
}
