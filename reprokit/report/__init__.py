"""reprokit report: one self-contained HTML page (inline SVG, no network) and its JSON twin.

Sections are registered per run kind (`reprokit.report.sections.register_section`), so each kind
of run directory shows what it has; `build_report` renders them and `write_report` writes the page
and its twin atomically.
"""

from __future__ import annotations

from reprokit.report.render import CSP, Report, build_report, twin_path, write_report
from reprokit.report.sections import register_section, sections_for, supported_kinds

__all__ = [
    "CSP",
    "Report",
    "build_report",
    "register_section",
    "sections_for",
    "supported_kinds",
    "twin_path",
    "write_report",
]
from reprokit.report import sections_attribute as _sections_attribute  # noqa: E402,F401
from reprokit.report import sections_autodim as _sections_autodim  # noqa: E402,F401
from reprokit.report import sections_embedding as _sections_embedding  # noqa: E402,F401
from reprokit.report import sections_online as _sections_online  # noqa: E402,F401
from reprokit.report import sections_stability as _sections_stability  # noqa: E402,F401
