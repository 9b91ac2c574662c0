"""The `nasc.Error` hierarchy: every error a user can cause and act on.

Each error carries one message that names what went wrong (the node, its scope
and op where there is one) and what to do about it. The CLI prints the message
on one line and exits with status 2; nothing else in nasc raises these for bugs.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every error nasc reports to a user."""


class ModelLoadError(Error):
    """The model file or object could not be read as a model."""


class UnsupportedModelError(Error):
    """The model is valid, but uses something nasc cannot handle yet."""


class ShapeError(Error):
    """Shapes are missing, dynamic where they must be static, or inconsistent."""


class VerificationError(Error):
    """A graph broke an IR invariant (structure or types)."""


class ParseError(Error):
    """The IR text form could not be parsed."""


class ExportError(Error):
    """A graph could not be written out in the requested format."""


class UsageError(Error):
    """Bad arguments to a command or API call."""


class DeviceError(Error):
    """A build needs a device (a CUDA GPU) that this host does not have."""
