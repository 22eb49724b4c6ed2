"""One rank of a data-parallel run for tests/test_distributed.py: trains `max_steps` steps with the launcher's
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and, on rank 0, writes the global batches' losses.

    python tests/ddp_worker.py PATH MAX_STEPS OUT.json [--plain]   (--plain: one process, no process group)
"""

import json
import sys

from hdr_lib import distributed
from hdr_lib.config import PAPER
from hdr_lib.train import train


def main() -> None:
    path, max_steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = None if "--plain" in sys.argv else distributed.from_environment()
    try:
        record = train(PAPER.replace(device="cpu", path=path), progress=False, max_steps=max_steps,
                       keep_step_losses=True, dist_ctx=ctx)
    finally:
        if ctx is not None:
            ctx.close()
    if ctx is None or ctx.is_writer:
        with open(out, "w") as f:
            json.dump({"step_losses": record["step_losses"], "execution": record["execution"],
                       "distributed": record.get("distributed")}, f)


if __name__ == "__main__":
    main()
