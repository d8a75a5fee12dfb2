"""How to analyse one source: `AnalysisOptions`, the one record of choices every pass reads.

A plain frozen value type: it decides nothing itself (`analysis.classification` and
`analysis.regression` read it; `analysis.regression.gamma_choice` validates the NRC3 choices).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse one source. `chunk_rows` None means the source's preferred read size."""

    chunk_rows: int | None = None
    drop_nonfinite: bool = False
    nc1_route: str = "auto"  # "auto" | "class_span" | "dxd"
    saved_sums: bool = True  # use class sums saved with the features (checked) instead of pass 1
    gamma: float | None = None  # regression: fixed NRC3 gamma (report --gamma)
    ufm_lambdas: tuple[float, float] | None = None  # regression: gamma = lambda_H * lambda_W
    ece_bins: int = 15  # calibration: equal-width confidence bins M (report --ece-bins)
    calibration: bool = True  # False: the calibration keys are not computed (--no-calibration)
    temperature_method: str = "nll"  # "nll" (NLL-optimal) | "grid_ece" (report --temperature)
    global_mean: str = "weighted"  # classification mu_G: "weighted" (sample) | "unweighted"
    target_cov: str = "centred"  # regression nrc3's Sigma: "centred" | "uncentred" (1/N sum y y^T)
    min_count: int = 1  # classification: leave out the classes with fewer rows (report --min-count)
    per_class: int = 0  # classification: per-class table of this many most/least frequent classes
