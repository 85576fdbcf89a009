"""--logger mlflow: the resolved plan as params, every epoch's history row as metrics (step = epoch), and at the
end the final scores, the checkpoints, the plan, the history and the rendered report as artifacts of one MLflow run.

Where: MLFLOW_TRACKING_URI when set (a server, sqlite:///..., file:...), else ./mlruns in the working directory,
which is where `mlflow ui` started there looks. The experiment is MLFLOW_EXPERIMENT_NAME, else "imgclf"; the run is
named after the run directory and tagged with its absolute path, so a --resume continues the same MLflow run.

Epoch metrics are logged after the checkpoint (as history.csv is), and a run that starts from a checkpoint first
logs the history rows its MLflow run lacks: each epoch appears exactly once, whatever point a kill hit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from imgclf.errors import UserError
from imgclf.training.callbacks import HISTORY, Callback

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from imgclf.training.trainer import Trainer

EXPERIMENT = "imgclf"  # when MLFLOW_EXPERIMENT_NAME is not set
RUN_DIR_TAG = "imgclf.run_dir"  # the run directory's absolute path: how a resume finds its MLflow run
NOT_LOGGED = {"epoch", "seconds"}  # history columns that are the axis or a running total, not a curve
BATCH = 100  # params per log_batch call (MLflow's limit)
PLAN_FILES = ("config.yaml", "classes.json", "history.csv", "lr_schedule.csv", "metrics.json")
REPORT_FILES = ("report.html", "report.md")
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # stores behind SQLAlchemy: the full mlflow package
# the first call, before training: a wrong server URL fails in seconds, not after MLflow's ~4 minutes of retries
FIRST_CALL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else ./mlruns (a local file store, MLflow's own default location)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()


@contextmanager
def env_defaults(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block, where the user set none of them; restored after."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def flat_params(plan: dict[str, Any], key_limit: int, value_limit: int, prefix: str = "") -> dict[str, str]:
    """The plan as MLflow params: nested dicts as dotted keys, values spelled as config.yaml spells them
    (null, true, [..]), each cut to MLflow's length limits (config.yaml, logged too, holds them whole)."""
    flat: dict[str, str] = {}
    for key, value in plan.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, key_limit, value_limit, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        flat[name[:key_limit]] = text if len(text) <= value_limit else text[:value_limit - 3] + "..."
    return flat


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's top-level numbers (accuracies, losses, timings, sizes) as final/<key>: the run's final
    scores, kept apart from the epoch curves (both have a val_loss and a val_macro_f1)."""
    return {f"final/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v}  # v == v: not NaN


def epoch_metrics(row: dict[str, Any]) -> list[Any]:
    """One history row as MLflow metrics at step = its epoch (the axis and the running clock left out)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, row["epoch"]) for k, v in row.items()
            if k not in NOT_LOGGED and isinstance(v, int | float) and not isinstance(v, bool)]


class MLflowLogger(Callback):
    """One MLflow run per run directory: params at fit start, history rows after each checkpoint, final scores
    and artifacts from `finish` (train() calls it once metrics.json is written). Rank 0 only (run.py adds it)."""

    order = HISTORY  # after the Checkpointer: an epoch is logged only once last.pt holds it

    def __init__(self, run_dir: Path) -> None:
        try:  # checked when the run is set up, before anything is written
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("--logger mlflow needs the mlflow package: pip install 'imgclf[mlflow]' "
                            "(or pip install mlflow-skinny)") from None
        self.run_dir = Path(run_dir).resolve()
        self.uri = tracking_uri()
        scheme = urlparse(self.uri).scheme.split("+")[0]
        if scheme in ("", "file"):
            # recent MLflow refuses its file store (maintenance mode) unless told: ./mlruns is ours to choose
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        elif scheme in DATABASES and importlib.util.find_spec("sqlalchemy") is None:
            raise UserError(f"MLFLOW_TRACKING_URI={self.uri} is a database store, which needs the full MLflow "
                            "package: pip install mlflow (imgclf[mlflow] installs the client-only mlflow-skinny)")
        with env_defaults(FIRST_CALL_ENV):
            self.client: MlflowClient = self._call(MlflowClient, tracking_uri=self.uri)
            self.experiment_id = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
        self.run_id: str | None = None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """An MLflow call whose failure (a server down, a refused store) is one line naming the tracking URI."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (MlflowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"MLflow at {self.uri}: {first}") from None

    def _experiment(self, name: str) -> str:
        experiment = self._call(self.client.get_experiment_by_name, name)
        if experiment is None:
            return self._call(self.client.create_experiment, name)
        if experiment.lifecycle_stage != "active":
            raise UserError(f"MLflow experiment {name!r} at {self.uri} is deleted: restore it, or set "
                            "MLFLOW_EXPERIMENT_NAME to another name")
        return experiment.experiment_id

    def _existing_run(self) -> str | None:
        """The MLflow run this run directory logged to before (a --resume), if the store has it."""
        path = str(self.run_dir)
        quote = '"' if "'" in path else "'"
        if quote in path:
            return None  # both quote characters: no filter can name it; a resume starts a new MLflow run
        found = self._call(self.client.search_runs, [self.experiment_id],
                           filter_string=f"tags.`{RUN_DIR_TAG}` = {quote}{path}{quote}", max_results=1)
        return found[0].info.run_id if found else None

    def on_fit_start(self, trainer: Trainer) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

        self.run_id = self._existing_run() if trainer.history or trainer.step else None
        if self.run_id is not None:  # a resume: its params are logged (MLflow refuses to change them)
            self._call(self.client.update_run, self.run_id, status="RUNNING")
            logged = {m.step for m in self._call(self.client.get_metric_history, self.run_id, "val_acc")}
        else:
            run = self._call(self.client.create_run, self.experiment_id, run_name=self.run_dir.name,
                             tags={RUN_DIR_TAG: str(self.run_dir)})
            self.run_id, logged = run.info.run_id, set()
            params = [Param(k, v) for k, v in flat_params(trainer.config.to_dict(), MAX_ENTITY_KEY_LENGTH,
                                                          MAX_PARAM_VAL_LENGTH).items()]
            for i in range(0, len(params), BATCH):
                self._call(self.client.log_batch, self.run_id, params=params[i:i + BATCH])
        missing = [row for row in trainer.history if row["epoch"] not in logged]  # resumed rows not yet logged
        if missing:
            self._call(self.client.log_batch, self.run_id, metrics=[m for row in missing for m in epoch_metrics(row)])

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self._call(self.client.log_batch, self.run_id, metrics=epoch_metrics(row))

    def write(self) -> None:
        """Nothing buffered (each epoch is sent as it ends); here for the Checkpointer's before_save."""

    def finish(self, metrics: dict[str, Any]) -> None:
        """After metrics.json: the final scores (final/..., at step = epochs run), then the report rendered from the run
        directory, and the checkpoints, plan, history and report as artifacts; the MLflow run ends FINISHED."""
        if self.run_id is None:
            return
        now, step = int(time.time() * 1000), int(metrics.get("epochs_run") or 0)
        from mlflow.entities import Metric

        scores = [Metric(k, v, now, step) for k, v in final_metrics(metrics).items()]
        self._call(self.client.log_batch, self.run_id, metrics=scores)
        self._render_report()
        for name in ("best.pt", "last.pt"):
            if (self.run_dir / "checkpoints" / name).is_file():
                self._call(self.client.log_artifact, self.run_id, str(self.run_dir / "checkpoints" / name),
                           "checkpoints")
        for name in (*PLAN_FILES, *REPORT_FILES):
            if (self.run_dir / name).is_file():
                self._call(self.client.log_artifact, self.run_id, str(self.run_dir / name))
        if (self.run_dir / "figures").is_dir():
            self._call(self.client.log_artifacts, self.run_id, str(self.run_dir / "figures"), "figures")
        self._call(self.client.set_terminated, self.run_id, "FINISHED")

    def _render_report(self) -> None:
        """RUN_DIR/report.html and report.md, as `imgclf report` writes them; the run is already complete, so a
        report that fails costs that artifact only (one line on stderr), never the run's exit code."""
        from imgclf.reporting.report import write_report

        try:
            write_report(self.run_dir)
        except Exception as exc:  # the trained run stands; only its report is missing
            print(f"imgclf: the report for MLflow was not rendered ({type(exc).__name__}: {exc}); "
                  f"`imgclf report {self.run_dir}` retries it", file=sys.stderr)
