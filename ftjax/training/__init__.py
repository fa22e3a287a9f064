"""A run: its config (`config`), the experiment built from it (`experiment`: model,
method, task, data, optimizer), the sharded train state (`state`, `sharding`), the
compiled steps (`train`, `steps`), the loop with its checkpoints and metrics (`loop`,
`checkpoints`, `metrics`, `fingerprint`), and a workdir as a model source (`backbone`).
"""

from pathlib import Path

from ftjax.models import hub as _hub


def _export_backbone(workdir: Path) -> Path:
    # imported when a run is named as a model, not with every module of this package
    from ftjax.training.backbone import export_backbone

    return export_backbone(workdir)


# A workdir named as a model (`model.name = WORKDIR`) loads the run's exported backbone.
_hub.use_run_exporter(_export_backbone)
