"""Job targets: what a launched process runs. JSON-able keyword arguments in, JSON-able summary out.

They live in an importable module so that submitit can pickle them by reference.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from scnas.config import stage_from_dict


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
            datefmt="%H:%M:%S",
        )


def search_target(
    preprocessed: str, splits: str, fold: int, out_dir: str, stage: dict, task: str = ""
) -> dict[str, Any]:
    from scnas.train.search import SearchRequest, search

    _setup_logging()
    return search(SearchRequest(Path(preprocessed), Path(splits), fold, Path(out_dir), stage_from_dict(stage), task))


def train_target(
    preprocessed: str, splits: str, fold: int, out_dir: str, model: str, stage: dict, genotype: str | None = None
) -> dict[str, Any]:
    from scnas.train.retrain import RetrainRequest, retrain

    _setup_logging()
    return retrain(
        RetrainRequest(
            Path(preprocessed),
            Path(splits),
            fold,
            Path(out_dir),
            model,
            stage_from_dict(stage),
            Path(genotype) if genotype else None,
        )
    )


def predict_target(checkpoint: str, images: list[str], out_dir: str, stage: dict) -> dict[str, Any]:
    from scnas.inference.predict import predict_files

    _setup_logging()
    written = predict_files(checkpoint, images, out_dir, stage_from_dict(stage).inference)
    return {"predictions": len(written), "out_dir": out_dir}
