"""The scalable bitstream: bit packing, the ``.mimi`` file, real-time packets, bitrates
and entropy coding. Specified in docs/format.md. Does not import torch or the model."""

from __future__ import annotations

from mimirate.bitstream.bitpack import pack_codes, packed_size, unpack_codes
from mimirate.bitstream.container import (
    DEFAULT_CHUNK_FRAMES,
    Header,
    IncompleteError,
    MimiFile,
    PartialFile,
    parse_header,
    read_prefix,
    truncate_bytes,
)
from mimirate.bitstream.entropy import ContextSource, EntropyTable, find_table, fit_table
from mimirate.bitstream.packet import (
    Bye,
    ByeReason,
    FeedbackReport,
    Hello,
    LevelCapRequest,
    Message,
    MessageType,
    Packet,
    Redundancy,
    parse_message,
)
from mimirate.bitstream.rate import (
    IP_UDP_RTP_HEADER_BYTES,
    BitrateReport,
    bitrate_table,
    nominal_bps,
    packet_wire_bytes,
    stream_report,
    wire_bps,
)

__all__ = [
    "DEFAULT_CHUNK_FRAMES",
    "IP_UDP_RTP_HEADER_BYTES",
    "BitrateReport",
    "Bye",
    "ByeReason",
    "ContextSource",
    "EntropyTable",
    "FeedbackReport",
    "Header",
    "Hello",
    "IncompleteError",
    "LevelCapRequest",
    "Message",
    "MessageType",
    "MimiFile",
    "Packet",
    "PartialFile",
    "Redundancy",
    "bitrate_table",
    "find_table",
    "fit_table",
    "nominal_bps",
    "pack_codes",
    "packed_size",
    "packet_wire_bytes",
    "parse_header",
    "parse_message",
    "read_prefix",
    "stream_report",
    "truncate_bytes",
    "unpack_codes",
    "wire_bps",
]
