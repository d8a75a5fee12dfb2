"""Unconstrained feature model (UFM) theory: closed forms, a numerical solver, and distances.

The optima of the two UFM losses defined in docs/metrics.md, and how far a trained network sits
from them. One module per job:
    classify   the classification closed form (label smoothing included) and its checks
    regress    the regression closed form, its checks, and targets with an exact covariance
    solver     float64 L-BFGS from a seeded random start, for both losses
    reports    closed form vs. numerical solution side by side (`ncinspect ufm`), and sweeps
    distance   a trained network's distance to the optimum of its own regularization (`report`)
    inputs     parsing the `ncinspect ufm` commands' inputs: comma lists, matrices, target files

Never: reads checkpoints or feature stores, renders or plots (`ncinspect.render` does). torch is
imported inside the solver only, so importing any of these modules stays cheap.
Axes: N samples, D feature dimension, K classes, T regression targets.
"""
