"""Coverage-guided fuzzing of every bitstream parser with atheris (libFuzzer).

    .venv/bin/pip install atheris
    .venv/bin/python tools/fuzz_bitstream.py -atheris_runs=200000      # or -max_total_time=60
    .venv/bin/python tools/fuzz_bitstream.py tests/vectors -runs=0      # replay a corpus

The first input byte chooses the parser (whole file, prefix reader, byte truncation,
any message, side information); the rest is its input. The only allowed exception is
FormatError; anything else (or a hang, or a huge allocation: run with -rss_limit_mb)
is a bug that libFuzzer reports with the input that caused it. The test vectors make a
good seed corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import numpy as np

    from mimirate.bitstream import MimiFile, parse_message, read_prefix, truncate_bytes
    from mimirate.bitstream.container import decode_levels
    from mimirate.errors import FormatError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vectors"))
import regenerate

TABLE = regenerate.table()


def one_input(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 6, data[1:]
    try:
        if which == 0:
            mf = MimiFile.parse(body, table=TABLE)
            assert mf.to_bytes() == body, "a parsed file must re-serialise to the same bytes"
        elif which == 1:
            p = read_prefix(body, table=TABLE)
            assert p.bytes_used <= len(body)
            assert p.codes.shape[1] == p.levels.size
        elif which == 2:
            truncate_bytes(body, 1 + (len(body) % 4))
        elif which == 3:
            parse_message(body, table=TABLE)
        elif which == 4:
            decode_levels(body, 1 + len(body) % 300, 1 + len(body) % 64)
        else:
            # A prefix of a valid file must read as a prefix, never fail differently.
            whole = regenerate.files()["file_levels.bin"]
            cut = whole[: int.from_bytes(body[:2] or b"\x00", "big") % (len(whole) + 1)]
            p = read_prefix(cut)
            ref = MimiFile.parse(whole)
            t = p.frames_arrived
            mask = np.arange(1, 4)[:, None] <= p.levels[None, :]
            assert np.array_equal(p.codes[mask], ref.codes[:, :t][mask])
    except FormatError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
