"""Randomized fault injection (issue 19, item 2): trials of a seeded workload while the API, the
provisioner, the monitor, NATS, the control-plane database and managed containers are killed at
random moments; after each, the invariants (tests/faults/trial.py).

`TEMPS_FAULT_TRIALS` trials (10 by default); `TEMPS_FAULT_SEED` replays one trial. A failing
trial names its seed.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest

from tests.faults.conftest import Cluster
from tests.faults.trial import REPORTS, Trial

pytestmark = pytest.mark.asyncio(loop_scope="session")
_INDEX = itertools.count()


def _seeds() -> list[int]:
    if seed := os.environ.get("TEMPS_FAULT_SEED"):
        return [int(seed)]
    base = random.randrange(1, 1_000_000) * 1000
    return [base + i for i in range(int(os.environ.get("TEMPS_FAULT_TRIALS", "10")))]


@pytest.mark.parametrize("seed", _seeds(), ids=lambda seed: f"seed{seed}")
async def test_trial(cluster: Cluster, seed: int) -> None:
    index = next(_INDEX)
    async with cluster.client() as api:
        trial = Trial(cluster, api, seed, index)
        try:
            report = await trial.run()
        except BaseException as exc:
            print(f"\nFAILED trial, seed {seed}; replay: TEMPS_FAULT_SEED={seed} make test-faults")
            print("\n".join(trial.report.faults))
            await trial.cleanup()
            raise AssertionError(
                f"trial seed {seed} (replay: TEMPS_FAULT_SEED={seed} make test-faults): {exc}"
            ) from exc
    REPORTS.append(report)
    print(
        f"\ntrial seed {seed}: {report.services} services, {report.accepted} accepted,"
        f" {report.refused} refused, {report.retried} retried, {report.doubtful} doubtful; faults:"
        f" {sum('FAULT' in f for f in report.faults)}; longest convergence"
        f" {report.longest_convergence_s:.1f}s ({report.longest_service});"
        f" {report.duration_s:.1f}s; processes that died on their own: {report.unexpected_exits}"
    )
    print("\n".join(report.faults))
