"""A sentence-transformers model directory with an ONNX export, run on ONNX Runtime without torch.

The model is a real one, only tiny: a `tokenizers` WordLevel tokenizer saved as tokenizer.json, and an
ONNX graph (token embedding + token type embedding, masked) saved as onnx/model.onnx, in the layout
sentence-transformers writes (modules.json, 1_Pooling/config.json, sentence_bert_config.json). Words
about incidents, small talk and code point along their own axes, so routing by it is predictable.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import openai
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing

from tests.conftest import GatewayFactory
from turnout.config import EncoderConfig, default_config_tree, validate
from turnout.encoders import EncoderSet
from turnout.encoders.onnx_dir import OnnxSentenceModel, find_export, pool, pooling_of
from turnout.errors import ConfigError

DIM = 8
TOPICS = {
    0: "outage down breach leaked credentials incident production database corrupted",
    1: "hello hi thanks morning joke weather how are you",
    2: "python function bug javascript sql query code compile",
}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def vocab() -> dict[str, int]:
    words = SPECIAL + [w for text in TOPICS.values() for w in text.split()]
    return {w: i for i, w in enumerate(dict.fromkeys(words))}


def embeddings(v: dict[str, int]) -> np.ndarray:
    rng = np.random.default_rng(7)
    table = rng.normal(0, 0.05, (len(v), DIM)).astype(np.float32)
    for axis, text in TOPICS.items():
        for word in text.split():
            table[v[word], axis] += 1.0
    table[v["[CLS]"], 7] = table[v["[SEP]"], 7] = 0.3
    table[v["[UNK]"], 6] = 0.5
    return table


def make_model_dir(root: Path, pooling: str = "pooling_mode_mean_tokens", max_seq_length: int = 32) -> Path:
    v = vocab()
    tok = Tokenizer(WordLevel(v, unk_token="[UNK]"))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", v["[CLS]"]), ("[SEP]", v["[SEP]"])]
    )
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))

    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["w", "t"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=f32),
        helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["last_hidden_state"]),
    ]
    inits = [
        numpy_helper.from_array(embeddings(v), "words"),
        numpy_helper.from_array(np.zeros((2, DIM), np.float32), "types"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(n, i64, ["batch", "tokens"])
         for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", f32, ["batch", "tokens", DIM])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (root / "onnx").mkdir(exist_ok=True)
    onnx.save(model, str(root / "onnx" / "model.onnx"))

    (root / "1_Pooling").mkdir(exist_ok=True)
    modes = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": DIM,
                                                                **{m: m == pooling for m in modes}}))  # fmt: skip
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return root


def encode(path: Path, texts: list[str], **cfg: Any) -> np.ndarray:
    encoders = EncoderSet({"st": EncoderConfig(kind="sentence-transformers", path=str(path), **cfg)}, {})
    try:
        return np.asarray(asyncio.run(encoders.get("st").encode(texts)))
    finally:
        asyncio.run(encoders.close())


def test_a_model_directory_with_an_onnx_export_encodes_without_torch(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "tiny")
    assert find_export(model) == model / "onnx" / "model.onnx" and pooling_of(model) == "mean"
    vectors = encode(model, ["production database is down", "the outage leaked credentials",
                             "hi, thanks and good morning", "fix this python bug"])  # fmt: skip
    assert vectors.shape == (4, DIM) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.9 and sims[0, 2] < 0.3 and sims[0, 3] < 0.3 and sims[2, 3] < 0.3


def test_padding_in_a_batch_never_changes_a_vector(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "tiny")
    short = "hello there"
    alone = encode(model, [short])[0]
    batched = encode(model, [short, "the production database outage leaked credentials in an incident"])[0]
    assert np.allclose(alone, batched, atol=1e-6)  # mean over the mask: pads count for nothing


def test_inputs_longer_than_max_seq_length_are_truncated(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "tiny", max_seq_length=4)
    m = OnnxSentenceModel(model, model / "onnx" / "model.onnx", threads=1)
    long = " ".join(["outage"] * 50)
    assert len(m.tokenizer.encode(long).ids) == 4
    assert m.encode([long, "hi"]).shape == (2, DIM)


@pytest.mark.parametrize(("mode", "expected"), [("cls", [1, 0]), ("mean", [2, 3]), ("max", [3, 5]), ("last", [3, 5])])
def test_pooling_modes_count_only_unmasked_tokens(mode: str, expected: list[float]) -> None:
    states = np.array([[[1, 0], [2, 4], [3, 5], [99, 99]]], dtype=np.float32)  # the last token is padding
    mask = np.array([[1, 1, 1, 0]])
    assert pool(states, mask, mode)[0].tolist() == expected


def test_pooling_comes_from_the_pooling_module(tmp_path: Path) -> None:
    assert pooling_of(make_model_dir(tmp_path / "a", pooling="pooling_mode_cls_token")) == "cls"
    assert pooling_of(make_model_dir(tmp_path / "b", pooling="pooling_mode_max_tokens")) == "max"
    assert pooling_of(tmp_path / "nothing-here") == "mean"


def test_int8_quantizes_the_export_and_keys_its_vectors_apart(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "tiny")
    encoders = EncoderSet({"st": EncoderConfig(kind="sentence-transformers", path=str(model),
                                               runtime="onnxruntime-int8")}, {})  # fmt: skip
    assert encoders.get("st").id == f"sentence-transformers:{model}:int8"
    asyncio.run(encoders.close())
    full, int8 = (
        encode(model, ["the outage leaked credentials"]),
        encode(model, ["the outage leaked credentials"], runtime="onnxruntime-int8"),
    )
    assert float(full[0] @ int8[0]) > 0.95


def test_a_directory_without_an_export_or_the_package_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"no ONNX export.*pip install sentence-transformers"):
            encode(tmp_path / "plain", ["x"])
    with pytest.raises(ConfigError, match="needs an ONNX export"):
        encode(tmp_path / "plain", ["x"], runtime="onnxruntime-int8")


def test_an_export_with_inputs_turnout_cannot_fill_is_a_config_error(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "tiny")
    graph = onnx.load(str(model / "onnx" / "model.onnx"))
    graph.graph.input.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1]))
    onnx.save(graph, str(model / "onnx" / "model.onnx"))
    with pytest.raises(ConfigError, match="inputs turnout cannot fill \\(pixel_values\\)"):
        encode(model, ["x"])


def test_numpy_is_not_a_runtime_for_a_model_directory(tmp_path: Path) -> None:
    raw = default_config_tree({})
    raw["encoders"] = {"st": {"kind": "sentence-transformers", "path": str(tmp_path), "runtime": "numpy"}}
    with pytest.raises(ConfigError, match=r"encoders\.st\.runtime: `numpy` is for the bundled `use`"):
        validate(raw, {})


def test_a_gateway_routes_with_the_model_directory(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "tiny")
    gw = make_gateway(
        encoders={"st": {"kind": "sentence-transformers", "path": str(model)}},
        routes={
            "lite": {"targets": ["lite-model"], "utterances": ["hello, how are you", "thanks, good morning"]},
            "deep": {"targets": ["deep-model"], "utterances": ["production is down", "credentials leaked"]},
        },
        routers={"auto": {"routes": ["lite", "deep"], "strategies": ["semantic"], "fallback": "lite",
                          "semantic": {"encoder": "st", "threshold": 0.5, "margin": 0.1}}},
    )  # fmt: skip
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=10) as client:
        for text, route in (("our production database is down, outage!", "deep"), ("hi, thanks!", "lite")):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": text}]
            )
            assert (raw.headers["x-turnout-route"], raw.headers["x-turnout-strategy"]) == (route, "semantic")
            assert raw.parse().choices[0].message.content
