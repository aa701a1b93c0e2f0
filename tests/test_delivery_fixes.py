"""Delivery defects from the hostile review, each against the real Pushgateway in a process of
its own: who deletes a group at exit after a fork, multiprocess mode turned on after
``import instrument``, and one group per host in multiprocess mode with ``instance=True``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .servers import Pushgateway
from .test_push import ROOT, analyses


def run_script(
    path: Path, code: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path.write_text(textwrap.dedent(code))
    environment = {**os.environ, **(env or {})}
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        if env is None or name not in env:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=environment,
    )


def job_groups(gateway: Pushgateway, job: str) -> list[dict[str, str]]:
    """The grouping labels of every group of ``job`` the gateway holds."""
    return [g["labels"] for g in gateway.groups() if g["labels"].get("job") == job]


# -- rev-delivery 7: only the owner of a group deletes it at exit -------------------------------

FORKED_CHILD = """
import json, multiprocessing, os, urllib.request
from instrument import Instrumentation

inst = Instrumentation(
    pushgateway={gateway!r}, job={job!r}, push_interval=60, delete_on_exit=True,
    instance={instance!r},
)

@inst.monitored_analysis("m", "t")
def work(i):
    return i

def child():
    work(2)  # returning ends the child normally: its final flush runs

def groups():
    with urllib.request.urlopen({gateway!r} + "/api/v1/metrics") as answer:
        data = json.load(answer)["data"]
    return sorted(
        sorted(g["labels"].items()) for g in data if g["labels"].get("job") == {job!r}
    )

if __name__ == "__main__":
    work(1)
    assert inst.push()
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=child)
    p.start()
    p.join()
    assert p.exitcode == 0, p.exitcode
    print(json.dumps({{"after_child": groups(), "parent": os.getpid(), "child": p.pid}}))
"""


@pytest.mark.parametrize("instance", [False, "shared-name"])
def test_a_forked_child_sharing_the_group_never_deletes_it(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path, instance: bool | str
) -> None:
    code = FORKED_CHILD.format(gateway=pushgateway.url, job=job_name, instance=instance)
    result = run_script(tmp_path / "fork_delete.py", code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    # The child pushed its final state into the shared group but left it in place...
    assert len(seen["after_child"]) == 1, seen
    # ...and the owner, at its own exit, delivered and then deleted it.
    assert job_groups(pushgateway, job_name) == []


def test_a_forked_child_with_a_group_of_its_own_deletes_only_that_one(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path
) -> None:
    code = FORKED_CHILD.format(gateway=pushgateway.url, job=job_name, instance=True)
    result = run_script(tmp_path / "fork_delete_own.py", code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    instances = [dict(labels)["instance"] for labels in seen["after_child"]]
    # The child's own group (its pid) is gone, the parent's is still there at that point.
    assert len(instances) == 1, seen
    assert instances[0].endswith(f"-{seen['parent']}")
    assert job_groups(pushgateway, job_name) == []


# -- rev-delivery 8/13: multiprocess mode turned on after `import instrument` -------------------

LATE_MULTIPROC = """
import os, sys
import instrument
from instrument.delivery import register_before_snapshot
from prometheus_client import generate_latest

os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]  # (again) after the import
inst = instrument.configure(pushgateway={gateway!r}, job={job!r}, push_interval=60)

@instrument.monitored_analysis("m", "t")
def work(i):
    return i

for i in range(5):
    work(i)
assert any(name.endswith(".db") for name in os.listdir(sys.argv[1])), "nothing in the directory"

hooks = []
register_before_snapshot(lambda: hooks.append("ran"))
scraped = generate_latest(inst.collect_registry()).decode()
assert hooks, "a scrape across processes skipped the before-collect hook"
line = 'codomyrmex_analyses_total{{analysis_type="t",module="m",status="success"}} 5.0'
assert line in scraped, scraped
inst.close()
"""


@pytest.mark.parametrize("set_before_import", [False, True])
def test_multiproc_dir_set_after_import_still_pushes_and_scrapes(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path, set_before_import: bool
) -> None:
    # Set before the import too: the scrape across processes must still run the hook.
    shared = tmp_path / "multiproc"
    shared.mkdir()
    code = LATE_MULTIPROC.format(gateway=pushgateway.url, job=job_name)
    path = tmp_path / "late.py"
    path.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(path), str(shared)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if "multiproc" not in k.lower()},
            **({"PROMETHEUS_MULTIPROC_DIR": str(shared)} if set_before_import else {}),
        },
    )
    assert result.returncode == 0, result.stderr
    assert analyses(pushgateway, job=job_name) == 5


# -- rev-delivery 6: multiprocess mode with instance=True counts each call once ----------------

MULTIPROCESS_OWNERS = """
import multiprocessing
from instrument import Instrumentation

def owner(gateway, job, calls):
    # Each worker configures its own instrumentation (a server without preload): each owns
    # a pusher, and each collects the whole directory.
    inst = Instrumentation(pushgateway=gateway, job=job, push_interval=60, instance=True)

    @inst.monitored_analysis("m", "t")
    def work(i):
        return i

    for i in range(calls):
        work(i)
    inst.close()

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    for calls in (100, 150):  # one after the other: the second's final push sees both
        p = ctx.Process(target=owner, args=({gateway!r}, {job!r}, calls))
        p.start()
        p.join()
        assert p.exitcode == 0, p.exitcode
"""


def test_multiprocess_mode_with_instance_true_counts_each_call_once(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path
) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    code = MULTIPROCESS_OWNERS.format(gateway=pushgateway.url, job=job_name)
    result = run_script(tmp_path / "owners.py", code, {"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert result.returncode == 0, result.stderr
    # What `sum by (job) (codomyrmex_analyses_total)` over the gateway's groups shows.
    total = sum(
        value
        for name, labels, value in pushgateway.samples()
        if name == "codomyrmex_analyses_total"
        and labels.get("job") == job_name
        and labels.get("status") == "success"
    )
    assert total == 250
    groups = job_groups(pushgateway, job_name)
    assert len(groups) == 1, groups
    assert groups[0]["instance"] == os.uname().nodename
