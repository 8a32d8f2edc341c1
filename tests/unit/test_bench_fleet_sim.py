"""The fleet simulation (``bench/fleet_sim.py``) against what its service models give in
closed form: if it mis-timed workers or lost jobs, its verdicts on placement would be wrong."""

from __future__ import annotations

import pytest

from bench import fleet_sim
from bench.fleet_sim import (
    CONCURRENCY,
    SCENARIOS,
    VARIANTS,
    Worker,
    fixed_limits,
    main,
    official_like,
    run_variant,
    through_daemon,
)
from scheduler.core.capacity import CapacityPolicy

BATCHING = Worker("batching")  # perf 200, batch 32, slowdown 0.02: cost 100 alone is 0.5 s


def test_one_job_per_batching_worker_runs_at_the_rate_of_one() -> None:
    """Limits held at 1: three workers each finish a cost-100 job every 0.5 s."""
    fixed = CapacityPolicy(initial_limit=1, max_limit=1)
    outcome, _ = through_daemon((BATCHING,) * 3, (100.0,), 120, seed=1, policy=fixed)
    assert outcome.jobs_per_s == pytest.approx(6.0, rel=0.01)
    assert outcome.p50_s > 0.5 * CONCURRENCY / 3 / 2  # the others waited in the daemon


def test_full_batches_run_at_the_batching_ceiling() -> None:
    """Limits held at the batch: 96 jobs in three full batches of 32, each a batch time of
    0.5 s x (1 + 0.02 x 31); the daemon's placement fills them as Vast's route would."""
    fixed = CapacityPolicy(initial_limit=32, max_limit=32)
    outcome, _ = through_daemon((BATCHING,) * 3, (100.0,), 96, seed=1, policy=fixed)
    batch_time = 0.5 * (1 + 0.02 * 31)
    assert outcome.ended_at == pytest.approx(batch_time, rel=0.01)
    sent_at_once = official_like((BATCHING,) * 3, (100.0,), 96, seed=1)
    assert sent_at_once.jobs_per_s == pytest.approx(outcome.jobs_per_s, rel=0.01)


def test_workers_are_weighed_by_the_perf_they_report() -> None:
    """Vast weighs a batching worker by its benchmark (10 requests at once), a FIFO one by
    its rate alone."""
    assert Worker("fifo").reported_perf == 200.0
    assert BATCHING.reported_perf == pytest.approx(200 * 10 / 1.18, rel=0.01)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_every_job(variant: str) -> None:
    scenario = next(s for s in SCENARIOS if s.name == "f2")
    outcome = run_variant(scenario, variant, seed=3)
    assert outcome.jobs_per_s > 0
    assert 0 < outcome.p50_s <= outcome.p99_s


def test_the_command_prints_each_variant() -> None:
    lines: list[str] = []
    results = main(["--seeds", "1", "--scenario", "g", "--no-write"], lines.append)
    assert [line.split()[1] for line in lines] == list(VARIANTS)
    assert set(results["scenarios"]) == {f"g {variant}" for variant in VARIANTS}


def test_the_batch_sweep_reports_where_each_batch_settles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 8 settles at 8, and one of 24 (between two probe steps) within 10% of it."""
    monkeypatch.setattr(fleet_sim, "SWEEP_BATCHES", (8, 24))
    monkeypatch.setattr(fleet_sim, "SWEEP_COSTS", {"cost 100": (100.0,)})
    lines: list[str] = []
    results = main(["--batch-sweep", "--no-write"], lines.append)
    got = results["sweep"]["cost 100"]
    assert got["settled"][8] == 8
    assert 0.9 * 24 <= got["settled"][24] <= 24
    assert (got["within"], got["sizes"]) == (2, 2)
    assert lines == ["cost 100: 2 of 2 batch sizes settle within 0.9-1.25x of the batch"]


def test_fixed_limits_show_delivered_beside_what_the_round_measure_reads() -> None:
    """A batch of 32 (f2's mix) held at 8 delivers what the round measure reads there; held at
    48, past its batch, it delivers what it does at 32, and the reading collapses (the jobs
    past the batch wait at the worker): the tool shows where the controller's measure and the
    worker part. A paged (vLLM-like) worker delivers less at 24 than at 10 while the reading
    rises."""
    f2 = next(s for s in SCENARIOS if s.name == "f2")
    rows = fixed_limits(f2, (8, 32, 48))
    assert rows["8"]["read_cost_s_median"] == pytest.approx(rows["8"]["delivered_cost_s"], rel=0.05)
    assert rows["48"]["delivered_cost_s"] == pytest.approx(rows["32"]["delivered_cost_s"], rel=0.02)
    assert rows["48"]["read_cost_s_median"] < 0.5 * rows["48"]["delivered_cost_s"]
    paged = fixed_limits(next(s for s in SCENARIOS if s.name == "v"), (10, 24))
    assert paged["24"]["delivered_cost_s"] < 0.9 * paged["10"]["delivered_cost_s"]
    assert paged["24"]["read_cost_s_median"] > paged["10"]["read_cost_s_median"]


def test_paged_workers_told_their_memory_beat_the_learnt_limit() -> None:
    """Fleet simulation, one seed: vLLM-like workers (paged memory, preemption) run faster and
    with a far lower p99 when the daemon is told their memory (``max_worker_cost``, variant
    ``told``) than on the learnt limit, and than the official-like placement; only scenarios
    with memory-bound workers have the variant."""
    results = main(["--seeds", "1", "--scenario", "v", "--scenario", "f1", "--no-write"],
                   lambda _line: None)  # fmt: skip
    runs = {name: got["runs"][0] for name, got in results["scenarios"].items()}
    assert "f1 told" not in runs
    told, cold, official = runs["v told"], runs["v cold"], runs["v official-like"]
    assert told["jobs_per_s"] > 1.05 * max(cold["jobs_per_s"], official["jobs_per_s"])
    assert told["p99_s"] < 0.6 * min(cold["p99_s"], official["p99_s"])
