"""``mimirate encode | decode | truncate | info | bitrate | entropy-fit``: .mimi files.

Every bitrate printed comes from :mod:`mimirate.bitstream.rate`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimirate.cli import BF16_DECODER_HELP, load_cli_codec
from mimirate.config import DEFAULT_MODEL
from mimirate.errors import ConfigError, FormatError

# One definition of the evaluation folder (quality figures are measured on it: entropy
# tables, like the model, must never see it) and of the audio files searched for.
from mimirate.train.data import AUDIO_SUFFIXES
from mimirate.train.data import DEV_FOLDER as EVAL_SET

if TYPE_CHECKING:
    from mimirate.bitstream import BitrateReport, EntropyTable, MimiFile


# -- shared helpers -------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser, *, default: str | None) -> None:
    what = f"(default: {default})" if default else "(default: the model named in the file)"
    p.add_argument(
        "--model",
        default=default,
        metavar="NAME|PATH",
        help=f"preset name, checkpoint path or hub id {what}",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights for the preset (tests and demos: the codes mean nothing)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")


def _add_table_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--table",
        metavar="PATH",
        help="entropy table file (default: the one stored beside the model's weights)",
    )


def _table(path: str | None, model: str, weights_hash: bytes, table_id: bytes | None = None):
    from mimirate.bitstream import EntropyTable, find_table

    if path is None:
        return find_table(model, weights_hash, table_id)
    table = EntropyTable.load(path)
    if table_id is not None and table.table_id != table_id:
        raise FormatError(
            f"{path} is entropy table {table.table_id.hex()}; the file needs {table_id.hex()}"
        )
    if table.weights_hash != weights_hash:
        raise FormatError(
            f"{path} was fitted for weights {table.weights_hash.hex()}, not {weights_hash.hex()}"
        )
    return table


def _read_file(path: str, table_path: str | None, *, partial: bool = False) -> MimiFile:
    """Parse a .mimi file, finding its entropy table when it names one."""
    from mimirate.bitstream import MimiFile, parse_header, read_prefix

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    header = parse_header(data)
    table = None
    if header.entropy:
        table = _table(table_path, header.model, header.weights_hash, header.entropy_table_id)
    if not partial:
        return MimiFile.parse(data, table)
    p = read_prefix(data, table)
    if p.frames_arrived == 0:
        raise FormatError(f"{path}: no frame has arrived yet ({len(data)} bytes)")
    fs = int(p.sample_rate / p.frame_rate)
    return MimiFile(
        model=p.model,
        weights_hash=p.weights_hash,
        sample_rate=p.sample_rate,
        frame_rate=p.frame_rate,
        bits_per_code=p.bits_per_code,
        num_levels=p.num_levels,
        num_samples=min(p.num_samples, p.frames_arrived * fs)
        if p.complete
        else p.frames_arrived * fs,
        codes=p.codes,
        levels=None if p.complete and p.file_levels is None else p.levels,
        chunk_frames=p.chunk_frames,
    )


def file_report(mf: MimiFile, size: int, table: EntropyTable | None) -> BitrateReport:
    """The bitrates of a file of ``size`` bytes; the entropy figure codes it with ``table``
    (or is the file's own size when it is entropy coded)."""
    from mimirate.bitstream import stream_report

    if mf.entropy:
        entropy_bytes: int | None = size
    elif table is not None and mf.num_levels <= table.num_levels:
        entropy_bytes = len(mf.with_entropy(table).to_bytes())
    else:
        entropy_bytes = None
    return stream_report(
        mf.frame_levels(),
        frame_rate=mf.frame_rate,
        bits=mf.bits_per_code,
        container_bytes=size,
        entropy_bytes=entropy_bytes,
        side_info_bytes=mf.side_info_bytes(),
    )


def _kbps(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1000:.3f} kbit/s"


def _print_report(r: BitrateReport, entropy_note: str = "") -> None:
    print(f"nominal    {_kbps(r.nominal_bps)}  ({r.levels:.2f} levels x 11 bits x 12.5 Hz)")
    print(f"container  {_kbps(r.container_bps)}  (side info {_kbps(r.side_info_bps)})")
    print(f"entropy    {_kbps(r.entropy_bps)}{entropy_note}")
    print(
        f"wire       {_kbps(r.wire_1_bps)} at 1 frame/packet, {_kbps(r.wire_2_bps)} at 2, "
        f"{_kbps(r.wire_4_bps)} at 4 (40-byte IPv4/UDP/RTP headers)"
    )


def _file_dict(mf: MimiFile, path: str, size: int) -> dict[str, Any]:
    lv = mf.frame_levels()
    return {
        "file": path,
        "bytes": size,
        "model": mf.model,
        "weights_hash": mf.weights_hash.hex(),
        "sample_rate": mf.sample_rate,
        "frame_rate": mf.frame_rate,
        "bits_per_code": mf.bits_per_code,
        "num_levels": mf.num_levels,
        "per_frame_levels": mf.levels is not None,
        "min_levels": int(lv.min()) if lv.size else 0,
        "max_levels": int(lv.max()) if lv.size else 0,
        "num_frames": mf.num_frames,
        "num_samples": mf.num_samples,
        "duration_s": mf.duration_s,
        "chunk_frames": mf.chunk_frames,
        "entropy": mf.entropy,
        "entropy_table_id": mf.entropy_table.table_id.hex() if mf.entropy_table else None,
    }


# -- commands -------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    from mimirate.audio import read_audio
    from mimirate.bitstream import MimiFile, nominal_bps
    from mimirate.cli import print_json
    from mimirate.fileio import atomic_write_bytes

    codec = load_cli_codec(args.model, args.random_init, args.seed)
    if args.adaptive and args.kbps is None:
        raise ConfigError("--adaptive needs --kbps: the file's real average bitrate")
    if args.kbps is not None:
        per_level = nominal_bps(1, codec.frame_rate, codec.bits_per_code)
        k = int(args.kbps * 1000 // per_level)
        if k < 1:
            raise ConfigError(
                f"--kbps {args.kbps} is below one level ({per_level / 1000:.4f} kbit/s)"
            )
        k = min(k, codec.num_levels)
    else:
        k = codec.num_levels if args.levels is None else args.levels
    if not 1 <= k <= codec.num_levels:
        raise ConfigError(f"--levels must be in 1..{codec.num_levels}, got {k}")
    audio = read_audio(args.input, codec.sample_rate)
    table = _table(args.table, codec.name, codec.weights_hash) if args.entropy else None
    ranking = None
    if args.adaptive:
        from mimirate.evaluation.distortion import adaptive_file

        enc = codec.encode(audio.samples)
        try:
            mf, ranking = adaptive_file(
                codec,
                audio.samples,
                enc,
                args.kbps * 1000,
                ranking=args.adaptive,
                chunk_frames=args.chunk_frames,
                entropy_table=table,
                progress=not args.json,
            )
        except ImportError as e:  # librosa, for the mel distance
            raise ConfigError(
                f"--adaptive measured needs the eval extra ({e}); "
                "pip install 'mimirate[eval]' or use --adaptive latent"
            ) from e
    else:
        enc = codec.encode(audio.samples, levels=k)
        mf = MimiFile.of_codec(
            codec,
            enc.codes,
            enc.num_samples,
            chunk_frames=args.chunk_frames,
            entropy=table is not None,
            entropy_table=table,
        )
    data = mf.to_bytes()
    atomic_write_bytes(args.output, data)
    report = file_report(mf, len(data), table)
    if args.json:
        extra = {"adaptive": args.adaptive, "ranking": ranking}
        print_json({**_file_dict(mf, args.output, len(data)), **report.as_dict(), **extra})
    else:
        if args.adaptive:
            lv = mf.frame_levels()
            print(
                f"{args.output}: {len(data)} bytes, {mf.num_frames} frames at "
                f"{lv.mean():.2f} levels on average ({lv.min()}..{lv.max()}, chosen per frame "
                f"on {ranking})"
            )
        else:
            print(f"{args.output}: {len(data)} bytes, {mf.num_frames} frames at {k} levels")
        _print_report(report)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np

    from mimirate.audio import write_wav

    mf = _read_file(args.input, args.table, partial=args.partial)
    if args.levels is not None:
        mf = mf.truncate(args.levels)
    model = args.model or mf.model
    codec = load_cli_codec(model, args.random_init, args.seed, args.bf16_decoder)
    if codec.weights_hash != mf.weights_hash:
        raise FormatError(
            f"{args.input} was made by model {mf.model!r} with weights {mf.weights_hash.hex()}, "
            f"but {model!r} loaded weights {codec.weights_hash.hex()}: decoding would give "
            "noise. Pass the checkpoint that made the file with --model PATH."
        )
    if codec.bits_per_code != mf.bits_per_code or codec.frame_rate != mf.frame_rate:
        raise FormatError(f"{args.input}: bits per code or frame rate differ from the model's")
    levels = None if mf.levels is None else mf.levels.astype(np.int64)
    audio = codec.decode(mf.codes, levels)[: mf.num_samples]
    write_wav(args.output, audio, codec.sample_rate)
    lv = mf.frame_levels()
    if args.json:
        from mimirate.cli import print_json

        print_json(
            {
                "output": str(args.output),
                "seconds": mf.num_samples / mf.sample_rate,
                "frames": mf.num_frames,
                "levels": mf.num_levels,
                "mean_levels": float(lv.mean()) if lv.size else 0.0,
                "model": mf.model,
            }
        )
        return 0
    shown = f"{mf.num_levels}" if mf.levels is None else f"{lv.mean():.2f} (mean of per-frame)"
    print(f"{args.output}: {mf.num_samples / mf.sample_rate:.3f} s at {shown} levels")
    return 0


def cmd_truncate(args: argparse.Namespace) -> int:
    from mimirate.bitstream import parse_header, truncate_bytes
    from mimirate.fileio import atomic_write_bytes

    data = Path(args.input).read_bytes() if Path(args.input).is_file() else None
    if data is None:
        raise FormatError(f"{args.input}: no such file")
    header = parse_header(data)
    if header.entropy:
        # Entropy-coded levels share one range-coder stream: re-code (lossless, no model).
        out = _read_file(args.input, args.table).truncate(args.levels).to_bytes()
    else:
        out = truncate_bytes(data, args.levels)
    atomic_write_bytes(args.output, out)
    if args.json:
        from mimirate.cli import print_json

        print_json(
            {
                "output": str(args.output),
                "bytes": len(out),
                "bytes_before": len(data),
                "levels": args.levels,
            }
        )
    else:
        print(f"{args.output}: {len(out)} bytes ({len(data)} before), {args.levels} levels")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mimirate.cli import print_json

    mf = _read_file(args.file, args.table)
    size = Path(args.file).stat().st_size
    table, note = mf.entropy_table, ""
    if table is None:
        try:
            table = _table(args.table, mf.model, mf.weights_hash)
        except FormatError as e:
            note = f"  ({e})"
    if mf.num_frames == 0:
        raise FormatError(f"{args.file} holds no frames: no bitrate to report")
    report = file_report(mf, size, table)
    if args.json:
        print_json({**_file_dict(mf, args.file, size), **report.as_dict()})
        return 0
    lv = mf.frame_levels()
    print(f"file       {args.file} ({size} bytes)")
    print(f"model      {mf.model} (weights {mf.weights_hash.hex()})")
    print(
        f"duration   {mf.duration_s:.3f} s: {mf.num_frames} frames, {mf.num_samples} samples "
        f"at {mf.sample_rate} Hz"
    )
    per_frame = (
        f"; per frame {int(lv.min())}..{int(lv.max())}, mean {lv.mean():.2f}"
        if mf.levels is not None
        else ""
    )
    print(f"levels     {mf.num_levels}{per_frame}")
    coding = f"entropy (table {mf.entropy_table.table_id.hex()})" if mf.entropy_table else "plain"
    print(f"layout     {mf.num_chunks} chunk(s) of {mf.chunk_frames} frames, {coding}")
    if not mf.entropy and table is not None:
        note = f"  (if coded with table {table.table_id.hex()})"
    _print_report(report, note)
    return 0


def cmd_bitrate(args: argparse.Namespace) -> int:
    from mimirate.bitstream import bitrate_table
    from mimirate.cli import print_json

    rows = bitrate_table(range(1, args.max_levels + 1))
    if args.json:
        print_json([r.as_dict() for r in rows])
        return 0
    print("levels  nominal  container  wire@1  wire@2  wire@4   (kbit/s; container = a 10 s")
    print("                                                     .mimi file; wire = 40-byte")
    print("                                                     IPv4/UDP/RTP headers)")
    for r in rows:
        print(
            f"{r.levels:6.0f}  {r.nominal_bps / 1000:7.4f}  {r.container_bps / 1000:9.4f}  "
            f"{r.wire_1_bps / 1000:6.3f}  {r.wire_2_bps / 1000:6.3f}  {r.wire_4_bps / 1000:6.3f}"
        )
    return 0


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)


def cmd_entropy_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mimirate.audio import read_audio
    from mimirate.bitstream import fit_table
    from mimirate.bitstream.entropy import table_path
    from mimirate.cli import print_json

    found: set[Path] = set()
    for d in args.dir:
        folder = Path(d)
        if not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder of audio files")
        if EVAL_SET in folder.resolve().parts:
            raise ConfigError(
                f"{folder} is the evaluation set ({EVAL_SET}): fit tables on training speech only"
            )
        found.update(_audio_files(folder))
    # A folder above the evaluation set (the speech root) must not let it in either.
    held = {f for f in found if EVAL_SET in f.resolve().parts}
    if held:
        print(f"left out {len(held)} files of the evaluation set ({EVAL_SET})", file=sys.stderr)
    files = sorted(found - held)[: args.max_files]
    if not files:
        raise ConfigError(f"{', '.join(args.dir)}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    codec = load_cli_codec(args.model, args.random_init, args.seed)
    arrays = []
    for f in tqdm(files, desc="encoding", unit="file"):
        audio = read_audio(f, codec.sample_rate)
        arrays.append(codec.encode(audio.samples).codes)
    table, fits = fit_table(
        arrays,
        model=codec.name,
        weights_hash=codec.weights_hash,
        bits=codec.bits_per_code,
        num_contexts=args.contexts,
    )
    out = Path(args.out) if args.out else table_path(codec.name, codec.weights_hash)
    table.save(out)
    rows = [
        {"level": f.level, "source": f.source.name, "heldout_bits": f.heldout_bits} for f in fits
    ]
    if args.json:
        print_json({"table": str(out), "table_id": table.table_id.hex(), "levels": rows})
        return 0
    frames = sum(a.shape[1] for a in arrays)
    print(f"{out}: table {table.table_id.hex()} from {len(files)} files, {frames} frames")
    print("level  context     held-out bits/code (nominal 11)")
    for f in fits:
        print(f"{f.level:5d}  {f.source.name:10s}  {f.heldout_bits[f.source.name]:.3f}")
    return 0


# -- registration ---------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    from mimirate.bitstream.container import DEFAULT_CHUNK_FRAMES, MAX_CHUNK_FRAMES

    p = sub.add_parser(
        "encode",
        help="encode audio to a .mimi file",
        description="Encode an audio file to a .mimi file (docs/format.md) and print its "
        "bitrates. --kbps picks the most levels whose nominal rate fits.",
    )
    p.add_argument("input", metavar="IN", help="audio file (any format libsndfile reads)")
    p.add_argument("output", metavar="OUT.mimi")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--levels", type=int, help="levels to keep (default: all)")
    g.add_argument("--kbps", type=float, help="nominal kbit/s budget (1 level = 0.1375)")
    p.add_argument(
        "--adaptive",
        nargs="?",
        const="measured",
        choices=("measured", "latent"),
        help="with --kbps: levels chosen per frame from content (fewer on silence and on "
        "frames that gain little), and --kbps is the file's real average bitrate, "
        "container and side information included. measured (the default): each frame's "
        "mel distance decoded at 1..16 levels (slower: 16 decodes); latent: the encoder's "
        "free estimate",
    )
    p.add_argument("--entropy", action="store_true", help="entropy code the codes")
    _add_table_arg(p)
    p.add_argument(
        "--chunk-frames",
        type=int,
        default=DEFAULT_CHUNK_FRAMES,
        help=f"frames per chunk, 1..{MAX_CHUNK_FRAMES} (default {DEFAULT_CHUNK_FRAMES} = 10 s)",
    )
    _add_model_args(p, default=DEFAULT_MODEL)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="decode a .mimi file to WAV",
        description="Decode a .mimi file with the model its header names (refusing other "
        "weights) to a 24 kHz WAV file.",
    )
    p.add_argument("input", metavar="IN.mimi")
    p.add_argument("output", metavar="OUT.wav")
    p.add_argument("--levels", type=int, help="decode only the first K levels")
    p.add_argument(
        "--partial",
        action="store_true",
        help="accept a file that is still arriving: decode the levels present",
    )
    p.add_argument("--bf16-decoder", action="store_true", help=BF16_DECODER_HELP)
    _add_table_arg(p)
    _add_model_args(p, default=None)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "truncate",
        help="cut a .mimi file to fewer levels without decoding",
        description="Keep the first K levels of a .mimi file. Plain files are cut with byte "
        "slices; entropy-coded ones are re-coded losslessly (no model needed).",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--levels", type=int, required=True, help="levels to keep, K")
    _add_table_arg(p)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_truncate)

    p = sub.add_parser(
        "info",
        help="show a .mimi file's header and bitrates",
        description="Duration, frames, levels; nominal, container, entropy-coded and wire "
        "bitrates (40-byte IPv4/UDP/RTP headers at 1, 2 and 4 frames per packet).",
    )
    p.add_argument("file", metavar="FILE")
    _add_table_arg(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "bitrate",
        help="the bitrate table for 1..32 levels (no file needed)",
        description="Nominal, container (a real 10 s .mimi file) and wire bitrates per "
        "level count.",
    )
    p.add_argument("--max-levels", type=int, default=32, help="last row (default 32)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_bitrate)

    p = sub.add_parser(
        "entropy-fit",
        help="fit entropy-coding tables from folders of training speech",
        description="Encode the audio files under each DIR with the model and fit its entropy "
        "tables, stored beside the model's weights (or at --out). Never fit on the "
        f"evaluation set ({EVAL_SET}): a DIR inside it is refused, its files under a DIR "
        "above it are left out.",
    )
    p.add_argument("dir", metavar="DIR", nargs="+")
    _add_model_args(p, default=DEFAULT_MODEL)
    p.add_argument("--out", help="where to write the table (default: beside the weights)")
    p.add_argument("--max-files", type=int, default=400, help="files to use (default 400)")
    p.add_argument("--contexts", type=int, default=16, help="contexts per level (default 16)")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p.set_defaults(func=cmd_entropy_fit)
