"""Where an output on an object store is mirrored: `s3://bucket/runs/x.parquet` <-> a local path.

`[output] path` may be a URL (`batchrun.store.remote` keeps the store in step with the mirror). The job
file's loader turns it into the path of its local mirror (`mirror_of`), which stands for the URL wherever
the job's output path is used: the run folder, shards, sweeps and summaries work on it as on any local
output, and `url_of` gives the URL back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from batchrun.errors import UsageError
from batchrun.redact import first_line

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = [
    "is_url",
    "mirror_of",
    "mirror_root",
    "missing",
    "open_filesystem",
    "read_small",
    "shown",
    "url_of",
]

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)


def is_url(text: str) -> bool:
    """Whether an output path names a remote filesystem (`scheme://...`) rather than a local path."""
    return _URL.fullmatch(text) is not None


def mirror_root() -> Path:
    """Where remote outputs are mirrored: `$XDG_CACHE_HOME/batchrun/remote` (`~/.cache` without it)."""
    from batchrun.job.schema import default_cache_dir  # here: the job's schema imports this module

    return default_cache_dir() / "remote"


def mirror_of(url: str) -> Path:
    """The mirror path of an output URL: `s3://bucket/runs/x.parquet` -> `<root>/s3/bucket/runs/x.parquet`.

    `file://` URLs are local paths. ValueError (naming what to change) for a URL batchrun cannot mirror
    one to one: credentials, a query or a fragment in it, or `.` / `..` parts.
    """
    match = _URL.fullmatch(url)
    if match is None:
        raise ValueError(f"{url!r} is not a URL")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        return Path("/" + rest.lstrip("/"))
    if any(mark in rest for mark in "?#@"):
        raise ValueError(
            "an output URL takes no credentials, query or fragment: give them to the filesystem through "
            "the environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)"
        )
    parts = [part for part in rest.split("/") if part]
    if len(parts) < 2 or any(part in (".", "..") for part in parts):
        raise ValueError("an output URL needs a bucket (or host) and a file name, and no '.' or '..' parts")
    return mirror_root().joinpath(scheme, *parts)


def url_of(path: Path) -> str | None:
    """The URL a mirror path stands for (see `mirror_of`); None for a local output."""
    try:
        scheme, *parts = path.relative_to(mirror_root()).parts
    except ValueError:
        return None
    return f"{scheme}://{'/'.join(parts)}" if parts else None


def shown(path: Path) -> str:
    """How an output is named to a person and in summaries: its URL when it is a mirror, else its path."""
    return url_of(path) or str(path)


def open_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `url` and the path of its object there: pyarrow's (s3, gs, hdfs, abfs), else
    fsspec's when it and the scheme's package are installed. UsageError (exit 2) naming what to install."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        found: tuple[pafs.FileSystem, str] = pafs.FileSystem.from_uri(url)
        return found
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass  # a scheme pyarrow does not have
    except OSError as exc:
        raise UsageError(f"cannot reach {url}: {first_line(exc, 300)}") from None
    scheme = url.partition("://")[0]
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise UsageError(
            f"{url}: pyarrow has no {scheme}:// filesystem, and fsspec's needs a package not installed "
            f"({exc.name or 'fsspec'}): pip install fsspec and the {scheme} package it names"
        ) from None
    except (ValueError, OSError) as exc:
        raise UsageError(f"{url}: {first_line(exc, 300)}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_small(fs: pafs.FileSystem, path: str, limit: int) -> bytes | None:
    """The first `limit` bytes of a small object (a lock, a generation); None when there is none."""
    try:
        with fs.open_input_stream(path) as f:
            data: bytes = f.read(limit)
            return data
    except FileNotFoundError:
        return None
    except OSError as exc:
        if missing(exc):
            return None
        raise


def missing(exc: BaseException) -> bool:
    """Whether a filesystem error means "no such file" (pyarrow's S3 says so in an OSError's text)."""
    text = str(exc)
    return "NoSuchKey" in text or "Path does not exist" in text or "not found" in text.lower()
