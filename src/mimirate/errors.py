"""The exception types mimirate raises on bad input.

Every error a user can cause derives from :class:`MimirateError`, so callers can
catch one type. Each subclass names the layer that found the problem.
"""

from __future__ import annotations


class MimirateError(Exception):
    """Base class of every error mimirate raises on purpose."""


class AudioError(MimirateError, ValueError):
    """Audio that cannot be read or used: unreadable file, empty, NaN, wrong shape."""


class ConfigError(MimirateError, ValueError):
    """An unknown preset, an impossible configuration or an out-of-range setting."""


class CheckpointError(MimirateError):
    """A weights file that is missing, unreadable, of an unknown layout or mismatched."""


class FormatError(MimirateError, ValueError):
    """Bytes that do not follow docs/format.md (a .mimi file or a packet)."""


class TraceError(MimirateError, ValueError):
    """A network trace that cannot be read or used (rate control's simulator)."""
