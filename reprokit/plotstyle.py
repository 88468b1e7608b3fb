"""What every reprokit figure shares (report pages and a study's trade-off plot): the palette."""

from __future__ import annotations

#: Colour of series i (i modulo its length); colour-blind-friendly order of matplotlib's tab10.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
