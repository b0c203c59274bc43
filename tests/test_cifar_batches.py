"""torchvision's cifar-10-batches-py: a batch file is unpickled only when its MD5 is the official file's."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.data import SPLITS
from ambig_bench.datasets import DATASETS, prepare
from ambig_bench.datasets import cifar10 as cifar10_module
from ambig_bench.errors import UserError
from tests.conftest import tiny_config

NAMES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
REFUSED = "checksum does not match the official CIFAR-10 file"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))


class Payload:
    """Unpickling this creates `marker`: a stand-in for any code a crafted pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def stand_in_batch(labels: list[int]) -> bytes:
    data = np.stack([np.full(3 * 32 * 32, 10 + 24 * y, dtype=np.uint8) for y in labels])
    return pickle.dumps({b"data": data, b"labels": labels})


def batches_tree(root: Path, crafted: dict[str, bytes] | None = None) -> Path:
    """root/cifar-10-batches-py with a small batch under every name, then the `crafted` files over them."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in NAMES:
        (folder / name).write_bytes(stand_in_batch(list(range(10))))
    for name, data in (crafted or {}).items():
        (folder / name).write_bytes(data)
    return folder


def trust(monkeypatch, folder: Path, names: list[str]) -> None:
    """Pretend the stand-in files under `names` are the official ones (their MD5s become the known ones)."""
    official = dict(cifar10_module.BATCH_MD5)
    official.update({n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in names})
    monkeypatch.setattr(cifar10_module, "BATCH_MD5", official)


def test_the_checksums_are_torchvisions():
    torchvision_cifar = pytest.importorskip("torchvision.datasets.cifar")
    listed = dict(torchvision_cifar.CIFAR10.train_list + torchvision_cifar.CIFAR10.test_list)
    assert cifar10_module.BATCH_MD5 == listed


@pytest.fixture
def crafted(tmp_path) -> tuple[bytes, Path]:
    """A pickle that would create a marker file when loaded, shown to do so, and the marker it would create."""
    marker = tmp_path / "pwned"
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe))).close()
    assert probe.exists(), "the crafted pickle does run code when unpickled"
    return pickle.dumps(Payload(marker)), marker


def test_a_crafted_data_batch_is_refused_in_one_line_and_never_unpickled(tmp_path, crafted):
    payload, marker = crafted
    folder = batches_tree(tmp_path / "root", {"data_batch_1": payload})
    with pytest.raises(UserError) as info:
        DATASETS.get("cifar10")(tiny_config(dataset="cifar10", data_dir=str(tmp_path / "root")))
    message = str(info.value)
    assert message.startswith(f"{folder / 'data_batch_1'}: ") and REFUSED in message and "\n" not in message
    assert not marker.exists(), "the crafted pickle was executed"


def test_a_crafted_test_batch_after_official_ones_is_refused(tmp_path, monkeypatch, crafted):
    payload, marker = crafted
    folder = batches_tree(tmp_path / "root", {"test_batch": payload})
    trust(monkeypatch, folder, NAMES[:-1])
    with pytest.raises(UserError, match=f"test_batch: .*{REFUSED}"):
        DATASETS.get("cifar10")(tiny_config(dataset="cifar10", data_dir=str(tmp_path / "root")))
    assert not marker.exists()


def test_a_crafted_batch_through_the_command_line_is_exit_2_one_line_and_writes_nothing(tmp_path, crafted):
    payload, marker = crafted
    folder = batches_tree(tmp_path / "root", {"data_batch_1": payload})
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "root"),
                                      "--out", str(out), "--epochs", "1", "--device", "cpu"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.stderr)
    assert str(folder / "data_batch_1") in lines[0] and REFUSED in lines[0], lines[0]
    assert not marker.exists(), "the crafted pickle was executed"
    assert not out.exists()


def test_stand_in_batches_with_matching_checksums_load(tmp_path, monkeypatch):
    folder = batches_tree(tmp_path / "root")
    trust(monkeypatch, folder, NAMES)
    raw = DATASETS.get("cifar10")(tiny_config(dataset="cifar10", data_dir=str(tmp_path / "root")))
    assert raw.images.shape == (60, 3, 32, 32) and int((raw.split == SPLITS["test"]).sum()) == 10
    assert torch.equal((raw.images[:, 0, 0, 0].long() - 10) // 24, raw.labels)


def test_hashing_in_chunks_reads_the_whole_file(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(bytes(range(256)) * 41 + b"tail")
    whole = hashlib.md5(path.read_bytes()).hexdigest()
    for chunk in (1, 7, 256, 1 << 20):
        with pytest.raises(UserError, match=REFUSED):
            cifar10_module.read_verified(path, chunk)
    official = {**cifar10_module.BATCH_MD5, "data_batch_1": whole}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifar10_module, "BATCH_MD5", official)
        for chunk in (1, 7, 256, 1 << 20):
            assert bytes(cifar10_module.read_verified(path, chunk)) == path.read_bytes()


def test_a_truncated_batch_is_refused_by_its_checksum(tmp_path, monkeypatch):
    folder = batches_tree(tmp_path / "root")
    trust(monkeypatch, folder, NAMES)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(UserError, match=f"data_batch_3: .*{REFUSED}"):
        prepare(tiny_config(dataset="cifar10", data_dir=str(tmp_path / "root")))
