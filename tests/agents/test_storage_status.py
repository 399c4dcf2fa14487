"""`emrshare storage status`: merging the storage nodes' status files; the embedded swarm runs reconcilers."""

from __future__ import annotations

import json

import pytest
import trio

from agents.cli.storage import StatusError, read_status, render, status_main
from agents.patient import PatientAgent
from agents.storage.reconcile import STATUS_FILE
from agents.swarm import Swarm, SwarmFiles, SwarmSpec
from agents.testing.consortium import swarm_user_config


def _record(cid, held, verified=True, owner="alice", rid="rec-1", height=3):
    return {"cid": cid, "owner": owner, "record_id": rid, "size": 10, "height": height,
            "placement": ["storage-1", "storage-2", "storage-3"], "held": held, "verified": verified}


def _node(records, **kw):
    return {"node": "x", "replicas": 3, "records": records, "pending": [], "active": [], "unnamed": [],
            "rounds": 4, "pulled": 0, "pull_failures": 0, "collected": 0, "quarantined": 0, "time": 1_780_000_000.0,
            "interval": 30.0, "grace": 900.0, "height": 7, "partial_uploads": 0, **kw}


def test_status_merges_the_nodes_files(tmp_path, capsys):
    files = SwarmFiles(tmp_path / "swarm")
    files.create(SwarmSpec(data_dir=files.dir))
    views = {
        "storage-1": _node([_record("bafyA", True), _record("bafyB", True, rid="rec-2", height=4)]),
        "storage-2": _node([_record("bafyA", True), _record("bafyB", False, rid="rec-2", height=4)],
                           pending=["bafyB"]),
        "storage-3": None,  # no status file yet (not started, or wiped)
    }
    for node, view in views.items():
        if view is not None:
            files.agent_dir(node).mkdir(parents=True)
            (files.agent_dir(node) / STATUS_FILE).write_text(json.dumps(view))
    status = read_status(files.dir)
    assert [(r["cid"], r["holders"]) for r in status.records] == [
        ("bafyA", ["storage-1", "storage-2"]), ("bafyB", ["storage-1"])]
    assert not status.complete and status.nodes["storage-3"] is None
    text = render(status, now=1_780_000_010.0)
    assert "2026-05-28" in text and "(10s ago)" in text
    assert "bafyA" in text and "2/3" in text and "1/3" in text
    assert "storage-3    no status yet" in text
    assert "2 records, 2 with fewer than r=3 verified copies" in text
    assert status_main(["--swarm", str(files.dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["complete"] is False and shown["nodes"]["storage-2"]["pending"] == 1
    assert shown["records"][1]["holders"] == ["storage-1"]
    # all three verified: complete
    (files.agent_dir("storage-3")).mkdir(parents=True)
    (files.agent_dir("storage-3") / STATUS_FILE).write_text(json.dumps(_node([_record("bafyA", True),
                                                                              _record("bafyB", True, rid="rec-2")])))
    (files.agent_dir("storage-2") / STATUS_FILE).write_text(json.dumps(_node([_record("bafyA", True),
                                                                              _record("bafyB", True, rid="rec-2")])))
    assert read_status(files.dir).complete


def test_status_of_a_missing_swarm_is_one_clear_error(tmp_path):
    with pytest.raises(StatusError) as err:
        read_status(tmp_path / "nowhere")
    message = str(err.value)
    assert message.startswith("no swarm at") and "emrshare swarm up" in message  # the CLI names the command
    assert "\n" not in message


@pytest.mark.slow
async def test_the_embedded_swarm_runs_a_reconciler_on_every_storage_node(tmp_path):
    spec = SwarmSpec(data_dir=tmp_path / "swarm", reconcile_interval=0.5)
    with trio.fail_after(120):
        async with Swarm.open(spec, fresh=True) as swarm:
            async with PatientAgent.open(swarm_user_config(swarm, "alice", "hospital-a", {"role": "patient"}),
                                         node=swarm.node) as p:
                await p.register(swarm.token("alice", "hospital-a", {"role": "patient"}, p.enroll_id))
                await p.store(b"a small record", label="notes", media_type="text/plain", record_id="rec-1")
            while not (read_status(swarm.files.dir).records and read_status(swarm.files.dir).complete):
                await trio.sleep(0.1)
            [rec] = read_status(swarm.files.dir).records
            assert rec["record_id"] == "rec-1" and rec["holders"] == swarm.manifest.storage
