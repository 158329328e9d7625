"""The network-adaptive controller (``mimirate.ratecontrol``) behind the transport's interface.

The transport's senders call ``on_sent`` for each packet, ``update`` with each FEEDBACK
report, and ``update(None, now)`` for each frame (time-driven decisions: ramps, and pauses
while the path is stalled); the controller answers with a
:class:`~mimirate.transport.session.SendDecision`. The controller picks settings by
expected quality, from the quality table measured for the model; where no table has been
measured for any model, senders keep fixed levels (and say so in their stats).
"""

from __future__ import annotations

from typing import Protocol

from mimirate.errors import ConfigError
from mimirate.transport.session import FixedPolicy, RateController, SendDecision
from mimirate.transport.wire import FeedbackReport


class AdaptivePolicy:
    """:class:`mimirate.ratecontrol.controller.AdaptiveController` as a transport policy."""

    name = "adaptive"

    def __init__(self, controller: object, max_levels: int) -> None:
        from mimirate.ratecontrol.controller import FeedbackReader

        self.controller = controller
        self.reader = FeedbackReader()
        self.max_levels = max_levels

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        self.reader.sent(seq, send_ms, wire_bytes)
        self.controller.on_sent(seq, send_ms, wire_bytes)  # type: ignore[attr-defined]

    def update(self, report: FeedbackReport | None, now_ms: float) -> SendDecision:
        feedback = None if report is None else self.reader.read(report)
        d = self.controller.update(feedback, now_ms)  # type: ignore[attr-defined]
        return SendDecision(
            min(d.levels, self.max_levels),
            d.frames_per_packet,
            d.redundancy,
            d.pause,
            min(d.silence_levels, self.max_levels),
        )


def make_controller(num_levels: int, model: str, table: str | None = None) -> RateController | None:
    """A fresh adaptive controller for one stream of ``model``, or None without one.

    ``table`` names the quality table (a model name or a JSON file; ConfigError if it
    cannot be read). Without it: the table measured for ``model``, else, while the model
    has none yet (one just trained), another model's, since the shape of quality against
    levels is what the choice depends on.
    """
    try:
        from mimirate.ratecontrol.controller import AdaptiveController
        from mimirate.ratecontrol.options import OptionTable
        from mimirate.ratecontrol.qoe import available_tables, load_quality_table
        from mimirate.ratecontrol.wire import WireSizer
    except ImportError:
        return None
    if table is not None:
        load_quality_table(table)  # a table the user named must exist: say so now
    names = [table] if table else [model, *(t for t in available_tables() if t != model)]
    for name in names:
        try:
            quality = load_quality_table(name)
        except ConfigError:
            continue
        levels = tuple(range(1, min(num_levels, quality.num_levels) + 1))
        options = OptionTable(WireSizer(), quality, levels=levels)
        return AdaptivePolicy(AdaptiveController(options), num_levels)
    return None


class SendSettings(Protocol):
    """What a sender is configured with (``ServerConfig`` and ``ClientOptions`` both are)."""

    @property
    def levels(self) -> int: ...
    @property
    def frames_per_packet(self) -> int: ...
    @property
    def redundancy_levels(self) -> int: ...
    @property
    def adaptive(self) -> bool: ...
    @property
    def quality_table(self) -> str | None: ...


def make_policy(
    settings: SendSettings, num_levels: int, model: str
) -> tuple[RateController, SendDecision]:
    """The sender's policy and its first decision: the adaptive controller when asked for
    and a quality table exists, else the fixed settings."""
    initial = SendDecision(settings.levels, settings.frames_per_packet, settings.redundancy_levels)
    if settings.adaptive:
        controller = make_controller(num_levels, model, settings.quality_table)
        if controller is not None:
            return controller, initial
    return FixedPolicy(initial), initial
