"""Train and test from the shell.

    python -m ftjax.main --config configs/sentiment.py:model=minilm,method=lora --workdir runs/x

Without flags it runs the embedded default: LoRA on the bundled MiniLM on the bundled
movie-review sentiment data, then prints the test accuracy. Every config field can be
overridden (`--config.method.rank=16`); a workdir with checkpoints resumes. For several
hosts, pass --coordinator_address, --num_processes and --process_id to every process.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "sentiment.py")
CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "experiment config file")
WORKDIR = flags.DEFINE_string("workdir", "runs/default", "checkpoints, metrics and results")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in a multi-host run")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")


def main(argv: list[str]) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ftjax").setLevel(logging.INFO)
    import jax

    if COORDINATOR.value:
        jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    from ftjax import loop
    from ftjax.config import ConfigError
    from ftjax.methods import MethodError
    from ftjax.partition import PatternError
    from ftjax.tasks import DataRowError, TaskError

    try:
        loop.run(CONFIG.value, WORKDIR.value)
    except (ConfigError, MethodError, PatternError, TaskError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except DataRowError as err:
        print(f"data error: {err}", file=sys.stderr)
        sys.exit(2)
    except loop.TrainingDiverged as err:
        print(f"training diverged: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
