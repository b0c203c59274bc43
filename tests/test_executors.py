"""Executors: a process pool and Ray give the same run directories as training one run after another."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch

from ambig_bench.compare import compare
from ambig_bench.config import ExperimentConfig
from ambig_bench.errors import UserError
from ambig_bench.executors import grid, open_executor, preflight, ray_temp_dir, run_grid
from ambig_bench.io import read_json
from ambig_bench.store import RunResult
from tests.conftest import tiny_config

SAME_BYTES = ("config.json", "data.json", "history.csv", "metrics.json", "predictions.csv", "model.safetensors")


def experiment(out) -> ExperimentConfig:
    return ExperimentConfig(tiny_config(), ["soft", "extra-class"], 1, str(out))


class Finished:
    """Counts end_run calls: parallel executors report each run as it finishes."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def start_run(self, name: str, epochs: int) -> None:
        pass

    def epoch(self, name: str, epoch: int, loss: float) -> None:
        pass

    def end_run(self, result: RunResult) -> None:
        self.names.append(result.run_dir.name)


def assert_same_as_sequential(results: list[RunResult], tmp_path) -> None:
    """Train the same grid here with the workers' torch thread count: every result file is byte-identical."""
    threads = read_json(results[0].run_dir / "env.json")["torch_threads"]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reference = run_grid(experiment(tmp_path / "sequential"))
    finally:
        torch.set_num_threads(before)
    for ours, theirs in zip(results, reference, strict=True):
        assert ours.run_dir.name == theirs.run_dir.name and ours.status == theirs.status == "done"
        for name in SAME_BYTES:
            if name == "metrics.json":  # train_seconds is the one measured, not computed, value
                assert {**read_json(ours.run_dir / name), "train_seconds": 0} == \
                       {**read_json(theirs.run_dir / name), "train_seconds": 0}
            else:
                assert (ours.run_dir / name).read_bytes() == (theirs.run_dir / name).read_bytes(), name


@pytest.mark.slow
def test_process_pool_gives_the_files_of_a_sequential_grid(tmp_path):
    exp = experiment(tmp_path / "pool")
    reporter = Finished()
    with open_executor("local", jobs=2) as executor:
        preflight(grid(exp), executor)
        results = run_grid(exp, reporter, executor)
        assert sorted(reporter.names) == sorted(r.run_dir.name for r in results)
        assert [r.status for r in run_grid(exp, executor=executor)] == ["reused", "reused"]
    assert_same_as_sequential(results, tmp_path)


@pytest.fixture(scope="module")
def ray_instance():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'ambig-bench[ray]'); CI installs it")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", **ray_temp_dir(""))
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_files_of_a_sequential_grid_and_resumes(ray_instance, tmp_path):
    exp = experiment(tmp_path / "ray")
    reporter = Finished()
    with open_executor("ray") as executor:
        preflight(grid(exp), executor)
        results = run_grid(exp, reporter, executor)
        assert sorted(reporter.names) == sorted(r.run_dir.name for r in results)
        assert [r.status for r in run_grid(exp, executor=executor)] == ["reused", "reused"]
    assert ray_instance.is_initialized(), "a Ray instance the caller started is left running"
    assert_same_as_sequential(results, tmp_path)
    assert list(compare(exp.out).summary.n_seeds) == [1, 1]


@pytest.mark.slow  # starts Ray (seconds), like every test that takes ray_instance
def test_ray_refuses_a_gpu_the_cluster_does_not_have(ray_instance):
    if ray_instance.cluster_resources().get("GPU"):
        pytest.skip("this Ray instance has a GPU")
    with open_executor("ray") as executor, pytest.raises(UserError, match="--device cuda: the Ray cluster has no GPU"):
        executor.check_device("cuda")


@pytest.mark.parametrize("kind, jobs, address, message", [
    ("spark", 1, "", "--executor must be local or ray, got 'spark'"),
    ("local", 0, "", "--jobs must be at least 1, got 0"),
    ("local", 1, "auto", "--ray-address needs --executor ray"),
    ("ray", 2, "", "--jobs is for --executor local"),
])
def test_bad_executor_options_are_user_errors(kind, jobs, address, message):
    with pytest.raises(UserError, match=re.escape(message)), open_executor(kind, jobs, address):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "--ray-address 127.0.0.1:1: nothing answers at 127.0.0.1:1"),  # loopback, refused at once
    ("head-node", "--ray-address head-node: expected auto, HOST:PORT or ray://HOST:PORT"),
])
def test_a_ray_address_nobody_answers_on_is_refused_at_once(ray_instance, address, message):
    with pytest.raises(UserError, match=re.escape(message)), open_executor("ray", ray_address=address):
        pass


@pytest.mark.slow
def test_missing_ray_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'ambig-bench\[ray\]'"), open_executor("ray"):
        pass
