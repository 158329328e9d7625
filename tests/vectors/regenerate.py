"""Build the committed bitstream test vectors (docs/format.md) deterministically.

Run ``.venv/bin/python tests/vectors/regenerate.py`` to rewrite the ``*.bin`` files after
a deliberate format change; tests/test_container.py and tests/test_packet.py check that
the committed files equal what this builds, byte for byte.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mimirate.bitstream import (
    Bye,
    ByeReason,
    ContextSource,
    EntropyTable,
    FeedbackReport,
    Hello,
    LevelCapRequest,
    MimiFile,
    Packet,
    Redundancy,
)
from mimirate.fileio import atomic_write_bytes

HERE = Path(__file__).resolve().parent
WEIGHTS = bytes.fromhex("0123456789abcdef")


def codes(k: int, t: int) -> np.ndarray:
    """Deterministic codes ``[k, t]`` that use all 11 bits (no RNG: stable everywhere)."""
    j = np.arange(k)[:, None]
    i = np.arange(t)[None, :]
    return ((j * 389 + i * 1021 + j * i * 7) % 2048).astype(np.uint16)


def table() -> EntropyTable:
    """A small hand-made entropy table: level 1 on the previous frame, then previous level."""
    a = 2048
    sources = np.array([ContextSource.PREV_FRAME, ContextSource.PREV_LEVEL, ContextSource.NONE])
    cmap = (np.arange(a)[None, :] % 4 * np.ones((3, 1), dtype=np.int64)).astype(np.uint8)
    x = np.arange(a)[None, None, :]
    c = np.arange(4)[None, :, None]
    freqs = (1 + 1000 // (1 + (x + 97 * c) % 61)) * np.ones((3, 1, 1), dtype=np.int64)
    return EntropyTable("tiny", WEIGHTS, 11, sources, cmap, freqs.astype(np.uint32))


def files() -> dict[str, bytes]:
    base = dict(
        model="tiny",
        weights_hash=WEIGHTS,
        sample_rate=24_000,
        frame_rate=12.5,
        bits_per_code=11,
        num_levels=3,
        num_samples=9 * 1920 + 100,
        codes=codes(3, 10),
        chunk_frames=4,
    )
    levels = np.array([3, 1, 2, 3, 3, 3, 1, 1, 2, 3], dtype=np.uint8)
    return {
        "file_plain.bin": MimiFile(**base).to_bytes(),
        "file_levels.bin": MimiFile(**base, levels=levels).to_bytes(),
        "file_entropy.bin": MimiFile(
            **base, levels=levels, entropy=True, entropy_table=table()
        ).to_bytes(),
    }


def packets() -> dict[str, bytes]:
    c = codes(4, 3)
    return {
        "packet_audio.bin": bytes(Packet(7, 1000, np.array([4, 4, 4]), c)),
        "packet_audio_levels.bin": bytes(Packet(65535, 2**32 - 1, np.array([1, 4, 2]), c)),
        "packet_audio_redundancy.bin": bytes(
            Packet(8, 1003, np.array([2, 3]), c[:3, :2], Redundancy(3, codes(2, 3)))
        ),
        "packet_audio_entropy.bin": bytes(
            Packet(9, 1005, np.array([3, 2]), c[:3, :2], Redundancy(2, c[:1, :2]), table())
        ),
        "feedback.bin": bytes(FeedbackReport(7, 3, 1024, 9600, 1500, ((5, 1000), (7, 81000)))),
        "level_cap.bin": bytes(LevelCapRequest(8, 1100)),
        "hello.bin": bytes(Hello(0xC0DEC0DE, "tiny", WEIGHTS, entropy_table_id=table().table_id)),
        "bye.bin": bytes(Bye(0xC0DEC0DE, ByeReason.TIMEOUT)),
    }


def build() -> dict[str, bytes]:
    return {**files(), **packets()}


def main() -> int:
    for name, data in build().items():
        atomic_write_bytes(HERE / name, data)
        print(f"{name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
