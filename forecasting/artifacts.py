"""Model artefacts: the fitted model plus what is needed to trust it later.

scikit-learn's own advice for persistence is pickle/joblib *with the same library versions* (its models
are not guaranteed to load, or to predict the same, across versions). So every artefact is two files:
`<target>.joblib` (the model) and `<target>.json` (format, library versions, feature list, training
window, metrics). `load` reads the JSON first and refuses — returning a reason, never raising — when
any version differs or the file is unreadable; the service then retrains instead of crashing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.model import iso_utc
from forecasting.pipelines import TrainedModel

log = logging.getLogger(__name__)

#: bump when TrainedModel or the feature builders change incompatibly
FORMAT_VERSION = 5


def library_versions() -> dict[str, str]:
    import joblib  # type: ignore[import-untyped,unused-ignore]
    import numpy
    import pandas
    import sklearn

    return {
        "format": str(FORMAT_VERSION),
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "joblib": joblib.__version__,
    }


@dataclass(frozen=True, slots=True)
class LoadResult:
    model: TrainedModel | None
    reason: str  # empty when loaded
    meta: dict[str, Any]


def save(model: TrainedModel, directory: Path, target: str) -> Path:
    """Write model and metadata atomically (temp file + rename) so a crash never leaves half a model."""
    import joblib  # type: ignore[import-untyped,unused-ignore]

    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "target": target,
        "versions": library_versions(),
        "features": model.feature_names,
        "training_window": {"start": iso_utc(model.train_start), "end": iso_utc(model.train_end)},
        "trained_at": iso_utc(model.trained_at) if model.trained_at is not None else None,
        "quick": bool(model.metrics.get("quick")),
        "metrics": model.metrics,
        "resolution_s": model.spec.resolution_s,
        "horizon_steps": model.spec.horizon_steps,
        "weather_columns": list(model.spec.weather_columns),
    }
    path = directory / f"{target}.joblib"
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".tmp") as tmp:
        joblib.dump(model, tmp)
    os.replace(tmp.name, path)
    meta_path = directory / f"{target}.json"
    tmp_meta = meta_path.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_meta, meta_path)
    return path


def load(directory: Path, target: str) -> LoadResult:
    """The saved model, or None with the reason it must be retrained (missing, version mismatch, corrupt)."""
    meta_path, path = directory / f"{target}.json", directory / f"{target}.joblib"
    if not meta_path.exists() or not path.exists():
        return LoadResult(None, "no saved model", {})
    try:
        meta = json.loads(meta_path.read_text())
        saved = meta["versions"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return LoadResult(None, f"unreadable model metadata ({exc.__class__.__name__})", {})
    current = library_versions()
    diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if diff:
        what = ", ".join(f"{k} {a}->{b}" for k, (a, b) in sorted(diff.items()))
        return LoadResult(None, f"version mismatch ({what}): retraining", meta)
    try:
        import joblib  # type: ignore[import-untyped,unused-ignore]

        model = joblib.load(path)
    except Exception as exc:  # a corrupt pickle can raise almost anything; retraining is the answer
        log.warning("forecast model %s unreadable (%s): will retrain", path, exc)
        return LoadResult(None, f"unreadable model file ({exc.__class__.__name__})", meta)
    if not isinstance(model, TrainedModel):
        return LoadResult(None, "model file holds an unexpected object", meta)
    return LoadResult(model, "", meta)
