"""Per-case, per-label segmentation metrics (Dice, IoU, voxel counts, percentile Hausdorff distance) and
per-fold summaries: metrics.csv, and summary.json in nnU-Net v2's schema.

Conventions, as in nnU-Net and MONAI:
- Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN) are NaN when a label is absent from both
  prediction and reference (nnU-Net's convention; such cases are left out of means), and 0 when it is
  present in exactly one of them.
- The surface of a label is the set of its voxels with at least one face (6-)neighbour outside the label;
  voxels beyond the image edge count as outside. The percentile Hausdorff distance (HD95 for
  percentile=95) pools the distances, in mm, from every prediction surface voxel to the nearest reference
  surface voxel and from every reference surface voxel to the nearest prediction surface voxel, and takes
  the percentile of the pooled set (medpy's hd95; MONAI instead takes the larger of the two directed
  percentiles; both give the Hausdorff distance at percentile=100). It is NaN when the label is absent
  from both and inf when it is present in exactly one; means over cases leave both out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from scnas.errors import ScnasError, describe_os_error, os_error_cause
from scnas.io import json_text, write_together
from scnas.layout import METRICS, SUMMARY
from scnas.locking import LOCK_NAME, folder_lock, remove_stale_temporaries

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)
AFFINE_TOLERANCE = 1e-4
OUTPUTS = (METRICS, SUMMARY)


class LabelMetrics(NamedTuple):
    """One label of one case: Dice, the percentile Hausdorff distance and nnU-Net's voxel counts."""

    label: int
    dice: float
    hd: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    @property
    def n_ref(self) -> int:
        return self.tp + self.fn

    @property
    def iou(self) -> float:
        union = self.tp + self.fp + self.fn
        return self.tp / union if union else math.nan


def dice(prediction: np.ndarray, reference: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice 2|P∩R|/(|P|+|R|) per label; NaN when the label is in neither map."""
    _check_same_shape(prediction, reference)
    return {int(label): _counts(prediction == label, reference == label)[0] for label in labels}


def hausdorff(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Iterable[int],
    spacing: Sequence[float],
    percentile: float = 95,
) -> dict[int, float]:
    """Symmetric percentile Hausdorff distance (mm) between label surfaces; NaN if in neither map, inf if in one."""
    _check_same_shape(prediction, reference)
    spacing = _check_spacing(spacing, prediction.ndim)
    return {
        int(label): _surface_distance(prediction == label, reference == label, spacing, percentile) for label in labels
    }


def case_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Iterable[int],
    spacing: Sequence[float],
    percentile: float = 95,
) -> list[LabelMetrics]:
    """One LabelMetrics (label, dice, hd, tp, fp, fn, tn) per label for a per-case table."""
    _check_same_shape(prediction, reference)
    spacing = _check_spacing(spacing, prediction.ndim)
    rows = []
    for label in labels:
        p = prediction == label
        r = reference == label
        d, tp, fp, fn = _counts(p, r)
        hd = _surface_distance(p, r, spacing, percentile)
        rows.append(LabelMetrics(int(label), d, hd, tp, fp, fn, p.size - tp - fp - fn))
    return rows


def hd_column(percentile: float) -> str:
    """Name of the Hausdorff column in metrics.csv: hd95 for percentile 95, hd100 for the maximum."""
    return f"hd{percentile:g}"


def hd_key(percentile: float) -> str:
    """Name of the Hausdorff metric in summary.json, beside nnU-Net's "Dice" and "IoU": HD95, HD100."""
    return f"HD{percentile:g}"


def evaluate_cases(
    pairs: Sequence[tuple[str, str | Path, str | Path]],
    labels: dict[int, str],
    out_dir: Path,
    percentile: float = 95,
    threads: int = 1,
    provenance: dict | None = None,
):
    """Metrics for each (case_id, prediction NIfTI, reference NIfTI) -> out_dir/metrics.csv + summary.json.

    summary.json is nnU-Net v2's (`metric_per_case`, `mean`, `foreground_mean`; see nnunet_summary) with
    our own keys beside: `labels` (per-label mean/std/count, summarise), `num_cases`, `percentile`,
    `mean_dice`, `metrics_sha256` and `provenance` (what the predictions and the metrics' settings were).
    Label 0 (background) is skipped, so a dataset.json label map can be passed as is; a prediction
    holding a value that `labels` (or background) does not declare is refused. The two files appear
    together or not at all: both are removed first and written together at the end, and summary.json
    records the SHA-256 of metrics.csv. Returns the per case x label table (columns: case, label,
    label_name, dice, hd{p}, n_pred, n_ref).
    """
    import pandas as pd

    declared = sorted({0, *(int(k) for k in labels)})
    labels = {int(k): v for k, v in labels.items() if int(k) != 0}
    if not pairs:
        raise ScnasError(f"{out_dir}: no cases to evaluate")
    if not labels:
        raise ScnasError(f"{out_dir}: no foreground labels to evaluate")
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        with _output_lock(out_dir):
            remove_stale_temporaries(out_dir, OUTPUTS)
            for name in reversed(OUTPUTS):
                (out_dir / name).unlink(missing_ok=True)
    label_ids = list(labels)

    def one(pair):
        case_id, pred_path, ref_path = pair
        return case_id, _evaluate_case(case_id, Path(pred_path), Path(ref_path), label_ids, declared, percentile)

    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(one, pairs))
    else:
        results = [one(pair) for pair in pairs]

    hd_col = hd_column(percentile)
    records = [
        {
            "case": case_id,
            "label": row.label,
            "label_name": labels[row.label],
            "dice": row.dice,
            hd_col: row.hd,
            "n_pred": row.n_pred,
            "n_ref": row.n_ref,
        }
        for case_id, rows in results
        for row in rows
    ]
    table = pd.DataFrame.from_records(
        records, columns=["case", "label", "label_name", "dice", hd_col, "n_pred", "n_ref"]
    )
    csv = table.to_csv(index=False).encode()
    per_case = [(str(pair[1]), str(pair[2]), rows) for pair, (_, rows) in zip(pairs, results)]
    summary = {
        **nnunet_summary(per_case, label_ids, percentile),
        **summarise(table, labels, percentile),
        "metrics_sha256": hashlib.sha256(csv).hexdigest(),
    }
    if provenance is not None:
        summary["provenance"] = provenance
    with _output_lock(out_dir):
        write_together({out_dir / METRICS: csv, out_dir / SUMMARY: json_text(summary).encode()})
    return table


def read_prediction_manifest(path: str | os.PathLike) -> list[str]:
    """The case ids of a predictions.json written by `scnas predict` ({"cases": {id: file}}); a broken
    manifest is one line naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ScnasError(f"{path}: not valid JSON ({str(e).splitlines()[0]}); rerun `scnas predict`") from None
    except OSError as e:
        raise ScnasError(describe_os_error(e, path)) from None
    cases = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(cases, (dict, list)) or not cases:
        raise ScnasError(f"{path}: must hold a non-empty 'cases' (written by `scnas predict`)")
    for case_id in cases:
        if not isinstance(case_id, str) or not case_id or "/" in case_id or "\0" in case_id:
            raise ScnasError(f"{path}: 'cases' holds {case_id!r}, which is not a case id")
    return list(cases)


def incomplete_reason(metrics_path: str | os.PathLike) -> str | None:
    """Why a metrics.csv is not a finished evaluation (no summary.json beside it, or one written for
    other metrics), or None when it is."""
    metrics_path = Path(metrics_path)
    summary_path = metrics_path.with_name(SUMMARY)
    if not summary_path.is_file():
        return f"no {SUMMARY} beside it (the evaluation did not finish; rerun `scnas evaluate`)"
    try:
        recorded = json.loads(summary_path.read_text()).get("metrics_sha256")
        actual = hashlib.sha256(metrics_path.read_bytes()).hexdigest()
    except (ValueError, AttributeError):
        return f"its {SUMMARY} is not a JSON object (rerun `scnas evaluate`)"
    except OSError as e:
        return f"cannot be read ({os_error_cause(e)})"
    if recorded != actual:
        return f"its {SUMMARY} was written for other metrics (rerun `scnas evaluate`)"
    return None


@contextlib.contextmanager
def _output_lock(out_dir: Path) -> Iterator[None]:
    """The evaluation's lock on out_dir; a disk that cannot take the lock file is one line naming it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(out_dir, "evaluation"))
        except OSError as e:
            raise ScnasError(describe_os_error(e, e.filename or out_dir / LOCK_NAME)) from None
        yield


NNUNET_METRICS = ("Dice", "FN", "FP", "IoU", "TN", "TP", "n_pred", "n_ref")


def nnunet_summary(
    cases: Sequence[tuple[str, str, Sequence[LabelMetrics]]], labels: Sequence[int], percentile: float = 95
) -> dict:
    """nnU-Net v2's summary.json content for (prediction file, reference file, rows) per case.

    As nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder: `metric_per_case` lists
    {"metrics": {"1": {Dice, FN, FP, IoU, TN, TP, n_pred, n_ref}}, "prediction_file", "reference_file"},
    `mean` is per label the NaN-skipping mean over cases of each metric, `foreground_mean` the plain mean
    over labels of those means (NaN when a label's is). HD{p} (hd_key) is added in all three; its per-label
    mean leaves out NaN and inf (label in one map only). NaN is written as nnU-Net writes it (JSON NaN).
    """
    hd = hd_key(percentile)
    keys = sorted((*NNUNET_METRICS, hd))
    metric_per_case = [
        {
            "metrics": {str(row.label): _nnunet_row(row, hd) for row in rows},
            "prediction_file": prediction_file,
            "reference_file": reference_file,
        }
        for prediction_file, reference_file, rows in cases
    ]
    mean = {}
    for label in labels:
        values = {k: np.array([c["metrics"][str(label)][k] for c in metric_per_case], np.float64) for k in keys}
        mean[str(label)] = {k: _nan_mean(v[np.isfinite(v)] if k == hd else v) for k, v in values.items()}
    foreground_mean = {k: float(np.mean([mean[str(label)][k] for label in labels])) for k in keys}
    return {"foreground_mean": foreground_mean, "mean": mean, "metric_per_case": metric_per_case}


def _nnunet_row(row: LabelMetrics, hd: str) -> dict:
    values = {
        "Dice": row.dice,
        "FN": row.fn,
        "FP": row.fp,
        hd: row.hd,
        "IoU": row.iou,
        "TN": row.tn,
        "TP": row.tp,
        "n_pred": row.n_pred,
        "n_ref": row.n_ref,
    }
    return dict(sorted(values.items()))


def _nan_mean(values: np.ndarray) -> float:
    """np.nanmean without its warning for no values: NaN then."""
    kept = values[~np.isnan(values)]
    return float(np.nanmean(values)) if kept.size else math.nan


def summarise(table, labels: dict[int, str], percentile: float = 95) -> dict:
    """Per-label mean/std (sample, ddof=1)/count of Dice and HD over cases, and mean_dice over labels.

    NaN values (label in neither map) are left out. Infinite HD values (label in only one map) are left
    out of the HD mean and std and counted in "n_inf". Non-finite results are written as null.
    """
    hd_col = hd_column(percentile)
    per_label = {}
    label_means = []
    for label, name in labels.items():
        rows = table[table["label"] == int(label)]
        dice_values = rows["dice"].to_numpy(dtype=np.float64)
        hd_values = rows[hd_col].to_numpy(dtype=np.float64)
        dice_stats = _stats(dice_values[~np.isnan(dice_values)])
        hd_stats = _stats(hd_values[np.isfinite(hd_values)])
        hd_stats["n_inf"] = int(np.isinf(hd_values).sum())
        per_label[str(int(label))] = {"name": name, "dice": dice_stats, hd_col: hd_stats}
        if dice_stats["mean"] is not None:
            label_means.append(dice_stats["mean"])
    return {
        "num_cases": int(table["case"].nunique()),
        "percentile": percentile,
        "labels": per_label,
        "mean_dice": float(np.mean(label_means)) if label_means else None,
    }


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis: the lengths of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _evaluate_case(
    case_id: str, pred_path: Path, ref_path: Path, labels: list[int], declared: list[int], percentile: float
) -> list[LabelMetrics]:
    from scnas.data.nifti import load_label

    prediction, pred_affine = load_label(pred_path)
    undeclared = sorted(set(np.unique(prediction).tolist()) - set(declared))
    if undeclared:
        shown = ", ".join(map(str, undeclared[:10])) + (", ..." if len(undeclared) > 10 else "")
        raise ScnasError(
            f"{pred_path}: case {case_id}: prediction holds label values [{shown}] that the dataset does not "
            f"declare (declared: {declared})"
        )
    reference, ref_affine = load_label(ref_path)
    if prediction.shape != reference.shape:
        raise ScnasError(
            f"case {case_id}: prediction {pred_path} has shape {prediction.shape} but reference "
            f"{ref_path} has shape {reference.shape}"
        )
    if not np.allclose(pred_affine, ref_affine, rtol=0, atol=AFFINE_TOLERANCE):
        difference = float(np.abs(pred_affine - ref_affine).max())
        raise ScnasError(
            f"case {case_id}: prediction {pred_path} and reference {ref_path} have different "
            f"affines (largest difference {difference:.3g})"
        )
    return case_metrics(prediction, reference, labels, spacing_from_affine(ref_affine), percentile)


def _counts(p: np.ndarray, r: np.ndarray) -> tuple[float, int, int, int]:
    """Dice (2TP / (2TP + FP + FN), NaN when both are empty), TP, FP and FN of two boolean masks."""
    tp = int(np.count_nonzero(p & r))
    fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
    if tp + fp + fn == 0:
        return math.nan, 0, 0, 0
    return 2 * tp / (2 * tp + fp + fn), tp, fp, fn


def _surface_distance(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], percentile: float) -> float:
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return math.nan
    if has_p != has_r:
        return math.inf
    region = _bounding_region(p | r)
    p, r = p[region], r[region]
    surface_p = _surface(p)
    surface_r = _surface(r)
    to_r = ndimage.distance_transform_edt(~surface_r, sampling=spacing)[surface_p]
    to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_r]
    return float(np.percentile(np.concatenate([to_r, to_p]), percentile))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def _bounding_region(mask: np.ndarray) -> tuple[slice, ...]:
    """The mask's bounding box grown by one voxel (clipped to the array): distances inside it are exact."""
    region = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        region.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, mask.shape[axis])))
    return tuple(region)


def _stats(values: np.ndarray) -> dict:
    count = int(values.size)
    return {
        "mean": float(values.mean()) if count else None,
        "std": float(values.std(ddof=1)) if count > 1 else None,
        "count": count,
    }


def _check_same_shape(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing {spacing} must hold {ndim} positive voxel sizes")
    return spacing
