"""Job targets: what a launched process runs. JSON-able keyword arguments in, JSON-able summary out.

They live in an importable module so that submitit can pickle them by reference.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

from scnas.config import task_settings
from scnas.errors import ScnasError, describe_os_error


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
            datefmt="%H:%M:%S",
        )


def search_target(
    preprocessed: str, splits: str, fold: int, out_dir: str, settings: dict, task: str = ""
) -> dict[str, Any]:
    from scnas.train.search import SearchRequest, search

    _setup_logging()
    with _one_line_errors():
        return search(
            SearchRequest(Path(preprocessed), Path(splits), fold, Path(out_dir), task_settings(settings), task)
        )


def train_target(
    preprocessed: str, splits: str, fold: int, out_dir: str, model: str, settings: dict, genotype: str | None = None
) -> dict[str, Any]:
    from scnas.train.training import TrainRequest, train

    _setup_logging()
    with _one_line_errors():
        return train(
            TrainRequest(
                Path(preprocessed),
                Path(splits),
                fold,
                Path(out_dir),
                model,
                task_settings(settings),
                Path(genotype) if genotype else None,
            )
        )


def predict_target(
    checkpoint: str | list[str],
    images: list,
    out_dir: str,
    settings: dict,
    cases: dict[str, list[str]] | None = None,
    save_probabilities: bool = False,
) -> dict[str, Any]:
    """Predict with one checkpoint, or with the mean probabilities of a list of them (a fold ensemble)."""
    from scnas.inference.predict import predict_files

    _setup_logging()
    with _one_line_errors():
        written = predict_files(
            checkpoint,
            images,
            out_dir,
            task_settings(settings).inference,
            cases=cases,
            save_probabilities=save_probabilities,
        )
    return {"predictions": len(written), "out_dir": out_dir}


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """An OSError inside a job (disk full, read-only, permission) becomes the one-line ScnasError the
    launcher reports, naming the path and the cause in words."""
    try:
        yield
    except OSError as e:
        raise ScnasError(describe_os_error(e)) from None
