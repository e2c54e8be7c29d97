"""Scaling-law studies: sweep specs and runs (``spec``, ``sweep``), the sweep folder and the
state of its members (``folder``), the results table with compute accounting
(``results``), Pareto frontiers and saturating power-law fits (``fit``), and their figures
(``plots``)."""
