"""MimiCodec behind the Codec protocol: shapes, dtypes, buffering, flush, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimirate.codec import Codec, StreamDecoder, StreamEncoder
from mimirate.config import TINY
from mimirate.errors import AudioError, ConfigError, FormatError
from mimirate.models.mimi import MimiModel
from mimirate.models.neural_codec import MimiCodec

FS = TINY.frame_size


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_codec(**dtypes: torch.dtype) -> MimiCodec:
    torch.manual_seed(0)
    model = MimiModel(TINY)
    with torch.no_grad():
        for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
            for j in range(rvq.n_levels):
                rvq.codebook(j).embedding_sum.normal_(0, 0.1)
    return MimiCodec(model, TINY, b"\x01" * 8, **dtypes)


@pytest.fixture(scope="module")
def codec() -> MimiCodec:
    return _tiny_codec()


def _audio(*shape: int) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(shape) * 0.1).astype(np.float32)


def test_protocol_and_attributes(codec: MimiCodec) -> None:
    assert isinstance(codec, Codec)
    assert isinstance(codec.stream_encoder(), StreamEncoder)
    assert isinstance(codec.stream_decoder(), StreamDecoder)
    assert (codec.name, codec.frame_size, codec.num_levels) == ("tiny", FS, 32)
    assert (codec.cardinality, codec.bits_per_code, codec.weights_hash) == (2048, 11, b"\x01" * 8)


def test_encode_decode_shapes_and_leading_dims(codec: MimiCodec) -> None:
    a = _audio(2, 3, 2 * FS + 5)
    enc = codec.encode(a)
    assert enc.codes.shape == (2, 3, 32, 3) and enc.codes.dtype == np.uint16
    assert enc.latent_error.shape == (2, 3, 32, 3) and enc.latent_error.dtype == np.float32
    assert enc.num_samples == 2 * FS + 5 and int(enc.codes.max()) < 2048
    out = codec.decode(enc.codes)
    assert out.shape == (2, 3, 3 * FS) and out.dtype == np.float32
    eight = codec.encode(a, levels=8)
    assert np.array_equal(eight.codes, enc.codes[..., :8, :])
    single = codec.encode(a[1, 2])
    assert np.array_equal(single.codes, enc.codes[1, 2])


def test_decode_with_per_frame_levels(codec: MimiCodec) -> None:
    codes = codec.encode(_audio(2, 3 * FS)).codes
    levels = np.array([[32, 4, 1], [2, 2, 2]])
    out = codec.decode(codes, levels)
    assert out.shape == (2, 3 * FS)
    np.testing.assert_array_equal(
        codec.decode(codes, np.full((2, 3), 5, np.int64)), codec.decode(codes[:, :5])
    )


def test_empty_input_gives_no_frames(codec: MimiCodec) -> None:
    enc = codec.encode(np.zeros(0, np.float32))
    assert enc.codes.shape == (32, 0) and enc.num_samples == 0
    assert codec.decode(enc.codes).shape == (0,)


def test_stream_encoder_buffers_and_flushes(codec: MimiCodec) -> None:
    a = _audio(2, 3 * FS + 100)
    offline = codec.encode(a)
    stream = codec.stream_encoder()
    parts = [stream.push(a[:, i : i + 777]) for i in range(0, a.shape[-1], 777)]
    assert [p.num_frames for p in parts[:3]] == [0, 0, 1]
    parts.append(stream.flush())
    assert parts[-1].num_frames == 1 and parts[-1].num_samples == 100
    codes = np.concatenate([p.codes for p in parts], axis=-1)
    assert codes.shape == offline.codes.shape
    assert np.array_equal(codes[:, :16], offline.codes[:, :16])
    assert sum(p.num_samples for p in parts) == a.shape[-1]
    assert stream.flush().num_frames == 0
    with pytest.raises(AudioError, match="batch shape"):
        stream.push(_audio(3, 10))


def test_stream_decoder_matches_offline(codec: MimiCodec) -> None:
    codes = codec.encode(_audio(4 * FS)).codes
    levels = np.array([32, 8, 8, 3])
    offline = codec.decode(codes, levels)
    dec = codec.stream_decoder()
    pieces = [dec.push(codes[:, :1], levels[:1]), dec.push(codes[:, 1:4], levels[1:4])]
    np.testing.assert_allclose(np.concatenate(pieces), offline, atol=1e-5)


@pytest.mark.parametrize(
    "audio",
    [np.array([0.0, np.nan], np.float32), np.array([np.inf]), np.zeros(5, np.int16), np.float32(1)],
)
def test_bad_audio_is_an_audio_error(codec: MimiCodec, audio) -> None:
    with pytest.raises(AudioError):
        codec.encode(audio)


@pytest.mark.parametrize("levels", [0, 33, 2.5])
def test_bad_encode_levels(codec: MimiCodec, levels) -> None:
    with pytest.raises(FormatError):
        codec.encode(_audio(FS), levels=levels)


def test_bad_codes_are_format_errors(codec: MimiCodec) -> None:
    good = np.zeros((4, 2), np.uint16)
    for bad in (
        np.full((4, 2), 2048, np.int64),
        np.full((4, 2), -1, np.int64),
        np.zeros((33, 2), np.int64),
        np.zeros((0, 2), np.int64),
        np.zeros(3, np.int64),
        np.zeros((4, 2), np.float32),
    ):
        with pytest.raises(FormatError):
            codec.decode(bad)
    for levels in (np.array([5, 1]), np.array([0, 1]), np.array([1, 1, 1]), np.array([1.0, 2.0])):
        with pytest.raises(FormatError):
            codec.decode(good, levels)
    with pytest.raises(ValueError):  # FormatError is a ValueError
        codec.stream_decoder().push(np.full((1, 1), 9999))


def test_stream_batches_equal_streams_pushed_alone(codec: MimiCodec) -> None:
    # Three sessions that joined at different frames, one with two channels, decoding
    # different numbers of levels: one batched call a frame equals each stream alone.
    audio = _audio(4, 6 * FS)
    alone_enc = [codec.stream_encoder() for _ in range(3)]
    alone_dec = [codec.stream_decoder() for _ in range(3)]
    encs = [codec.stream_encoder() for _ in range(3)]
    decs = [codec.stream_decoder() for _ in range(3)]
    inputs = [audio[0], audio[1:3], audio[3]]
    starts, keep = [0, 1, 3], [3, 8, codec.num_levels]
    for t in range(6):
        live = [i for i in range(3) if starts[i] <= t]
        chunks = [inputs[i][..., (t - starts[i]) * FS : (t - starts[i] + 1) * FS] for i in live]
        got = codec.encode_streams([encs[i] for i in live], chunks)
        want = [alone_enc[i].push(c) for i, c in zip(live, chunks, strict=True)]
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g.codes, w.codes) and g.num_samples == w.num_samples
        codes = [w.codes[..., : keep[i], :] for i, w in zip(live, want, strict=True)]
        if t == 4:  # one stream pushed alone between batched steps (its state is shared)
            pcm = [decs[0].push(codes[0])]
            pcm += codec.decode_streams([decs[i] for i in live[1:]], codes[1:])
        else:
            pcm = codec.decode_streams([decs[i] for i in live], codes)
        ref = [alone_dec[i].push(c) for i, c in zip(live, codes, strict=True)]
        for g, r in zip(pcm, ref, strict=True):
            assert g.shape == r.shape and np.allclose(g, r, atol=1e-5)
    with pytest.raises(FormatError):
        codec.decode_streams([decs[0], decs[0]], [codes[0], codes[0]])
    assert codec.encode_streams([encs[0]], [audio[0, :10]])[0].num_frames == 0


def test_streams_build_the_codebook_tables_before_the_first_frame(codec: MimiCodec) -> None:
    # The first frame would otherwise build 32 search tables (for `mimi`, 67 MB and its
    # temporaries, the stream's memory peak): the codec builds them when it is made.
    model = MimiModel(TINY)
    model.load_state_dict(codec.model.state_dict())
    fresh = MimiCodec(model, TINY, b"\x01" * 8)
    enc, dec = fresh.stream_encoder(), fresh.stream_decoder()
    q = fresh.model.quantizer
    books = [rvq.codebook(j) for rvq in (q.rvq_first, q.rvq_rest) for j in range(rvq.n_levels)]
    built = [(b._cache_key, b._search.data_ptr()) for b in books]
    assert all(key is not None for key, _ in built)
    dec.push(enc.push(_audio(2 * codec.frame_size)).codes)
    assert [(b._cache_key, b._search.data_ptr()) for b in books] == built


def test_folded_codebooks_give_the_same_codes_in_half_the_memory(codec: MimiCodec) -> None:
    model = MimiModel(TINY)
    model.load_state_dict(codec.model.state_dict())
    x = torch.from_numpy(_audio(1, 1, 6 * codec.frame_size))
    with torch.inference_mode():
        before = model.encode(x)
        audio_before = model.decode(before.codes)
    folded = MimiCodec(model, TINY, b"\x01" * 8)
    q = folded.model.quantizer
    for rvq in (q.rvq_first, q.rvq_rest):
        for j in range(rvq.n_levels):
            book = rvq.codebook(j)
            # One copy: the buffer is the table's centroid rows.
            assert book.embedding_sum.data_ptr() == book._search.data_ptr()
            assert bool((book.cluster_usage == 1).all())
    enc = folded.encode(x[0, 0].numpy())
    assert np.array_equal(enc.codes, before.codes[0].numpy())
    assert np.array_equal(folded.decode(enc.codes), audio_before[0, 0].numpy())
    # The moving averages are gone: training it again is refused, not silently wrong.
    book = q.rvq_first.codebook(0)
    with pytest.raises(RuntimeError, match="folded for inference"):
        book.update(torch.zeros(4, book.dim), torch.zeros(4, dtype=torch.long), torch.ones(4))


def test_a_bfloat16_decoder_keeps_the_codes_and_is_close_to_float32(codec: MimiCodec) -> None:
    half = _tiny_codec(decoder_dtype=torch.bfloat16)
    assert next(half.model.decoder.parameters()).dtype == torch.bfloat16
    assert next(half.model.encoder.parameters()).dtype == torch.float32
    assert next(half.model.quantizer.parameters()).dtype == torch.float32
    a = _audio(2, 6 * FS)
    enc, enc_half = codec.encode(a), half.encode(a)
    assert np.array_equal(enc.codes, enc_half.codes)  # the encoder is float32: same codes
    full, approx = codec.decode(enc.codes), half.decode(enc.codes)
    assert approx.dtype == np.float32
    snr = 10 * np.log10(np.sum(full**2) / np.sum((full - approx) ** 2))
    assert 20.0 < snr < 80.0  # bfloat16: close, not equal (24 dB on these random weights)
    # The stream decoder is bfloat16 too (equal to offline to bfloat16's rounding only:
    # frame by frame, the products are summed in another order).
    d = half.stream_decoder()
    streamed = np.concatenate([d.push(enc.codes[..., t : t + 1]) for t in range(6)], axis=-1)
    assert not np.array_equal(streamed, full)
    assert 10 * np.log10(np.sum(full**2) / np.sum((full - streamed) ** 2)) > 20.0


def test_a_bfloat16_encoder_runs_and_a_bad_dtype_is_a_config_error() -> None:
    half = _tiny_codec(encoder_dtype=torch.bfloat16, decoder_dtype=torch.bfloat16)
    enc = half.encode(_audio(3 * FS))
    assert enc.codes.shape == (32, 3) and half.decode(enc.codes).shape == (3 * FS,)
    with pytest.raises(ConfigError, match="float32, bfloat16 or float16"):
        _tiny_codec(decoder_dtype=torch.int8)
