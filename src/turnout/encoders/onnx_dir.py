"""A sentence-transformers model directory on ONNX Runtime: no torch, no sentence-transformers package.

sentence-transformers (>= 3.2) saves an ONNX export of a model's transformer beside its own files:
`onnx/model.onnx` (Hugging Face Optimum's layout; `model.onnx` at the top also counts) next to the
Hugging Face `tokenizer.json`. With both present, turnout runs the model itself:

    tokenize    `tokenizers` (the Rust library sentence-transformers uses too), truncated to the model's
                `max_seq_length` (sentence_bert_config.json), special tokens as the tokenizer adds them
    run         ONNX Runtime, fed the inputs the graph declares: `input_ids`, `attention_mask`,
                `token_type_ids` (zeros), `position_ids` (0..n-1); padding is turnout's own, masked out
    pool        an output `sentence_embedding` when the export has one; otherwise the first output
                (token states) pooled as `1_Pooling/config.json` says: mean over the mask (the default),
                the first token (`cls`), the maximum, or the last token
    normalise   to unit length (the caller, encoders/local.py)

A directory without such an export still loads through the sentence-transformers package when that is
installed (encoders/local.py). Everything is read from local files; nothing is downloaded.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from turnout.encoders.use_onnx import make_session, quantized
from turnout.errors import ConfigError

EXPORTS = ("onnx/model.onnx", "model.onnx")
POOLING_MODES = {  # 1_Pooling/config.json's switches, in the order sentence-transformers checks them
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "last",
}
FEEDS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def find_export(path: Path) -> Path | None:
    """The directory's ONNX export, when it has one and the tokenizer to go with it."""
    if not (path / "tokenizer.json").is_file():
        return None
    return next((path / rel for rel in EXPORTS if (path / rel).is_file()), None)


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read `{path}` ({exc})") from None


def pooling_of(path: Path) -> str:
    """How token states become one vector: the Pooling module's config (modules.json says where;
    `1_Pooling` when it does not), mean when there is none."""
    folder = "1_Pooling"
    modules = _json(path / "modules.json")
    for module in modules if isinstance(modules, list) else ():
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
            folder = str(module.get("path") or folder)
    config = _json(path / folder / "config.json")
    for key, mode in POOLING_MODES.items():
        if isinstance(config, dict) and config.get(key):
            return mode
    return "mean"


class OnnxSentenceModel:
    """Tokenizer, session and pooling of one model directory; `encode` runs on the encoder's thread."""

    def __init__(self, path: Path, export: Path, threads: int, int8: bool = False) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self.pooling = pooling_of(path)
        st_config = _json(path / "sentence_bert_config.json")
        max_len = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()  # padded here, to the batch's longest, with the mask
        self.tokenizer.enable_truncation(int(max_len) if isinstance(max_len, int) and max_len > 0 else 512)
        try:
            self.session = make_session(quantized(str(export)) if int8 else str(export), threads)
        except Exception as exc:  # onnxruntime's own errors: a broken or unsupported file
            raise ConfigError(f"cannot load the ONNX model `{export}`: {exc}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = [name for name in self.inputs if name not in FEEDS]
        if unknown:
            raise ConfigError(
                f"the ONNX model `{export}` takes inputs turnout cannot fill ({', '.join(unknown)}); "
                f"it feeds {', '.join(FEEDS)}"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "sentence_embedding" if "sentence_embedding" in outputs else outputs[0]

    def encode(self, texts: list[str], started: threading.Event | None = None) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        width = max(1, max(len(e.ids) for e in encodings))
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        available = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "position_ids": np.broadcast_to(np.arange(width, dtype=np.int64), ids.shape).copy(),
        }
        feed = {name: available[name] for name in self.inputs}
        if started is not None:
            started.set()  # the caller may go on: the run below holds no GIL
        out = np.asarray(self.session.run([self.output], feed)[0], dtype=np.float32)
        if out.ndim == 2:
            return out
        return pool(out, mask, self.pooling)


def pool(states: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """(batch, tokens, dim) token states to (batch, dim), counting only the tokens the mask keeps."""
    out: np.ndarray
    if mode == "cls":
        out = states[:, 0]
    elif mode == "last":
        out = states[np.arange(len(states)), np.maximum(mask.sum(axis=1) - 1, 0)]
    elif mode == "max":
        out = np.where(mask[:, :, None] > 0, states, -np.inf).max(axis=1)
    else:
        keep = mask[:, :, None].astype(np.float32)
        out = (states * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1.0)
    return out
