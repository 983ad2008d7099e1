"""Outputs on an object store: `[output] path = "s3://bucket/runs/{job}.parquet"` (any pyarrow or fsspec URL).

A run works on a local mirror of the output's folder (`batchrun.store.mirror`:
`~/.cache/batchrun/remote/s3/bucket/runs/`, under `$XDG_CACHE_HOME` when set), where everything a run does
with files stays as it is for a local output, and keeps the remote in step with it:

- The journal goes up in segments. Every `PUSH_SECONDS` the lines appended since the last push become one
  new object `x.parquet.run/results-<generation>-<ms>-<host>-<pid>-<n>.jsonl`: an object store cannot
  append, and an object is never rewritten, so what went up stays whole whatever happens to this machine.
- A run starting anywhere first sends up what its own mirror holds and the remote lacks (a run killed
  here), then downloads the segments its mirror lacks: it resumes what any machine answered. Lines of
  several machines meet in one journal out of time order, so a row's final line counts over any line a
  rerun retries (`journal.latest_rank`), wherever each is; a line twice is harmless.
- `--fresh` writes a new `generation`: segments of another are no machine's journal any more, and a
  mirror of an older generation drops its copy before it sends or takes anything.
- The output, its summary and log are uploaded when the run ends or stops (an object appears whole).
- `x.parquet.run/lock.json` names the run using the folder (`batchrun.store.remotelock`); a run finding
  another's alive exits 2, as a second run on one machine does.

What a kill costs: on the same machine nothing (the mirror keeps every line; the next run sends it up);
with the machine lost, the answers of its last `PUSH_SECONDS`, which a rerun elsewhere sends again.

Credentials and endpoints come from the environment as the filesystem reads them (for S3:
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`), never from the URL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun.errors import BatchrunError, StopRun, UsageError
from batchrun.redact import first_line
from batchrun.store.mirror import open_filesystem, read_small, url_of
from batchrun.store.remotelock import LOCK_REFRESH_SECONDS, StoreLock

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["Remote", "mirrored", "refreshed"]

PUSH_SECONDS = 5.0
SEGMENT_MAX_BYTES = 64 << 20  # a long pause's backlog goes up as several objects, never read whole
COPY_BYTES = 8 << 20
GENERATION = "generation"  # the journal's generation on the remote: a new one at every --fresh
GENESIS = "00000000"  # the generation of a journal no --fresh has replaced
STATE = "remote.json"  # in the mirror's run folder: what the remote already holds of the journal
SEGMENT = re.compile(r"results-[0-9a-f]{8}-\d{13}-[A-Za-z0-9.-]{1,40}-\d+-\d{6}\.jsonl")

log = logging.getLogger("batchrun")


@dataclass
class _State:
    """What the remote holds of the mirror's journal: bytes up to `pushed`, and the segments in it, of the
    journal's `generation` (a new one at every `--fresh`)."""

    pushed: int = 0
    segments: list[str] = field(default_factory=list)
    generation: str | None = None


class Remote:
    """The remote side of one mirrored output: its journal segments, lock and files."""

    def __init__(self, output: Path, url: str, at: tuple[pafs.FileSystem, str] | None = None) -> None:
        """`output` is the mirror path of `url`; `at`: its filesystem and path there, when known already."""
        from batchrun.store.runstore import JOURNAL, run_folder

        self.output = output
        self.url = url
        self.fs, self.path = at or open_filesystem(url)
        self.folder = f"{self.path}.run"
        self.local_folder = run_folder(output)
        self.journal = self.local_folder / JOURNAL
        self.lock = StoreLock(self.fs, self.folder, url)
        self.host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
        self._sequence = 0
        self._state = _State()
        self._push_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._uploaded: dict[Path, int] = {}
        self._failing = False

    # --- the run's side -------------------------------------------------------------------------------

    def start(self, *, fresh: bool) -> None:
        """Take the lock, bring the mirror's journal up to date with the remote, and start pushing.

        UsageError (exit 2, nothing sent) when the store is out of reach or refuses us.
        """
        self.lock.take()
        try:
            self.local_folder.mkdir(parents=True, exist_ok=True)
            self._state = self._read_state()
            if fresh:  # nothing goes up or down until the run store forgets the journal (`forget`)
                self._state = _State(self._journal_size(), generation=self._state.generation)
            else:
                self._catch_up()
        except Exception as exc:
            self._try(self.lock.release)
            raise UsageError(f"cannot use {self.url}: {first_line(exc, 300)}. Nothing was sent.") from None
        self._uploaded = {path: _mtime(path) for path in self._files()}
        self._thread = threading.Thread(target=self._keep_pushing, name="batchrun-remote", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Stop pushing; send up the journal's last lines, then the output, summary and log that changed;
        release the lock. StopRun (exit 3) when the remote cannot take them: nothing is lost, and a rerun
        sends them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.push()
            self.send_beside(*(p for p in self._files() if _mtime(p) != self._uploaded.get(p)))
        except Exception as exc:
            raise StopRun(
                f"cannot send the run's files to {self.url}: {first_line(exc, 300)}\nEvery answer is kept in "
                f"{self.local_folder}; rerun the same command on this machine to send them."
            ) from None
        self._try(self.lock.release)  # a lock left behind goes stale; the files are up

    def _catch_up(self) -> None:
        """Drop a mirror of a journal `--fresh` replaced elsewhere; then send up what only this mirror
        holds (a run killed here), and take what only the remote holds."""
        generation = self._generation()
        if self._state.generation not in (None, generation):
            log.warning("%s was started afresh (--fresh) elsewhere: this machine's copy is dropped", self.url)
            self.journal.unlink(missing_ok=True)
            self._state = _State()
        self._state.generation = generation
        self.push()
        self.pull()

    def _files(self) -> list[Path]:
        from batchrun.report.runlog import log_path
        from batchrun.report.summary import summary_path

        return [self.output, summary_path(self.output), log_path(self.output)]

    def _keep_pushing(self) -> None:
        refreshed = time.monotonic()
        while not self._stop.wait(PUSH_SECONDS):
            try:
                self.push()
                if time.monotonic() - refreshed >= LOCK_REFRESH_SECONDS:
                    self.lock.refresh()
                    refreshed = time.monotonic()
                if self._failing:
                    log.warning("%s: reachable again; the journal is sent up", self.url)
                self._failing = False
            except Exception as exc:  # any filesystem's error: the mirror keeps every line, and the next
                if not self._failing:  # push sends them
                    log.warning(
                        "%s: cannot send the journal up (%s); will try again", self.url, first_line(exc, 300)
                    )
                self._failing = True

    @staticmethod
    def _try(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            log.debug("remote: %r failed: %s", action, first_line(exc, 300))

    # --- the journal ----------------------------------------------------------------------------------

    def push(self) -> None:
        """Send the journal's complete lines not yet on the remote, as new segment objects."""
        with self._push_lock:
            if not self.journal.is_file():
                return
            with self.journal.open("rb") as f:
                while True:
                    f.seek(self._state.pushed)
                    data = f.read(SEGMENT_MAX_BYTES)
                    while b"\n" not in data and len(data) % SEGMENT_MAX_BYTES == 0 and data:
                        data += f.read(SEGMENT_MAX_BYTES)  # one line longer than a segment: never split
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:
                        return
                    self._sequence += 1
                    millis = time.time_ns() // 1_000_000
                    name = (
                        f"results-{self._state.generation or GENESIS}-{millis:013d}-{self.host}-"
                        f"{os.getpid()}-{self._sequence:06d}.jsonl"
                    )
                    self._write(f"{self.folder}/{name}", data[:cut])
                    self._state.pushed += cut
                    self._state.segments.append(name)
                    self._save_state()

    def pull(self) -> None:
        """Append to the mirror's journal the remote's segments it does not hold, oldest first.

        Lines may arrive twice (a kill between a segment's upload and the state's save): harmless, as a
        row's final line counts over a retryable one wherever it is (`journal.latest_rank`).
        """
        from batchrun.store.runstore import drop_partial_line

        known = set(self._state.segments)
        new = [name for name in self.segment_names() if name not in known]
        if not new:
            return
        drop_partial_line(self.journal)
        all_pushed = self._state.pushed == self._journal_size()
        with self.journal.open("ab") as out:
            for name in new:
                if self._copy_into(f"{self.folder}/{name}", out) not in (b"", b"\n"):
                    out.write(b"\n")  # a segment not ending a line (not ours): its last line stays apart
            out.flush()
            os.fsync(out.fileno())
        self._state.segments += new
        if all_pushed:  # else the next push sends this machine's unsent lines, and these again (harmless)
            self._state.pushed = self.journal.stat().st_size
        self._save_state()
        log.info("%s: %d journal segments taken from the remote", self.url, len(new))

    def segment_names(self) -> list[str]:
        """The remote's journal segments of the current generation, oldest first."""
        prefix = f"results-{self._state.generation or GENESIS}-"
        return sorted(name for name in self._all_segments() if name.startswith(prefix))

    def _all_segments(self) -> list[str]:
        return [name for name in self._file_names(self.folder) if SEGMENT.fullmatch(name)]

    def _file_names(self, folder: str) -> list[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(folder, allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector) if info.is_file]

    def forget(self) -> None:
        """`--fresh`, once the run store has emptied the mirror's journal (the input checked, the run on):
        start a new generation of the journal on the remote, so that no machine resumes from the old one
        (a mirror elsewhere drops its copy), then delete the old segments."""
        with self._push_lock:
            generation = uuid.uuid4().hex[:8]
            try:
                self._write(f"{self.folder}/{GENERATION}", generation.encode())
            except Exception as exc:  # any filesystem's error; the run has sent nothing yet
                raise UsageError(
                    f"cannot start {self.url} afresh: {first_line(exc, 300)}. Nothing was sent; its journal "
                    "is as it was."
                ) from None
            self._state = _State(generation=generation)
            self._save_state()
            for name in self._all_segments():
                if not name.startswith(f"results-{generation}-"):
                    self._try(partial(self.fs.delete_file, f"{self.folder}/{name}"))

    def _generation(self) -> str:
        """The remote journal's generation (`GENESIS` until a `--fresh`)."""
        data = read_small(self.fs, f"{self.folder}/{GENERATION}", 64)
        text = (data or b"").decode("ascii", "replace").strip()
        return text if re.fullmatch(r"[0-9a-f]{8}", text) else GENESIS

    def _journal_size(self) -> int:
        return self.journal.stat().st_size if self.journal.is_file() else 0

    def _read_state(self) -> _State:
        from batchrun.store.runstore import drop_partial_line

        drop_partial_line(self.journal)
        size = self._journal_size()
        try:
            raw = json.loads((self.local_folder / STATE).read_text(encoding="utf-8"))
            generation = raw.get("generation")
            state = _State(
                int(raw["pushed"]),
                [str(name) for name in raw["segments"]],
                generation if isinstance(generation, str) else None,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # No record: the whole mirror journal goes up again (duplicate lines are harmless).
            return _State()
        if state.pushed > size:  # the mirror's journal was cut or lost: send it all, take the remote's again
            return _State(generation=state.generation)
        return state

    def _save_state(self) -> None:
        path = self.local_folder / STATE
        tmp = path.with_name(path.name + ".tmp")
        state = self._state
        tmp.write_text(
            json.dumps({"pushed": state.pushed, "segments": state.segments, "generation": state.generation})
        )
        os.replace(tmp, path)

    # --- for readers (status, estimate, merge) -------------------------------------------------------

    def refresh(self) -> None:
        """Bring the mirror up to date for a command that reads it: the remote's journal segments and the
        summary. The caller holds the mirror's local lock (no run here is writing it)."""
        from batchrun.report.summary import summary_path

        self.local_folder.mkdir(parents=True, exist_ok=True)
        self._state = self._read_state()
        self._catch_up()
        summary = summary_path(self.output)
        self.download(f"{_parent(self.path)}/{summary.name}", summary)

    def sibling(self, name: str) -> Remote:
        """The remote of another output in this one's folder (a shard's), on the same filesystem."""
        output = self.output.with_name(name)
        return Remote(output, url_of(output) or "", (self.fs, f"{_parent(self.path)}/{name}"))

    def names_beside(self) -> list[str]:
        """The names of the files in the output's folder on the remote."""
        return self._file_names(_parent(self.path))

    # --- files ----------------------------------------------------------------------------------------

    def upload(self, local: Path, remote: str) -> None:
        """Copy a local file to the remote path (an object store publishes it whole, or not at all)."""
        if not local.is_file():
            return
        with local.open("rb") as src, self.fs.open_output_stream(remote) as out:
            while chunk := src.read(COPY_BYTES):
                out.write(chunk)

    def send_beside(self, *files: Path) -> None:
        """Upload files of the mirror's folder to the output's folder on the remote, under their names."""
        for local in files:
            self.upload(local, f"{_parent(self.path)}/{local.name}")

    def download(self, remote: str, local: Path) -> bool:
        """Copy a remote file to `local` (through a temporary file) unless the local copy is as new or
        newer (a file this machine could not send up yet); False when there is none, or it was kept."""
        info = self.fs.get_file_info(remote)
        if not info.is_file:
            return False
        if info.mtime is not None and _mtime(local) >= info.mtime.timestamp() * 1e9:
            return False
        tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tmp.open("wb") as out:
                self._copy_into(remote, out)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _copy_into(self, remote: str, out: Any) -> bytes:
        """Copy a remote file's bytes to the open file `out`; return the last byte (b"" for none)."""
        last = b""
        with self.fs.open_input_stream(remote) as f:
            while chunk := f.read(COPY_BYTES):
                out.write(chunk)
                last = chunk[-1:]
        return last

    def _write(self, remote: str, data: bytes) -> None:
        with self.fs.open_output_stream(remote) as out:
            out.write(data)


def refreshed(output: Path) -> None:
    """Bring the mirror of a remote `output` up to date before a command reads it (`status`, `estimate`);
    nothing for a local output, or while a run on this machine holds the mirror (it is the newest)."""
    from batchrun.store.runstore import run_lock

    url = url_of(output)
    if url is None:
        return
    with ExitStack() as held:
        try:
            held.enter_context(run_lock(output))
        except UsageError:
            return  # a run here holds it
        try:
            Remote(output, url).refresh()
        except BatchrunError:
            raise
        except Exception as exc:  # any filesystem's error
            raise UsageError(f"cannot read {url}: {first_line(exc, 300)}") from None


@contextmanager
def mirrored(output: Path, *, fresh: bool = False) -> Iterator[Remote | None]:
    """Keep the remote of `output` (a mirror path) in step while the block runs; nothing for a local one.

    The caller holds the mirror's local lock. On leaving, the journal's last lines and the output's files
    are sent up even when the block raised (an interrupted run's answers were paid for).
    """
    url = url_of(output)
    if url is None:
        yield None
        return
    remote = Remote(output, url)
    remote.start(fresh=fresh)
    try:
        yield remote
    except BaseException:
        try:
            remote.finish()
        except Exception as exc:  # the block's own error says more; this one goes to the log
            log.warning("%s", exc)
        raise
    remote.finish()


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
