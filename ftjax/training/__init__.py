"""A run: its config (`config`), the experiment built from it (`experiment`: model,
method, task, data, optimizer), the sharded train state (`state`, `sharding`), the
compiled steps (`train`, `steps`), the loop with its checkpoints and metrics (`loop`,
`checkpoints`, `metrics`, `fingerprint`), and a workdir as a model source (`backbone`).
"""

# A workdir named as a model (`model.name = WORKDIR`) loads the run's exported backbone.
from ftjax.training import backbone as _backbone  # noqa: F401
