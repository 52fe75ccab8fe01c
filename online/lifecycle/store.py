"""Where version files live: a local folder (one host, or a volume every process mounts) or S3-compatible
object storage (any number of hosts), chosen by ``ONLINE_MODEL_STORE`` (a path, or ``s3://bucket/prefix``).

Both keep a version as an immutable set of files under ``v<N>/``, with ``manifest.json`` written last:
a version whose manifest is missing is incomplete and invisible (the registry's Redis index, written
after the store, is what names versions; this is the store's own commit marker). Every process reads
versions from a local directory: the folder itself, or for object storage a cache it fills on first use
and then reads without the network, so a replica keeps serving (and restarting on) its cached versions
while the store is unreachable. Checksums are the registry's business (every file's sha256 is in the
manifest and is checked before anything serves); the store only moves bytes.

Credentials and endpoint of object storage come from the standard ``AWS_*`` variables (boto3 reads
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

MANIFEST_FILE = "manifest.json"
COMPLETE_FILE = ".complete"  # the commit marker of a shared directory that is not a version (a base model)
GOLDEN_FILE = "golden.jsonl"  # the frozen golden set, shared by every trainer and importer


class StoreUnavailable(RuntimeError):
    """The object store could not be reached or refused a request (the message says which)."""


def _install(tmp: Path, path: Path) -> Path:
    """Move a fully written temporary directory into place; when another process of this host got there
    first with a complete copy, keep theirs (a complete directory is never replaced under a reader)."""
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.is_dir():
            raise
    return path


class ModelStore(Protocol):
    """What the registry needs of the place version files live."""

    url: str
    local: Path  # the directory processes read versions from

    def put(self, name: str, directory: Path) -> None:
        """Store every file of ``directory`` as ``name/``, ``manifest.json`` last; ``directory`` may be
        moved (the folder store renames it into place)."""
        ...

    def fetch(self, name: str) -> Path:
        """``local / name``, fetched first when it is not complete there. Raises KeyError when the store
        has no complete ``name``, :class:`StoreUnavailable` when it cannot be reached."""
        ...

    def delete(self, name: str) -> None: ...

    def evict(self, name: str) -> None:
        """Forget a cached copy (the store keeps the original)."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """A single shared file (the frozen golden set), beside the versions; an existing one is kept
        (what is shared is frozen)."""
        ...

    def fetch_file(self, key: str) -> Path | None:
        """``local / key``, fetched first if missing locally; None when the store has none either."""
        ...

    def put_tree(self, key: str, directory: Path) -> None:
        """A shared directory (an imported model's base: config and tokenizer), written once."""
        ...

    def fetch_tree(self, key: str) -> Path:
        """``local / key``, fetched first when not complete locally (KeyError: the store has none)."""
        ...


class FolderStore:
    """Versions in a local folder: the store and the local directory are one."""

    def __init__(self, root: Path) -> None:
        self.local = Path(root)
        self.url = str(self.local)
        self.local.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, directory: Path) -> None:
        target = self.local / name
        if directory.resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            directory.rename(target)

    def fetch(self, name: str) -> Path:
        path = self.local / name
        if not (path / MANIFEST_FILE).is_file():
            raise KeyError(f"{path} is not a complete version")
        return path

    def delete(self, name: str) -> None:
        shutil.rmtree(self.local / name, ignore_errors=True)

    def evict(self, name: str) -> None:
        """Nothing to evict: the folder is the store (a corrupted file stays refused)."""

    def put_file(self, key: str, source: Path) -> None:
        target = self.local / key
        if source.resolve() != target.resolve() and not target.exists():
            shutil.copyfile(source, target)

    def fetch_file(self, key: str) -> Path | None:
        path = self.local / key
        return path if path.is_file() else None

    def put_tree(self, key: str, directory: Path) -> None:
        if directory.resolve() != (self.local / key).resolve():
            raise ValueError(f"{directory} is not {self.local / key}: a folder store shares files in place")

    def fetch_tree(self, key: str) -> Path:
        path = self.local / key
        if not path.is_dir():
            raise KeyError(f"{path} is missing")
        return path


class S3Store:
    """Versions as objects under ``s3://bucket/prefix/``, read through a local cache directory."""

    def __init__(self, url: str, cache: Path) -> None:
        try:
            import boto3  # only processes configured for object storage need it
            from botocore.config import Config
        except ImportError:
            raise ValueError(f"{url}: object storage needs boto3: pip install 'online[s3]'") from None

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{url}: not an s3://bucket/prefix URL")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.local = Path(cache)
        self.local.mkdir(parents=True, exist_ok=True)
        # A short connect timeout and few retries: an unreachable store must not hold a swap for minutes.
        config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
        self.s3 = boto3.client("s3", config=config)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _call(self, what: str, fn, *args, **kwargs):
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(f"{self.url}: no {what}") from None
            raise StoreUnavailable(f"{self.url}: {what}: {exc}") from exc
        except (BotoCoreError, Boto3Error) as exc:  # unreachable, retries exhausted, an upload refused
            raise StoreUnavailable(f"{self.url}: {what}: {exc}") from exc

    def put(self, name: str, directory: Path) -> None:
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
        for path in [*files, directory / MANIFEST_FILE]:  # the manifest last: the version's commit marker
            self._call(f"upload of {name}/{path.name}", self.s3.upload_file, str(path), self.bucket, self._key(name, path.name))
        cached = self.local / name  # the writer keeps what it wrote: no download of its own version
        if not (cached / MANIFEST_FILE).is_file():
            tmp = Path(tempfile.mkdtemp(dir=self.local, prefix=f".{name}."))
            shutil.copytree(directory, tmp, dirs_exist_ok=True)
            _install(tmp, cached)

    def fetch(self, name: str) -> Path:
        path = self.local / name
        if (path / MANIFEST_FILE).is_file():
            return path  # complete in the cache: no network
        self._call(f"{name}/{MANIFEST_FILE}", self.s3.head_object, Bucket=self.bucket, Key=self._key(name, MANIFEST_FILE))
        listing = self._call(f"listing of {name}", self.s3.list_objects_v2, Bucket=self.bucket, Prefix=self._key(name) + "/")
        keys = [o["Key"] for o in listing.get("Contents", [])]
        # A directory of its own per download: two replicas of one host fetching the same version at once
        # each write their own, the first rename wins, and a complete version is never removed under a reader.
        tmp = Path(tempfile.mkdtemp(dir=self.local, prefix=f".{name}."))
        try:
            for key in sorted(keys, key=lambda k: k.endswith("/" + MANIFEST_FILE)):  # manifest last here too
                target = tmp / key.rsplit("/", 1)[1]
                self._call(f"download of {key}", self.s3.download_file, self.bucket, key, str(target))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if path.exists() and not (path / MANIFEST_FILE).is_file():
            shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover (a crash mid-write, an eviction)
        return _install(tmp, path)

    def evict(self, name: str) -> None:
        """Drop a cached version (a file failed its checksum): the next fetch downloads it again."""
        shutil.rmtree(self.local / name, ignore_errors=True)

    def delete(self, name: str) -> None:
        listing = self._call(f"listing of {name}", self.s3.list_objects_v2, Bucket=self.bucket, Prefix=self._key(name) + "/")
        keys = [{"Key": o["Key"]} for o in listing.get("Contents", [])]
        # The manifest first: a half-deleted version is incomplete, never half-visible.
        keys.sort(key=lambda k: not k["Key"].endswith("/" + MANIFEST_FILE))
        for key in keys:
            self._call(f"delete of {key['Key']}", self.s3.delete_object, Bucket=self.bucket, Key=key["Key"])
        shutil.rmtree(self.local / name, ignore_errors=True)

    def _exists(self, key: str) -> bool:
        try:
            self._call(key, self.s3.head_object, Bucket=self.bucket, Key=self._key(key))
        except KeyError:
            return False
        return True

    def put_file(self, key: str, source: Path) -> None:
        if not self._exists(key):  # frozen: the first writer's copy is the shared one
            self._call(f"upload of {key}", self.s3.upload_file, str(source), self.bucket, self._key(key))
        if source.resolve() != (self.local / key).resolve() and not (self.local / key).exists():
            shutil.copyfile(source, self.local / key)

    def fetch_file(self, key: str) -> Path | None:
        path = self.local / key
        if path.is_file():
            return path
        fd, tmp = tempfile.mkstemp(dir=self.local, prefix=f".{key}.")
        os.close(fd)
        try:
            self._call(key, self.s3.download_file, self.bucket, self._key(key), tmp)
        except KeyError:
            os.unlink(tmp)
            return None
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, path)
        return path

    def put_tree(self, key: str, directory: Path) -> None:
        if self._exists(f"{key}/{COMPLETE_FILE}"):
            return
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE_FILE):
            rel = path.relative_to(directory).as_posix()
            self._call(f"upload of {key}/{rel}", self.s3.upload_file, str(path), self.bucket, self._key(key, rel))
        self._call(f"{key}/{COMPLETE_FILE}", self.s3.put_object, Bucket=self.bucket, Key=self._key(key, COMPLETE_FILE), Body=b"")

    def fetch_tree(self, key: str) -> Path:
        path = self.local / key
        if path.is_dir():
            return path
        if not self._exists(f"{key}/{COMPLETE_FILE}"):
            raise KeyError(f"{self.url}: no {key}")
        paginator = self.s3.get_paginator("list_objects_v2")
        prefix = self._key(key) + "/"
        pages = self._call(f"listing of {key}", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            for obj in (o for page in pages for o in page.get("Contents", [])):
                target = tmp / obj["Key"][len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                self._call(f"download of {obj['Key']}", self.s3.download_file, self.bucket, obj["Key"], str(target))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _install(tmp, path)


def open_store(location: str | Path, cache: Path) -> ModelStore:
    """The store ``ONLINE_MODEL_STORE`` names: ``s3://bucket/prefix`` or a folder."""
    if str(location).startswith("s3://"):
        return S3Store(str(location), cache)
    return FolderStore(Path(location))
