"""An entry point for tests of `ftjax.studies.warm_process`: prints its flag and what it
found already imported, then exits with the code its argument names (or sleeps)."""

import sys
import time

from absl import flags

FLAG = flags.DEFINE_string("flag", "", "printed back")


def main(argv: list[str]) -> int:
    import jax._src.xla_bridge as xla_bridge

    print("flag", FLAG.value, "argv", argv[1:])
    print("warm", "ftjax.training.loop" in sys.modules)
    print("backends", sorted(xla_bridge._backends))  # none: the server never starts one
    sys.stdout.flush()
    if argv[-1] == "sleep":
        time.sleep(60)
    return int(argv[-1])
