"""Outputs on an object store (`batchrun.store.remote`): S3 as moto's server speaks it, on 127.0.0.1.

"Machines" are local mirrors under different `XDG_CACHE_HOME`s: what one run sends up, a run elsewhere
resumes from; a kill on one machine loses nothing; the lock keeps two runs apart wherever they run.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.errors import JobFileError
from batchrun.job.loader import load_job
from batchrun.store import mirror, remote, remotelock
from tests.conftest import CliResult
from tests.hostile import serving
from tests.test_hostile_servers import KEY, echo
from tests.test_shards import TIMING

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]
BUCKET = "runs"
URL = f"s3://{BUCKET}/nightly/{{job}}.parquet"


# --- URLs and mirrors -----------------------------------------------------------------------------------


def test_a_url_maps_to_one_mirror_path_and_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mirrored = mirror.mirror_of("s3://bucket/a/b/{job}.parquet")
    assert mirrored == tmp_path / "batchrun" / "remote" / "s3" / "bucket" / "a" / "b" / "{job}.parquet"
    assert mirror.url_of(mirrored) == "s3://bucket/a/b/{job}.parquet"
    assert mirror.url_of(tmp_path / "out" / "x.parquet") is None
    assert mirror.mirror_of("file:///data/out/x.parquet") == Path("/data/out/x.parquet")


@pytest.mark.parametrize(
    "url",
    [
        "s3://key:secret@bucket/x.parquet",
        "s3://bucket/x.parquet?endpoint=h",
        "s3://bucket/../x.parquet",
        "s3://b",
    ],
)
def test_a_url_with_credentials_options_or_no_file_is_refused_naming_the_key(
    tmp_path: Path, url: str
) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "in.jsonl"\n[prompt]\ntemplate = "{{{{x}}}}"\n[output]\npath = "{url}"\n'
    )
    with pytest.raises(JobFileError) as info:
        load_job(job)
    assert "[output] path" in str(info.value)
    assert "secret" not in str(info.value) or "credentials" in str(info.value)


def test_a_job_with_an_s3_output_names_the_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    job = tmp_path / "job.toml"
    job.write_text(
        'name = "n"\n[input]\npath = "in.jsonl"\n[prompt]\ntemplate = "{{x}}"\n'
        '[provider]\npreset = "emulator"\nmodel = "m"\n'
    )
    loaded = load_job(job, ["output.path=s3://bucket/x/{job}.parquet"])
    assert mirror.url_of(loaded.output_path) == "s3://bucket/x/n.parquet"
    assert loaded.output_path.is_relative_to(tmp_path / "cache")
    assert mirror.url_of(load_job(job).output_path) is None


# --- S3 -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for this module, with the bucket `runs`."""
    moto_server = pytest.importorskip(
        "moto.server", reason="the S3 tests need moto: pip install 'moto[server]'"
    )
    boto3 = pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3]:
    """The S3 server through the environment, as a user configures it; the test's own prefix is emptied."""
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "XDG_CACHE_HOME": str(tmp_path / "machine-a"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The pause that settles two runs taking the lock at once; no test here races two runs in one process.
    monkeypatch.setattr(remotelock, "LOCK_SETTLE_SECONDS", 0.05)
    store = S3(env, tmp_path)
    store.clear()
    yield store
    store.clear()


Served = tuple[EmulatorServer, Path]  # an emulator, and the test job sending to it


@pytest.fixture
def served(emulator: StartEmulator, write_job: WriteJob, reviews: Path) -> Served:
    """An emulator on 127.0.0.1 and the test job (40 reviews) pointed at it."""
    server = emulator()
    return server, write_job(server.base_url, "")


class S3:
    """The test bucket, read through pyarrow as batchrun reads it."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        import pyarrow.fs as pafs

        self.env = env
        self.tmp_path = tmp_path
        self.fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], region="us-east-1")

    def names(self, under: str = "nightly") -> list[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{BUCKET}/{under}", recursive=True, allow_not_found=True)
        return sorted(
            i.path.removeprefix(f"{BUCKET}/{under}/") for i in self.fs.get_file_info(selector) if i.is_file
        )

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{BUCKET}/nightly/{name}") as f:
            data: bytes = f.read()
        return data

    def write(self, name: str, data: bytes) -> None:
        with self.fs.open_output_stream(f"{BUCKET}/nightly/{name}") as f:
            f.write(data)

    def frame(self, name: str) -> pl.DataFrame:
        import pyarrow.parquet as pq

        return pl.from_arrow(pq.read_table(f"{BUCKET}/nightly/{name}", filesystem=self.fs))  # type: ignore[return-value]

    def clear(self) -> None:
        self.fs.delete_dir_contents(f"{BUCKET}/nightly", missing_dir_ok=True)

    def machine(self, name: str) -> dict[str, str]:
        """The environment of another machine: its own mirror folder."""
        return self.env | {"XDG_CACHE_HOME": str(self.tmp_path / name)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _requests(server: EmulatorServer) -> int:
    """Requests the emulator answered."""
    return sum(server.emulator.answered.values())


def test_a_run_sends_its_output_summary_log_and_journal_up(
    s3: S3, reviews: Path, cli: Cli, served: Served
) -> None:
    _, job = served
    result = cli("run", job, "--output", URL, "-q")
    assert result.exit_code == 0, result.stderr
    names = s3.names()
    assert {"test.parquet", "test.summary.json", "test.log"} <= set(names)
    assert any(remote.SEGMENT.fullmatch(n.removeprefix("test.parquet.run/")) for n in names)
    assert "test.parquet.run/lock.json" not in names  # released
    output = s3.frame("test.parquet")
    expected = pl.read_ndjson(reviews)
    assert output.height == 40
    assert output["status"].to_list() == ["ok"] * 40
    assert output["id"].to_list() == expected["id"].to_list()
    summary = json.loads(s3.read("test.summary.json"))
    assert summary["exit_code"] == 0
    assert summary["output"] == "s3://runs/nightly/test.parquet"
    assert f"output:  s3://{BUCKET}/nightly/test.parquet" in result.stdout


def test_a_run_on_another_machine_resumes_what_the_first_answered(s3: S3, cli: Cli, served: Served) -> None:
    server, job = served
    assert cli("run", job, "--output", URL, "--limit", "15", "-q").exit_code == 0
    assert _requests(server) == 15
    elsewhere = cli("run", job, "--output", URL, "-q", env=s3.machine("machine-b"))
    assert elsewhere.exit_code == 0, elsewhere.stderr
    assert _requests(server) == 40  # 25 more: none of the first machine's 15 again
    assert s3.frame("test.parquet")["status"].to_list() == ["ok"] * 40
    third = cli("run", job, "--output", URL, "-q", env=s3.machine("machine-c"))
    assert third.exit_code == 0
    assert _requests(server) == 40
    assert "40 answered by an earlier run" in third.stdout


def test_the_same_output_as_a_local_run_row_for_row(s3: S3, cli: Cli, tmp_path: Path, served: Served) -> None:
    _, job = served
    assert cli("run", job, "--output", URL, "-q").exit_code == 0
    assert cli("run", job, "--output", tmp_path / "local.parquet", "-q").exit_code == 0
    local = pl.read_parquet(tmp_path / "local.parquet")
    assert s3.frame("test.parquet").schema == local.schema
    assert s3.frame("test.parquet").drop(TIMING).equals(local.drop(TIMING))


def run_and_kill(s3: S3, job: Path, until: Callable[[], bool]) -> list[str]:
    """Start `batchrun run JOB` to the S3 output as its own process; SIGKILL it once `until()` (bounded)."""
    command = [sys.executable, "-m", "batchrun", "run", str(job), "--output", URL, "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(s3.env))
    try:
        deadline = time.monotonic() + 30
        while not until():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run did not get there in 30 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        process.kill()
    return command


def rerun(command: list[str], base_url: str, env: dict[str, str]) -> None:
    """Run `command` again to its end against `base_url`, in the given machine's environment."""
    done = subprocess.run(
        [*command, "--set", f"provider.base_url={base_url}"],
        check=False,
        capture_output=True,
        env=_env(env),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()


def journaled(lines: int) -> Callable[[], bool]:
    """Whether this machine's mirror journal of the test output holds `lines` results."""
    journal = mirror.mirror_of(f"s3://{BUCKET}/nightly/test.parquet.run/results.jsonl")
    return lambda: journal.is_file() and journal.read_bytes().count(b"\n") >= lines


def test_kill_9_then_a_rerun_here_sends_up_what_was_not_and_pays_nothing_twice(
    s3: S3, emulator: StartEmulator, write_job: WriteJob, reviews: Path
) -> None:
    server = emulator(hold_after=20)  # answers 20, then hangs: killed before the first push
    job = write_job(server.base_url, "")
    command = run_and_kill(s3, job, journaled(20))
    assert not [name for name in s3.names() if name.endswith(".jsonl")]
    second = emulator()
    rerun(command, second.base_url, s3.env)
    assert _requests(second) == 20  # the other 20 only
    assert not set(server.emulator.answered) & set(second.emulator.answered)
    # Another machine finds all 40 on the remote: the killed run's lines went up with the rerun.
    rerun(command, second.base_url, s3.machine("machine-b"))
    assert _requests(second) == 20


def test_the_journal_goes_up_while_the_run_lasts(
    s3: S3, emulator: StartEmulator, write_job: WriteJob, reviews: Path
) -> None:
    """A machine lost mid-run (killed, and its mirror never seen again) loses only what was not yet pushed."""
    server = emulator(hold_after=20)
    job = write_job(server.base_url, "")
    answered = journaled(20)

    def answered_and_pushed() -> bool:
        return answered() and any(name.endswith(".jsonl") for name in s3.names())

    command = run_and_kill(s3, job, answered_and_pushed)
    second = emulator()
    rerun(command, second.base_url, s3.machine("machine-b"))
    assert _requests(second) == 20  # the 20 answered before the push were not paid again


def test_a_live_lock_elsewhere_stops_the_run_before_anything_is_sent(
    s3: S3, cli: Cli, served: Served
) -> None:
    server, job = served
    holder = {"host": "worker-7", "pid": 4242, "token": "other", "heartbeat": time.time()}
    s3.write("test.parquet.run/lock.json", json.dumps(holder).encode())
    result = cli("run", job, "--output", URL, "-q")
    assert result.exit_code == 2
    assert "in use by a batchrun run on worker-7 (pid 4242)" in result.stderr
    assert _requests(server) == 0
    # A holder silent for longer than the stale time has gone: its lock is taken over.
    s3.write("test.parquet.run/lock.json", json.dumps(holder | {"heartbeat": time.time() - 600}).encode())
    assert cli("run", job, "--output", URL, "-q").exit_code == 0
    assert _requests(server) == 40


@pytest.mark.parametrize(
    "body", [b"", b"\xff\xfe garbage", b"[1, 2]", b'{"heartbeat": "soon"}', b"9" * 100_000]
)
def test_an_unreadable_lock_is_no_lock(s3: S3, cli: Cli, body: bytes, served: Served) -> None:
    _, job = served
    s3.write("test.parquet.run/lock.json", body)
    result = cli("run", job, "--output", URL, "-q", "--limit", "3")
    assert result.exit_code == 0, result.stderr


def test_fresh_forgets_the_remote_journal_too(s3: S3, cli: Cli, served: Served) -> None:
    server, job = served
    assert cli("run", job, "--output", URL, "--limit", "10", "-q").exit_code == 0
    assert cli("run", job, "--output", URL, "--limit", "5", "-q", "--fresh").exit_code == 0
    assert _requests(server) == 15
    elsewhere = cli("run", job, "--output", URL, "--limit", "10", "-q", env=s3.machine("machine-b"))
    assert elsewhere.exit_code == 0
    assert _requests(server) == 20


def test_an_unreachable_store_is_a_clear_exit_2_before_anything_is_sent(
    s3: S3, cli: Cli, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    server, job = served
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    result = cli("run", job, "--output", URL, "-q")
    assert result.exit_code == 2, result.stderr
    assert f"s3://{BUCKET}/nightly/test.parquet" in result.stderr
    assert _requests(server) == 0
    assert time.monotonic() - started < 60


def test_a_key_the_server_echoes_reaches_no_remote_file(
    s3: S3, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    with serving(echo) as server:
        job = write_job(server.base_url, "")
        job.write_text(
            job.read_text().replace('model = "qwen3-max"', 'model = "qwen3-max"\napi_key_env = "ECHO_KEY"')
        )
        result = cli("run", job, "--output", URL, "--limit", "6", env={"ECHO_KEY": KEY})
    assert result.exit_code == 1, result.stderr  # one row's 400 echoes the key too
    names = s3.names()
    assert "test.parquet" in names
    assert any(name.endswith(".jsonl") for name in names)
    written = b"".join(s3.read(name) for name in names) + str(s3.frame("test.parquet").to_dicts()).encode()
    assert b"you sent Bearer ***" in written
    assert KEY.encode() not in written


def test_an_fsspec_filesystem_works_as_pyarrow_s_own(
    emulator: StartEmulator,
    write_job: WriteJob,
    reviews: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fsspec = pytest.importorskip("fsspec", reason="the fsspec test needs fsspec: pip install fsspec")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    server = emulator()
    job = write_job(server.base_url, "")
    assert cli("run", job, "--output", "memory://bucket/out/{job}.parquet", "-q").exit_code == 0
    memory = fsspec.filesystem("memory")
    try:
        assert memory.exists("/bucket/out/test.parquet")
        assert any(
            name.endswith(".jsonl") for name in memory.ls("/bucket/out/test.parquet.run", detail=False)
        )
    finally:
        memory.rm("/bucket", recursive=True)


def _env(env: dict[str, str]) -> dict[str, Any]:
    import os

    return os.environ | env


def test_shards_on_three_machines_merge_on_a_fourth_into_the_single_runs_output(
    s3: S3, cli: Cli, served: Served
) -> None:
    """Shards of a job with its output on S3, each on its own machine, as a Kubernetes indexed job runs."""
    server, job = served
    for index in range(3):
        env = s3.machine(f"pod-{index}") | {"JOB_COMPLETION_INDEX": str(index)}
        shard = cli("run", job, "--output", URL, "--shard", "JOB_COMPLETION_INDEX/3", "-q", env=env)
        assert shard.exit_code == 0, shard.stderr
    assert _requests(server) == 40
    assert {f"test.shard-{i}-of-3.parquet" for i in range(3)} <= set(s3.names())
    merged = cli("merge", job, "--output", URL, env=s3.machine("laptop"))
    assert merged.exit_code == 0, merged.stderr
    assert "40 ok" in merged.stdout
    from_shards = s3.frame("test.parquet")
    assert cli("run", job, "--output", URL, "--fresh", "-q", env=s3.machine("laptop")).exit_code == 0
    single = s3.frame("test.parquet")
    assert from_shards.drop(TIMING).equals(single.drop(TIMING))


def test_merge_waits_for_a_shard_still_running_elsewhere(s3: S3, cli: Cli, served: Served) -> None:
    _, job = served
    for index in range(2):
        assert cli("run", job, "--output", URL, "--shard", f"{index}/2", "-q").exit_code == 0
    holder = {"host": "pod-1", "pid": 7, "token": "x", "heartbeat": time.time()}
    s3.write("test.shard-1-of-2.parquet.run/lock.json", json.dumps(holder).encode())
    merged = cli("merge", job, "--output", URL, env=s3.machine("laptop"))
    assert merged.exit_code == 2
    assert "test.shard-1-of-2.parquet is still being written by a run on pod-1 (pid 7)" in merged.stderr


def test_status_on_another_machine_counts_what_every_machine_sent_up(
    s3: S3, cli: Cli, served: Served
) -> None:
    _, job = served
    assert cli("run", job, "--output", URL, "--limit", "25", "-q").exit_code == 0
    status = cli("status", job, "--output", URL, "--json", env=s3.machine("laptop"))
    assert status.exit_code == 0, status.stderr
    found = json.loads(status.stdout)
    assert (found["ok"], found["output"]) == (25, f"s3://{BUCKET}/nightly/test.parquet")
    assert found["last_run"]["exit_code"] == 0


def test_fresh_with_a_bad_input_forgets_nothing(s3: S3, reviews: Path, cli: Cli, served: Served) -> None:
    """--fresh empties the remote journal only once the input is checked and the run goes on."""
    server, job = served
    assert cli("run", job, "--output", URL, "--limit", "10", "-q").exit_code == 0
    good = reviews.read_bytes()
    reviews.write_bytes(good + b'{"id": "broken", "title": \n')
    refused = cli("run", job, "--output", URL, "--fresh", "-q")
    assert refused.exit_code == 2, refused.stderr
    reviews.write_bytes(good)
    elsewhere = cli("run", job, "--output", URL, "--limit", "10", "-q", env=s3.machine("machine-b"))
    assert elsewhere.exit_code == 0
    assert _requests(server) == 10  # the first run's 10 are still on the store


def test_a_batch_api_job_with_an_object_store_output_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The batch records are not kept in step with the store: a rerun elsewhere could pay twice."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    job = tmp_path / "job.toml"
    job.write_text(
        '[input]\npath = "in.jsonl"\n[prompt]\ntemplate = "{{x}}"\n[provider]\npreset = "emulator"\n'
        'model = "m"\n[batch]\nenabled = true\n[output]\npath = "s3://bucket/x.parquet"\n'
    )
    with pytest.raises(JobFileError) as info:
        load_job(job)
    assert "[batch] enabled" in str(info.value)
    assert "[output] path" in str(info.value)


def test_a_host_name_any_characters_is_resumed_from(
    s3: S3, cli: Cli, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    server, job = served
    real_name = socket.gethostname
    monkeypatch.setattr(socket, "gethostname", lambda: "build_agent 3/ü")
    assert cli("run", job, "--output", URL, "--limit", "10", "-q").exit_code == 0
    monkeypatch.setattr(socket, "gethostname", real_name)
    elsewhere = cli("run", job, "--output", URL, "--limit", "10", "-q", env=s3.machine("machine-b"))
    assert elsewhere.exit_code == 0
    assert _requests(server) == 10


def test_an_old_retryable_error_sent_up_late_does_not_undo_an_answer(
    s3: S3, cli: Cli, served: Served
) -> None:
    """Machine A journals a row's 503 and is killed before its push; B answers the row; A's rerun sends the
    old 503 up after B's answer. Neither A nor a new machine pays for the row again."""
    server, job = served
    assert cli("run", job, "--output", URL, "--limit", "10", "-q", env=s3.machine("machine-b")).exit_code == 0
    answered = s3.frame("test.parquet")["custom_id"].to_list()[0]
    stale = mirror.mirror_of(f"s3://{BUCKET}/nightly/test.parquet.run/results.jsonl")  # machine A's mirror
    stale.parent.mkdir(parents=True)
    line = {"custom_id": answered, "status": "error", "error_type": "server_error", "retryable": True}
    stale.write_text(json.dumps(line) + "\n")
    assert cli("run", job, "--output", URL, "--limit", "10", "-q").exit_code == 0
    assert _requests(server) == 10
    assert cli("run", job, "--output", URL, "--limit", "10", "-q", env=s3.machine("machine-c")).exit_code == 0
    assert _requests(server) == 10


def test_fresh_on_one_machine_makes_every_other_mirror_drop_its_copy(
    s3: S3, cli: Cli, served: Served
) -> None:
    server, job = served
    other = s3.machine("machine-b")
    assert cli("run", job, "--output", URL, "--limit", "10", "-q").exit_code == 0
    assert cli("run", job, "--output", URL, "--limit", "10", "-q", env=other).exit_code == 0  # B's copy: 10
    assert _requests(server) == 10
    assert cli("run", job, "--output", URL, "--limit", "5", "-q", "--fresh").exit_code == 0
    assert _requests(server) == 15
    again = cli("run", job, "--output", URL, "--limit", "10", "-q", env=other)
    assert again.exit_code == 0
    assert _requests(server) == 20  # B kept only the 5 answered since the --fresh
    assert "started afresh" in again.stderr


def test_a_run_silent_too_long_leaves_the_lock_to_the_run_that_took_it(s3: S3) -> None:
    output = mirror.mirror_of(f"s3://{BUCKET}/nightly/test.parquet")
    first = remote.Remote(output, mirror.url_of(output) or "").lock
    first.take()
    second = remote.Remote(output, first.url).lock
    s3.write("test.parquet.run/lock.json", json.dumps({"token": "x", "heartbeat": 0}).encode())  # stale
    second.take()
    first.refresh()  # back, after the other took over: it must not overwrite the other's lock
    holder = second.holder()
    assert holder is not None
    assert holder["token"] == second.token
