"""Train and test from the shell.

    python -m ftjax.main --config configs/sentiment.py:model=minilm,method=lora --workdir runs/x

Without flags it runs the embedded default: LoRA on the bundled MiniLM on the bundled
movie-review sentiment data, then prints the test accuracy. Every config field can be
overridden (`--config.method.rank=16`); a workdir with checkpoints resumes. On several
hosts run the same command on each: a TPU pod slice, a SLURM step or Open MPI is detected
(`ftjax.training.launch`); elsewhere pass --coordinator_address, --num_processes and --process_id.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ftjax import cli, configs
from ftjax.training import launch

# From the installed package ftjax.configs (= configs/), with or without the source tree.
DEFAULT_CONFIG = str(Path(configs.__file__).parent / "sentiment.py")
CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "experiment config file")
WORKDIR = flags.DEFINE_string("workdir", "runs/default", "checkpoints, metrics and results")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in a multi-host run")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", list(launch.MODES), "JAX's distributed runtime: auto when a "
    "cluster started several processes (SLURM, Open MPI, TPU pod), on always, off never"
)  # fmt: skip


def main(argv: list[str]) -> None:
    del argv
    cli.set_up_logging()
    cli.use_compilation_cache()

    def run():
        # Before anything that might touch a device: the runtime must start first.
        launch.initialize(
            DISTRIBUTED.value, COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value
        )
        from ftjax.training import loop

        return loop.run(CONFIG.value, WORKDIR.value)

    cli.reporting_user_errors(run)


if __name__ == "__main__":
    app.run(main)
