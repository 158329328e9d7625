"""Tests of mimirate.models.loading: presets, files in every layout, hashes, the hub."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from mimirate.config import PRESETS, TINY, get_preset
from mimirate.errors import CheckpointError, ConfigError
from mimirate.models.loading import (
    Layout,
    LoadedModel,
    config_from_dict,
    config_to_dict,
    convert_state_dict,
    detect_layout,
    load_codec,
    load_model,
    save_checkpoint,
    save_packaged,
    weights_hash,
)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny", random_init=True, seed=0)


@pytest.fixture(scope="module")
def tiny_file(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kyutai") / "tiny.safetensors"
    return save_checkpoint(tiny.model, path, tiny.config)


def _keys_of(path: Path) -> list[str]:
    return list(safetensors.torch.load_file(str(path)))


# ------------------------------------------------------------------- random weights


def test_random_init_is_seeded_and_leaves_global_rng_alone(tiny: LoadedModel) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = load_model("tiny", random_init=True, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert again.weights_hash == tiny.weights_hash
    assert load_model("tiny", random_init=True, seed=1).weights_hash != tiny.weights_hash
    assert tiny.layout == "random" and tiny.config == TINY
    assert len(tiny.weights_hash) == 8
    assert not tiny.model.training


def test_random_codebooks_are_distinct_initialised_and_used(tiny: LoadedModel) -> None:
    for rvq in (tiny.model.quantizer.rvq_first, tiny.model.quantizer.rvq_rest):
        for level in range(rvq.n_levels):
            book = rvq.codebook(level)
            assert book.initialized
            assert torch.all(book.cluster_usage == 1)
            assert torch.unique(book.centroids, dim=0).shape[0] == TINY.quantizer.bins
    codec = load_codec("tiny", random_init=True, seed=0)
    audio = 0.1 * np.random.default_rng(5).standard_normal(24_000 * 2).astype(np.float32)
    enc = codec.encode(audio)
    # Meaningful codes: most of 25 frames get their own code, and levels bring the
    # latent closer to what the encoder produced (only within the quantizer's 16
    # dimensions of 64, so the error soon levels off).
    assert all(len(np.unique(enc.codes[k])) >= 15 for k in range(enc.num_levels))
    per_level = enc.latent_error.mean(axis=-1)
    assert per_level[1] < 0.9 * per_level[0] and per_level[-1] < per_level[1]


def test_load_codec_returns_a_working_codec(tiny: LoadedModel) -> None:
    codec = load_codec("tiny", random_init=True, seed=0)
    assert codec.weights_hash == tiny.weights_hash
    assert (codec.name, codec.frame_size, codec.num_levels) == ("tiny", 1920, 32)
    out = codec.decode(codec.encode(np.zeros(1920 * 3, np.float32), levels=4).codes)
    assert out.shape == (1920 * 3,) and np.isfinite(out).all()


# ------------------------------------------------------------------------ hashing


def test_weights_hash_follows_the_documented_canonical_form() -> None:
    state = {"b": torch.tensor([[1.0, -2.5]]), "a": torch.tensor([0.5], dtype=torch.float16)}
    h = hashlib.sha256()
    for name, values, shape in (("a", [0.5], (1,)), ("b", [1.0, -2.5], (1, 2))):
        h.update(name.encode() + b"\0" + b"float32\0")
        h.update(struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape))
        h.update(struct.pack(f"<{len(values)}f", *values))
    assert weights_hash(state) == h.digest()[:8]


def test_weights_hash_sees_any_change_but_not_storage_dtype(tiny: LoadedModel) -> None:
    state = tiny.model.state_dict()
    assert weights_hash(dict(reversed(state.items()))) == tiny.weights_hash
    halves = {k: v.half() for k, v in state.items()}
    rounded = {k: v.float() for k, v in halves.items()}
    assert weights_hash(halves) == weights_hash(rounded)
    changed = dict(state)
    key = "decoder.model.0.conv.conv.bias"
    changed[key] = state[key].clone()
    changed[key][0] += 1e-3
    assert weights_hash(changed) != tiny.weights_hash


# --------------------------------------------------------------- layouts and files


@pytest.mark.parametrize("layout", list(Layout))
def test_every_layout_loads_to_the_same_weights(
    layout: Layout, tiny: LoadedModel, tmp_path: Path
) -> None:
    path = tmp_path / "model.safetensors"
    if layout == Layout.HF_MODULE:
        state = convert_state_dict(tiny.model.state_dict(), Layout.KYUTAI, layout, TINY)
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        save_checkpoint(tiny.model, path, TINY, layout)
    assert detect_layout(_keys_of(path)) == layout
    loaded = load_model(path=path)  # the preset is found from the shapes
    assert loaded.config == TINY
    assert loaded.layout == layout.value
    assert loaded.weights_hash == tiny.weights_hash


def test_hf_layout_names_and_rope_order(tiny: LoadedModel) -> None:
    state = tiny.model.state_dict()
    hf = convert_state_dict(state, Layout.KYUTAI, Layout.HF, TINY)
    assert "decoder.layers.2.conv.weight" in hf  # a transposed conv, named conv
    assert "quantizer.semantic_residual_vector_quantizer.layers.0.codebook.embed_sum" in hf
    assert "encoder_transformer.layers.0.mlp.fc1.weight" in hf
    qkv = state["encoder_transformer.transformer.layers.0.self_attn.in_proj_weight"]
    d, heads = TINY.transformer.d_model, TINY.transformer.num_heads
    # transformers' conversion rule, written out: rows of each head go pairs -> halves.
    expected_q = qkv[:d].view(heads, d // heads // 2, 2, d).transpose(1, 2).reshape(d, d)
    assert torch.equal(hf["encoder_transformer.layers.0.self_attn.q_proj.weight"], expected_q)
    assert torch.equal(hf["encoder_transformer.layers.0.self_attn.v_proj.weight"], qkv[2 * d :])
    back = convert_state_dict(hf, Layout.HF, Layout.KYUTAI, TINY)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_bf16_file_loads_as_fp32(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "bf16.safetensors"
    save_checkpoint({k: v.bfloat16() for k, v in tiny.model.state_dict().items()}, path, TINY)
    loaded = load_model(path=path)
    assert all(v.dtype == torch.float32 for v in loaded.model.state_dict().values())
    rounded = {k: v.bfloat16().float() for k, v in tiny.model.state_dict().items()}
    assert loaded.weights_hash == weights_hash(rounded)


def test_model_name_must_match_the_file(tiny_file: Path) -> None:
    assert load_model("tiny", path=tiny_file).config == TINY
    with pytest.raises(CheckpointError, match=r"missing|wrong shape"):
        load_model("small", path=tiny_file)
    with pytest.raises(ConfigError):
        load_model("nonsense", path=tiny_file)


def test_model_argument_may_be_a_path(tiny_file: Path, tiny: LoadedModel) -> None:
    assert load_model(str(tiny_file)).weights_hash == tiny.weights_hash


def test_wrong_keys_are_named(tiny: LoadedModel, tmp_path: Path) -> None:
    state = dict(tiny.model.state_dict())
    del state["encoder.model.0.conv.conv.bias"]
    state["encoder.model.0.conv.conv.extra"] = torch.zeros(3)
    path = save_checkpoint(state, tmp_path / "bad.safetensors", TINY)
    with pytest.raises(CheckpointError) as e:
        load_model("tiny", path=path)
    assert "encoder.model.0.conv.conv.bias" in str(e.value)
    assert "encoder.model.0.conv.conv.extra" in str(e.value)

    state = dict(tiny.model.state_dict())
    state["upsample.convtr.convtr.convtr.weight"] = torch.zeros(3, 1, 4)
    path = save_checkpoint(state, tmp_path / "shape.safetensors", TINY)
    with pytest.raises(CheckpointError, match=r"upsample.convtr.convtr.convtr.weight \(3, 1, 4\)"):
        load_model("tiny", path=path)


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"backbone.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"backbone\.weight"):
        load_model(path=path)


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"\xff" * 64, b"not a checkpoint at all"])
def test_corrupt_files_give_checkpoint_errors(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        load_model(path=path)


def test_truncated_file_gives_checkpoint_error(tiny_file: Path, tmp_path: Path) -> None:
    data = tiny_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    for cut in (8, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_model(path=path)


class _Boom:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".pth"])
def test_pickled_checkpoints_are_refused_unread(suffix: str, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path=path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(str(path))
    assert not marker.exists()


def test_missing_file_and_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(path=tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match=r"manifest\.json|model\.safetensors"):
        load_model(path=tmp_path)


def test_hf_config_json_must_match(tiny: LoadedModel, tmp_path: Path) -> None:
    path = save_checkpoint(tiny.model, tmp_path / "model.safetensors", TINY, Layout.HF)
    assert load_model(path=tmp_path).weights_hash == tiny.weights_hash  # a directory works
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 7
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_hidden_layers=7"):
        load_model(path=path)


# ------------------------------------------------------------------ packaged weights


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_packaged_round_trip(dtype: torch.dtype, tiny: LoadedModel, tmp_path: Path) -> None:
    manifest_path = save_packaged(tiny.model, TINY, tmp_path / "pkg", dtype=dtype)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["name"] == "tiny" and manifest["dtype"] == str(dtype)[6:]
    loaded = load_model(path=tmp_path / "pkg")
    assert loaded.layout == "packaged" and loaded.config == TINY
    assert loaded.weights_hash.hex() == manifest["weights_hash"]
    if dtype == torch.float32:
        assert loaded.weights_hash == tiny.weights_hash
    stored = safetensors.torch.load_file(str(tmp_path / "pkg" / manifest["shards"][0]["file"]))
    assert {v.dtype for v in stored.values()} == {dtype}


def test_packaged_keeps_fp32_where_fp16_overflows(tiny: LoadedModel, tmp_path: Path) -> None:
    state = dict(tiny.model.state_dict())
    net = load_model("tiny", random_init=True, seed=0).model
    with torch.no_grad():
        net.quantizer.rvq_rest.codebook(0).embedding_sum.mul_(1e9)
        net.quantizer.rvq_rest.codebook(0).cluster_usage.fill_(1e9)
    save_packaged(net, TINY, tmp_path, dtype=torch.float16)
    loaded = load_model(path=tmp_path)
    assert loaded.weights_hash != weights_hash(state)
    key = "quantizer.rvq_rest.vq.layers.0._codebook.embedding_sum"
    assert torch.equal(loaded.model.state_dict()[key], net.state_dict()[key])


def test_packaged_corruption_is_detected(tiny: LoadedModel, tmp_path: Path) -> None:
    save_packaged(tiny.model, TINY, tmp_path, dtype=torch.float16)
    shard = next(tmp_path.glob("weights-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(path=tmp_path)
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_model(path=tmp_path)


def test_packaged_config_must_match_the_preset(tiny: LoadedModel, tmp_path: Path) -> None:
    save_packaged(tiny.model, TINY, tmp_path)
    with pytest.raises(CheckpointError, match="preset 'small'"):
        load_model("small", path=tmp_path)


def test_preset_without_packaged_weights_says_what_to_do() -> None:
    with pytest.raises(CheckpointError, match="--model PATH"):
        load_model("tiny")


def test_config_json_round_trip_and_strictness() -> None:
    for config in PRESETS.values():
        assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    d = config_to_dict(get_preset("tiny"))
    d["seanet"]["wobble"] = 1
    with pytest.raises(CheckpointError, match="wobble"):
        config_from_dict(d)


# ------------------------------------------------------------------------ arguments


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        load_model("no-such-model")
    with pytest.raises(ConfigError, match="random_init"):
        load_model("some/file.safetensors", random_init=True)


# ------------------------------------------------------------------------ the hub


def test_hub_offline_fails_fast_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="--model PATH"):
        load_model("kyutai/mimi")
    assert time.monotonic() - start < 5


def test_hub_unreachable_fails_fast_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Port 9 (discard) on the loopback refuses connections at once.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}",
    )
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="--model PATH"):
        load_model("kyutai/mimi")
    assert time.monotonic() - start < 15


def test_hub_cache_is_used_without_network(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # A cached repo snapshot as huggingface_hub lays it out.
    snapshot = tmp_path / "models--someone--tiny-mimi" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--someone--tiny-mimi" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-mimi" / "refs" / "main").write_text("0" * 40)
    save_checkpoint(tiny.model, snapshot / "model.safetensors", TINY, Layout.HF)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("someone/tiny-mimi")
    assert loaded.weights_hash == tiny.weights_hash
    assert loaded.source == "hub:someone/tiny-mimi"


def test_random_init_hash_does_not_depend_on_thread_count() -> None:
    import subprocess
    import sys

    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
        "from mimirate import load_codec; "
        "print(load_codec('tiny', random_init=True).weights_hash.hex())"
    )
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code, str(n)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for n in (1, 2)
    }
    assert len(hashes) == 1
