"""Presentation only: how results look as tables, JSON, CSV, Markdown and figures.

    tables   rich tables, JSON, CSV and Markdown of results, runs, comparisons and UFM reports
    plots    every figure (matplotlib through the Agg canvas, imported lazily)
    ufm      the rows and captions of the UFM reports and distance blocks
    describe the text form of `ncinspect inspect`

Never computes a metric (it reads `Result`s, runs and reports; a figure may evaluate a metric
function along a curve) and never opens a feature store. rich and matplotlib are imported here
and in the CLI only.
"""
