"""Metadata tables, sharding and the stage runner (no assets needed)."""

import os
import time
from pathlib import Path

import pytest

from omnivox.data.metadata import RecordWriter, load_table, merge_records, union_tables, write_table
from omnivox.data.runner import (Outcome, Task, atomic_write, in_shard, remove_stale_temps, run_per_device,
                                 run_stage, StageSummary)


def test_truncated_last_row_is_dropped_and_empty_cells_clear_within_a_folder(tmp_path):
    with RecordWriter(tmp_path, ["sha256", "done", "size", "error"]) as writer:
        writer.write({"sha256": "a", "done": False, "error": "boom"})
        writer.write({"sha256": "b", "done": True, "size": 3})
    time.sleep(0.001)
    with RecordWriter(tmp_path, ["sha256", "done", "size", "error"]) as writer:
        writer.write({"sha256": "a", "done": True, "size": 7, "error": ""})  # success clears the old error
    # A killed writer leaves a half row: it must be ignored, not parsed into garbage.
    with open(writer.path, "a", encoding="utf-8") as handle:
        handle.write("c,True,12")
    columns, table = load_table(tmp_path)
    assert columns == ["sha256", "done", "size", "error"]
    assert set(table) == {"a", "b"}
    assert table["a"] == {"sha256": "a", "done": "True", "size": "7", "error": ""}
    assert table["b"]["size"] == "3"


def test_merge_is_idempotent_and_union_fills_without_clearing(tmp_path):
    stage, other = tmp_path / "stage", tmp_path / "other"
    with RecordWriter(stage, ["sha256", "x"]) as writer:
        writer.write({"sha256": "a", "x": 1})
    assert merge_records(stage) == 1
    assert not list((stage / "new_records").glob("*.csv"))
    before = (stage / "metadata.csv").read_text()
    assert merge_records(stage) == 1
    assert (stage / "metadata.csv").read_text() == before
    write_table(other / "metadata.csv", ["sha256", "x", "y"], {"a": {"sha256": "a", "x": "", "y": "5"}})
    columns, table = union_tables([stage, other])
    assert table["a"] == {"sha256": "a", "x": "1", "y": "5"}
    with pytest.raises(ValueError, match="unknown columns"):
        RecordWriter(stage, ["sha256"]).write({"sha256": "a", "nope": 1})


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shards_cover_every_key_exactly_once(world_size):
    keys = [f"{i:064x}" for i in range(500)] + [f"folder/file_{i}.glb" for i in range(100)]
    owners = [[r for r in range(world_size) if in_shard(k, r, world_size)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    if world_size > 1:  # roughly balanced
        counts = [sum(o[0] == r for o in owners) for r in range(world_size)]
        assert min(counts) > 0.6 * len(keys) / world_size
    with pytest.raises(ValueError, match="rank"):
        in_shard("a", world_size, world_size)


def test_atomic_write_leaves_nothing_on_failure_and_stale_temps_are_removed_per_rank(tmp_path):
    target = tmp_path / "out.bin"

    def failing(temp: Path) -> None:
        temp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing, rank=3)
    assert not target.exists() and not list(tmp_path.iterdir())
    atomic_write(target, lambda temp: temp.write_bytes(b"ok"), rank=3)
    assert target.read_bytes() == b"ok"
    (tmp_path / ".a.vxz.r3.tmp").write_bytes(b"x")
    (tmp_path / ".b.vxz.r4.tmp").write_bytes(b"x")  # another rank's file in progress
    (tmp_path / ".c.r3.tmp").mkdir()
    assert remove_stale_temps([tmp_path], rank=3) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.vxz.r4.tmp", "out.bin"]


# Module-level so spawned workers can import them.
def square_or_die(task: Task) -> Outcome:
    if task.key == "crash":
        os._exit(3)  # a worker killed by the OS (e.g. out of memory) reports nothing
    if task.key == "bad":
        raise ValueError("bad input")
    return Outcome(task.key, rows={"s": {"sha256": task.key, "value": task.payload["n"] ** 2}})


def test_pool_records_failures_survives_a_dying_worker_and_keeps_going(tmp_path):
    tasks = [Task(str(i), {"n": i}) for i in range(6)] + [Task("bad", {"n": 0}), Task("crash", {"n": 0})]
    writers = {"s": RecordWriter(tmp_path, ["sha256", "value", "error"])}

    def failure_rows(task, error):
        return {"s": {"sha256": task.key, "error": error}}

    # fork keeps the three pool starts (first, after each death) cheap; production uses spawn.
    summary = run_stage(tasks, square_or_die, writers, failure_rows, workers=2, progress=False, mp_context="fork")
    assert (summary.done, summary.failed) == (6, 2)
    _, table = load_table(tmp_path)
    assert {k: table[k]["value"] for k in map(str, range(6))} == {str(i): str(i * i) for i in range(6)}
    assert table["bad"]["error"] == "ValueError: bad input"
    assert "worker process died" in table["crash"]["error"]


def count_items(items, devices, device_slot):
    from omnivox.data.runner import StageSummary, in_shard

    mine = [k for k in items if in_shard(k, *device_slot, salt="device")]
    return StageSummary(total=len(mine), done=len(mine))


def test_per_device_processes_split_the_shard():
    items = [str(i) for i in range(50)]
    summary = run_per_device(count_items, {"items": items}, ["cpu", "cpu"], mp_context="fork")
    assert isinstance(summary, StageSummary)
    assert summary.total == summary.done == 50


def test_device_processes_of_one_rank_have_their_own_temp_names(tmp_path):
    from omnivox.data.runner import temp_tag

    assert temp_tag(2) == "2" and temp_tag(2, (1, 4)) == "2d1"
    (tmp_path / ".a.npz.r2d0.tmp").write_bytes(b"x")
    (tmp_path / ".b.npz.r2d1.tmp").write_bytes(b"x")  # the other device process, still writing
    assert remove_stale_temps([tmp_path], temp_tag(2, (0, 2))) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".b.npz.r2d1.tmp"]


def test_newer_records_win_whatever_their_rank(tmp_path):
    with RecordWriter(tmp_path, ["sha256", "done"], rank=1) as old:  # e.g. an earlier run with 2 ranks
        old.write({"sha256": "a", "done": False})
    time.sleep(0.001)
    with RecordWriter(tmp_path, ["sha256", "done"], rank=0) as new:  # a later single-rank run
        new.write({"sha256": "a", "done": True})
    assert old.path.name > new.path.name  # by name the old file would come last
    assert load_table(tmp_path)[1]["a"]["done"] == "True"
