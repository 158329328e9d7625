"""StreamPool: many sessions' pushes of one tick become one batched codec call."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mimirate.transport.pool import StreamPool


@pytest.fixture(scope="module")
def codec():
    import torch

    from mimirate import load_codec

    torch.set_num_threads(1)
    return load_codec("tiny", random_init=True, seed=0)


def _audio(codec, sessions: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((sessions, frames * codec.frame_size))).astype(np.float32)


def test_sessions_of_a_tick_share_a_call_and_match_pushing_alone(codec) -> None:
    fs, sessions, frames = codec.frame_size, 5, 4
    audio = _audio(codec, sessions, frames)
    keep = [1, 3, 8, 8, codec.num_levels]
    enc_ref = [codec.stream_encoder() for _ in range(sessions)]
    dec_ref = [codec.stream_decoder() for _ in range(sessions)]
    want = []
    for t in range(frames):
        row = []
        for s in range(sessions):
            codes = enc_ref[s].push(audio[s, t * fs : (t + 1) * fs]).codes
            row.append((codes, dec_ref[s].push(codes[: keep[s]])))
        want.append(row)

    async def session(pool, s, enc, dec, got):
        for t in range(frames):
            codes = (await pool.encode(enc, audio[s, t * fs : (t + 1) * fs])).codes
            got.append((t, s, codes, await pool.decode(dec, codes[: keep[s]])))

    async def run():
        with ThreadPoolExecutor(2) as ex:
            pool = StreamPool(codec, ex, workers=1)
            got: list = []
            encs = [codec.stream_encoder() for _ in range(sessions)]
            decs = [codec.stream_decoder() for _ in range(sessions)]
            await asyncio.gather(
                *(session(pool, s, encs[s], decs[s], got) for s in range(sessions))
            )
            return pool.stats, got

    stats, got = asyncio.run(run())
    assert len(got) == sessions * frames
    for t, s, codes, pcm in got:
        assert np.array_equal(codes, want[t][s][0])
        assert np.allclose(pcm, want[t][s][1], atol=1e-5)
    # Every tick's five pushes (encode, then decode) went through one call each.
    assert stats.pushes == 2 * sessions * frames and stats.calls == 2 * frames
    assert stats.largest == sessions


def test_two_workers_split_a_tick_and_a_stream_steps_once_per_call(codec) -> None:
    fs = codec.frame_size
    audio = _audio(codec, 4, 2)
    ref = codec.stream_decoder()
    codes = codec.encode(audio[0]).codes
    want = [ref.push(codes[:, :1]), ref.push(codes[:, 1:])]

    async def run():
        with ThreadPoolExecutor(2) as ex:
            pool = StreamPool(codec, ex, workers=2, min_split=1)
            dec = codec.stream_decoder()
            others = [codec.stream_decoder() for _ in range(3)]
            # Both frames of one stream queued in the same turn: they must run in order,
            # in two calls; the other streams fill the batches.
            results = await asyncio.gather(
                pool.decode(dec, codes[:, :1]),
                pool.decode(dec, codes[:, 1:]),
                *(pool.decode(d, codes[:, :1]) for d in others),
            )
            return pool.stats, results

    stats, results = asyncio.run(run())
    assert np.allclose(results[0], want[0], atol=1e-5)
    assert np.allclose(results[1], want[1], atol=1e-5)
    assert stats.pushes == 5 and stats.calls >= 2 and stats.largest <= 3
    assert audio.shape[-1] == 2 * fs


def test_a_session_leaving_mid_call_does_not_disturb_the_others(codec) -> None:
    codes = codec.encode(_audio(codec, 1, 1)[0]).codes

    async def run():
        with ThreadPoolExecutor(1) as ex:
            pool = StreamPool(codec, ex, workers=1)
            decs = [codec.stream_decoder() for _ in range(3)]
            tasks = [asyncio.ensure_future(pool.decode(d, codes)) for d in decs]
            await asyncio.sleep(0)  # queued; the batch starts on the next turn
            tasks[1].cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            bad = await asyncio.gather(
                pool.decode(codec.stream_decoder(), codes.astype(np.float32)),
                return_exceptions=True,
            )
            return done, bad

    done, bad = asyncio.run(run())
    assert isinstance(done[1], asyncio.CancelledError)
    assert done[0].shape == done[2].shape == (codec.frame_size,)
    from mimirate.errors import FormatError

    assert isinstance(bad[0], FormatError)
