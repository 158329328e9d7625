"""Rate control: which levels each frame gets, from its content and from the network.

Above the codec and the bitstream, below transport and the CLI (it imports neither).

- :mod:`~mimirate.ratecontrol.allocation`: content-adaptive levels for a target bitrate
  (:func:`allocate`, :class:`StreamingAllocator` with a bounded lookahead).
- :mod:`~mimirate.ratecontrol.controller`: the network-adaptive real-time controller
  (:class:`AdaptiveController`, fed :class:`Feedback` through :class:`FeedbackReader`).
- :mod:`~mimirate.ratecontrol.baselines`: fixed, throughput and queue rules, the offline optimum.
- :mod:`~mimirate.ratecontrol.simulator`, :mod:`~mimirate.ratecontrol.traces`: the
  trace-driven simulator; :mod:`~mimirate.ratecontrol.qoe`: per-frame QoE and the measured
  quality tables; :mod:`~mimirate.ratecontrol.progressive`: voice-message delivery.
- :mod:`~mimirate.ratecontrol.vad`: the senders' voice activity detector (DTX).
"""

from __future__ import annotations

from mimirate.ratecontrol.allocation import (
    Allocation,
    Calibration,
    StreamingAllocator,
    allocate,
    fit_allocation,
    loudness_weights,
)
from mimirate.ratecontrol.controller import (
    AdaptiveController,
    Decision,
    Feedback,
    FeedbackReader,
    PacketArrival,
    RateController,
)
from mimirate.ratecontrol.options import OptionTable, StreamOption
from mimirate.ratecontrol.qoe import QualityTable, frame_qoe, load_quality_table
from mimirate.ratecontrol.vad import VoiceActivity
from mimirate.ratecontrol.wire import WireSizer, build_packet

__all__ = [
    "AdaptiveController",
    "Allocation",
    "Calibration",
    "Decision",
    "Feedback",
    "FeedbackReader",
    "OptionTable",
    "PacketArrival",
    "QualityTable",
    "RateController",
    "StreamOption",
    "StreamingAllocator",
    "VoiceActivity",
    "WireSizer",
    "allocate",
    "build_packet",
    "fit_allocation",
    "frame_qoe",
    "load_quality_table",
    "loudness_weights",
]
