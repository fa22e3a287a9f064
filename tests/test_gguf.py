"""GGUF files: a tiny Llama written the way llama.cpp's converter writes it (query and key
rows permuted) loads to exactly the parameters of the same model's HF folder, and broken
files are refused with errors that name what is wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from ftjax.models import (
    CheckpointError,
    LlamaConfig,
    LlamaModel,
    from_pretrained,
    init_params,
    save_pretrained,
)
from ftjax.models.gguf import GGUFError

gguf = pytest.importorskip("gguf")

CONFIG = LlamaConfig(
    vocab_size=64, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4,
    intermediate_size=24, max_position_embeddings=32, rms_norm_eps=1e-5,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip
GLOBAL_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}


def llama_cpp_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q_proj / k_proj rows."""
    return (
        rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def gguf_name(hf_name: str) -> str:
    stem, kind = hf_name.rsplit(".", 1)
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{kind}"
    _, _, layer, rest = stem.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}.{kind}"


def write_gguf(path: Path, tensors: dict[str, np.ndarray], skip=(), q8_1: str = "") -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(CONFIG.num_layers)
    writer.add_context_length(CONFIG.max_position_embeddings)
    writer.add_embedding_length(CONFIG.hidden_size)
    writer.add_feed_forward_length(CONFIG.intermediate_size)
    writer.add_head_count(CONFIG.num_heads)
    writer.add_head_count_kv(CONFIG.num_kv_heads)
    writer.add_rope_dimension_count(CONFIG.head_dim)
    writer.add_rope_freq_base(CONFIG.rope.theta)
    writer.add_layer_norm_rms_eps(CONFIG.rms_norm_eps)
    writer.add_vocab_size(CONFIG.vocab_size)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    for name, array in tensors.items():
        if name in skip:
            continue
        if "q_proj" in name:
            array = llama_cpp_permute(array, CONFIG.num_heads)
        elif "k_proj" in name:
            array = llama_cpp_permute(array, CONFIG.num_kv_heads)
        if name == q8_1:  # a type gguf's dequantiser lacks: 36 bytes per 32 values
            rows, cols = array.shape
            raw = np.zeros((rows, cols // 32 * 36), np.uint8)
            writer.add_tensor(
                gguf_name(name), raw, raw_shape=raw.shape,
                raw_dtype=gguf.GGMLQuantizationType.Q8_1,
            )  # fmt: skip
        else:
            writer.add_tensor(gguf_name(name), np.ascontiguousarray(array, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny Llama's HF folder and its tensors."""
    from safetensors.numpy import load_file

    folder = tmp_path_factory.mktemp("hf")
    model = LlamaModel(CONFIG)
    save_pretrained(model, init_params(model, 3), folder)
    return folder, load_file(folder / "model.safetensors")


def test_gguf_loads_the_same_params_as_the_hf_folder(reference, tmp_path):
    folder, tensors = reference
    path = write_gguf(tmp_path / "tiny.gguf", tensors)
    model, params = from_pretrained(path)
    hf_model, hf_params = from_pretrained(folder)
    # GGUF stores the epsilon as float32 (transformers reads it the same way).
    assert model.config.rms_norm_eps == float(np.float32(CONFIG.rms_norm_eps))
    assert dataclasses.replace(model.config, rms_norm_eps=CONFIG.rms_norm_eps) == hf_model.config
    ours, theirs = (traverse_util.flatten_dict(p, sep="/") for p in (params, hf_params))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert np.array_equal(np.asarray(ours[key]), np.asarray(theirs[key])), key
    # A folder holding one GGUF file (how the smollm2 asset is unpacked) loads the same.
    folder_model, _ = from_pretrained(tmp_path)
    assert folder_model.config == model.config


def test_truncated_gguf_is_refused_naming_the_file(reference, tmp_path):
    path = write_gguf(tmp_path / "cut.gguf", reference[1])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match=r"cut\.gguf is not a readable GGUF file"):
        from_pretrained(path)


def test_unknown_quantisation_type_is_refused_naming_tensor_and_type(reference, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    path = write_gguf(tmp_path / "q.gguf", reference[1], q8_1=name)
    with pytest.raises(GGUFError, match=r"blk\.1\.ffn_up\.weight.*type Q8_1"):
        from_pretrained(path)


def test_missing_tensor_is_refused_naming_it(reference, tmp_path):
    name = "model.layers.0.self_attn.v_proj.weight"
    path = write_gguf(tmp_path / "missing.gguf", reference[1], skip={name})
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ".*missing"):
        from_pretrained(path)


def test_header_parse_equals_the_gguf_packages_reader(tmp_path):
    """ftjax's header parser (models/gguf_header.py) reads what gguf.GGUFReader reads:
    every metadata value type, and plain and quantised tensors as the same views."""
    from ftjax.models import gguf_header

    path = tmp_path / "kinds.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint8("k.u8", 200)
    writer.add_int8("k.i8", -5)
    writer.add_uint16("k.u16", 60000)
    writer.add_int16("k.i16", -3000)
    writer.add_uint32("k.u32", 4_000_000_000)
    writer.add_int32("k.i32", -7)
    writer.add_float32("k.f32", 0.1)
    writer.add_uint64("k.u64", 2**40)
    writer.add_int64("k.i64", -(2**40))
    writer.add_float64("k.f64", 0.1)
    writer.add_bool("k.bool", True)
    writer.add_string("k.str", "héllo")
    writer.add_array("k.tokens", ["<s>", "a", "ü", ""])
    writer.add_array("k.scores", [0.5, -1.25])
    writer.add_array("k.types", [1, 2, 3])
    writer.add_array("k.nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    writer.add_tensor("plain", rng.normal(size=(3, 64)).astype(np.float32))
    writer.add_tensor("half", rng.normal(size=(2, 32)).astype(np.float16))
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    q8 = gguf.quants.quantize(rng.normal(size=(4, 64)).astype(np.float32), q8_0)
    writer.add_tensor("q8", q8, raw_shape=q8.shape, raw_dtype=q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    metadata, tensors = gguf_header.parse(path)
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(metadata) == list(fields)
    assert metadata.pop("k.nested") == [[1, 2], [3]]  # the reader flattens it to [1, 2, 3]
    for key, value in metadata.items():
        assert value == fields[key] and type(value) is type(fields[key]), key
    assert [t.name for t in tensors] == [t.name for t in reader.tensors] == ["plain", "half", "q8"]
    for ours, theirs in zip(tensors, reader.tensors, strict=True):
        assert ours.tensor_type == theirs.tensor_type and ours.shape == tuple(theirs.shape.tolist())
        assert ours.data.dtype == theirs.data.dtype and ours.data.shape == theirs.data.shape
        assert np.array_equal(ours.data, theirs.data), ours.name
    quantised = tensors[2]
    assert np.array_equal(
        gguf.quants.dequantize(quantised.data, quantised.tensor_type),
        gguf.quants.dequantize(q8, q8_0),
    )
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGML" + path.read_bytes()[4:])
    with pytest.raises(gguf_header.HeaderError, match="magic"):
        gguf_header.parse(other)

    twice = gguf.GGUFWriter(str(other), "llama")
    for name in ("aa", "bb"):
        twice.add_tensor(name, np.zeros((2, 32), np.float32))
    twice.write_header_to_file()
    twice.write_kv_data_to_file()
    twice.write_tensors_to_file()
    twice.close()
    prefixed = (2).to_bytes(8, "little")  # a name's length, then its bytes
    other.write_bytes(other.read_bytes().replace(prefixed + b"bb", prefixed + b"aa", 1))
    with pytest.raises(gguf_header.HeaderError, match="'aa' is listed twice"):
        gguf_header.parse(other)


def test_a_converted_tokenizer_is_kept_whole_or_not_at_all(tmp_path, caplog):
    """gguf_tokenizer.keep: a loadable folder; an unwritable cache only warns; a folder
    another process saved first stays, and no scratch folder is left behind."""
    transformers = pytest.importorskip("transformers")
    from ftjax.models import gguf_tokenizer, load_tokenizer

    tokenizer = load_tokenizer("minilm")
    folder = tmp_path / "tokenizers" / "model-0123"
    assert gguf_tokenizer.keep(tokenizer, folder)
    assert folder.stat().st_mode & 0o777 == 0o755  # readable in a cache others share
    again = transformers.AutoTokenizer.from_pretrained(folder)
    assert again("a moving film")["input_ids"] == tokenizer("a moving film")["input_ids"]
    assert gguf_tokenizer.keep(tokenizer, folder)  # saved before: left as it is
    assert [p.name for p in folder.parent.iterdir()] == ["model-0123"]

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert not gguf_tokenizer.keep(tokenizer, blocked / "tokenizers" / "model-0123")
    assert "tokenizer not cached" in caplog.text
