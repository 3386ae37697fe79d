"""One rank of tests/test_topology.py's torchrun job: a 2x2 DeviceMesh ("dp", "tp") on gloo.

Launched as ``python -m torch.distributed.run --standalone --nproc-per-node=4
topology_mesh_job.py OUT``. Each rank builds loaders from the mesh in every accepted form, with
the default seed (broadcast over the job), consumes them, checks the cursors agree
(``state_dict(check_ranks=True)``) and writes what it saw to ``OUT/<global rank>.pkl``.
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Sequence

import torch
import torch.distributed as dist
from distributed_harness import augmented, consume
from resume_harness import epochs_left
from torch.distributed.device_mesh import init_device_mesh

from resumable_loader import ResumableDataLoader

N = 13
BATCH = 2
STOP = 2  # batches before the mid-epoch cursor check


def main(argv: Sequence[str] | None = None) -> None:
    """Run this rank's part of the job and write its result (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="directory for each rank's <rank>.pkl")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        forms = {
            "pair": {"device_mesh": (mesh, "dp")},
            "slice": {"device_mesh": mesh["dp"]},
            "group": {"dp_group": mesh.get_group("dp")},
            "both_dims": {"device_mesh": (mesh, ("dp", "tp"))},
        }
        result: dict = {"coordinate": tuple(mesh.get_coordinate())}
        for name, kwargs in forms.items():
            loader = ResumableDataLoader(augmented(N), batch_size=BATCH, shuffle=True, **kwargs)
            head = consume(loader, 1, STOP)
            mid = loader.state_dict(check_ranks=True)
            loader.load_state_dict(mid)  # continue the epoch the loop broke out of
            rest = consume(loader, epochs_left(mid, 1))
            result[name] = {
                "topology": (loader.rank, loader.world_size),
                "seed": loader.seed,
                "batches": head + rest,
                "mid": mid,
            }
    finally:
        dist.destroy_process_group()
    with open(os.path.join(args.out, f"{os.environ['RANK']}.pkl"), "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main()
