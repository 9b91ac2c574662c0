"""report.html: the page every build writes beside report.json, and ``nasc report DIR`` re-renders."""

from nasc.report.page import render, write

__all__ = ["render", "write"]
