"""How the results tables write numbers and names, in every table and format:
parameter counts, accelerations and text inside LaTeX.

:mod:`kdmri.tables` and :mod:`kdmri.comparisons` both write with these, so a table of
methods and the paper's table show a network's size the same way.
"""

from __future__ import annotations

import pandas as pd


def format_params(value) -> str:
    """A parameter count: ``1.23M`` from a million, ``49.3K`` from a thousand, the plain
    number below; ``-`` when missing."""
    if value is None or pd.isna(value):
        return "-"
    value = int(value)
    if value >= 1_000_000:
        return f"{value / 1e6:.2f}M"
    if value >= 1_000:
        return f"{value / 1e3:.1f}K"
    return str(value)


def format_acceleration(value) -> str:
    """An acceleration without a trailing ``.0`` (``4``, ``2.5``); a value that is not a
    number as it is."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if pd.isna(number):
        return str(value)
    return f"{int(number)}" if float(number).is_integer() else f"{number:g}"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped, for use in a tabular cell."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
