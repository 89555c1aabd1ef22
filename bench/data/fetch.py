"""``data fetch``: download a dataset's published files, check them, and unpack them into the layout its loader reads.

Nothing half-done passes for data. A download goes to ``<root>/.downloads/FILE.part`` and takes its own name only
once its checksum matched (a mismatch deletes it and names both sums). Archives are unpacked into a temporary
folder inside the root, the loader must open the result, and only then is it renamed to ``<root>/NAME`` in one step.
A dataset whose folder is there is not fetched again.

Written here, not taken from ``torchvision.datasets.utils``: its ``download_url`` cannot resume a partial download
(HTTP Range), its ``check_integrity`` knows md5 only (ADE20k's published sum is sha1), and its ``extract_archive``
unpacks tar members wherever their names point. So: resume by hand, ``hashlib`` for every sum, and
``shutil.unpack_archive``: tars with the "data" filter, which refuses members that would land outside the folder
(its zip unpacking skips such names by itself).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import importlib
import io
import os
import shlex
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from bench.data.common import DatasetError, FetchError
from bench.data.sources import Download, Source, source
from bench.registry import DATASETS

HEADERS = {"User-Agent": "featup-bench data fetch"}
CHUNK = 1 << 20
FORMATS = {".zip": "zip", ".tar": "tar", ".tgz": "gztar", ".tar.gz": "gztar"}
DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error)


def fetch(name: str, root: Path, urls: Sequence[str] = (), sums: Sequence[str] = (), unverified: bool = False,
          hub: bool = False, keep: bool = False, progress: bool = True,
          say: Callable[[str], None] = print) -> tuple[Path, bool]:
    """(the dataset's folder, whether it was fetched now) for ``data fetch NAME``, into ``<root>/<dataset>``.

    ``urls`` and ``sums`` (md5) replace the source's, one per file in the table's order; ``unverified`` accepts
    files no checksum is published for; ``hub`` reads the dataset from the Hugging Face hub instead.
    """
    src = source(name)
    folder = root / src.dataset
    if present(src, folder):
        return folder, False
    if hub and (src.hub is None or urls or sums):
        raise FetchError(f"--source hf reads {name} from the hub, without --url or --md5" if src.hub else
                         f"{name} is not on the Hugging Face hub here; fetch it without --source hf")
    if src.login and not urls and not hub:
        raise FetchError(login_steps(src))
    if src.adds and not folder.is_dir():
        raise FetchError(f"{name} adds to {src.dataset}, which is not at {folder}: run `python run_bench.py data fetch "
                         f"{src.dataset}` first (with the same --to)")
    downloads = [] if hub else resolve(src, urls, sums, unverified)
    root.mkdir(parents=True, exist_ok=True)
    cache = root / ".downloads"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    build = staging / "build"
    build.mkdir()
    try:
        if hub:
            from bench.data.imagenet_hub import write_split

            write_split(src.hub, build, progress)
        for index, download in enumerate(downloads):
            if download.ranged:
                read_members(download, build)
            else:
                unpack(download, obtain(download, cache, progress, say), staging / f"unpacked-{index}", build)
        if src.finish:
            module, _, function = src.finish.partition(":")
            getattr(importlib.import_module(module), function)(build, folder, progress)
        check_loads(src, build)
        put_in_place(src, build, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep:
        for download in downloads:
            (cache / download.file).unlink(missing_ok=True)
        if cache.is_dir() and not any(cache.iterdir()):
            cache.rmdir()
    return folder, True


def present(src: Source, folder: Path) -> bool:
    """Whether ``src`` is already in ``folder``; an add-on partly there is an error (remove it and fetch again)."""
    if not src.adds:
        return folder.is_dir()
    there = [p for p in src.adds if (folder / p).exists()]
    if there and len(there) < len(src.adds):
        lacking = [p for p in src.adds if p not in there]
        raise FetchError(f"{folder} holds {', '.join(there)} but not {', '.join(lacking)}: remove {', '.join(there)} "
                         f"and fetch {src.name} again")
    return bool(there)


def data_argument(dataset: str, folder: Path) -> str:
    """The --data argument that reads ``folder``, quoted for a shell where it needs to be."""
    return f"--data {shlex.quote(f'{dataset}={folder.resolve()}')}"


def login_steps(src: Source) -> str:
    """What a user does to get a dataset behind a login: the source's steps, then the command that unpacks the files."""
    urls = " ".join(f"--url file:///PATH/TO/{d.file}" for d in src.downloads)
    unchecked = " --unverified" if any(d.checksum is None for d in src.downloads) else ""
    steps = [src.login, f"Then: python run_bench.py data fetch {src.name} {urls}{unchecked} (it checks and unpacks "
                        f"them into the layout the loader reads)."]
    if src.hub:
        steps.append(f"Or from the Hugging Face hub: accept the terms of {src.hub.page}, log in with `huggingface-cli "
                     f"login` (or set HF_TOKEN to an access token), then: python run_bench.py data fetch {src.name} "
                     f"--source hf")
    return "\n".join(steps)


def resolve(src: Source, urls: Sequence[str], sums: Sequence[str], unverified: bool) -> list[Download]:
    """The source's downloads with the user's --url (one per file) and --md5 (one per file downloaded whole: a zip
    read in part has no sum to check) put in, refused where a file cannot be checked."""
    whole = [d.file for d in src.downloads if not d.ranged]
    for flag, given, files in (("--url", urls, [d.file for d in src.downloads]), ("--md5", sums, whole)):
        if given and len(given) != len(files):
            raise FetchError(f"{src.name} has {len(files)} file(s) for {flag} ({', '.join(files)}): give {flag} once "
                             f"per file, in this order (got {len(given)})")
    sum_of = dict(zip(whole, sums))
    downloads = [dataclasses.replace(d, **({"url": urls[i]} if urls else {}),
                                     **({"checksum": f"md5:{sum_of[d.file].lower()}", "checksum_from": "--md5"}
                                        if d.file in sum_of else {}))
                 for i, d in enumerate(src.downloads)]
    unchecked = [d.file for d in downloads if d.checksum is None]
    if unchecked and not unverified:
        raise FetchError(f"no checksum is published for {', '.join(unchecked)}, so the download cannot be verified: "
                         f"pass --md5 HEX if you have the file's sum, or --unverified to accept it unchecked (its md5 "
                         f"is printed, to check a later copy against)")
    return downloads


def obtain(download: Download, cache: Path, progress: bool, say: Callable[[str], None]) -> Path:
    """The downloaded file in ``cache``: there already (it passed its check then), or downloaded (resuming a partial
    ``.part``), checked, and renamed to its own name."""
    target = cache / download.file
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    transfer(download.url, part, progress)
    algorithm, _, expected = (download.checksum or "md5:").partition(":")
    digest = hashlib.new(algorithm)
    with part.open("rb") as f:  # in blocks: hashlib.file_digest is Python 3.11's, and the suite runs on 3.10
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if not expected:
        say(f"{download.file}: accepted unchecked (--unverified); its md5 is {actual}")
    elif actual != expected:
        part.unlink()
        raise FetchError(f"{download.file} from {download.url}: {algorithm} {actual}, expected {expected} (from "
                         f"{download.checksum_from}). The download was deleted; check the --url (a mirror may serve "
                         f"another file) or the sum given with --md5")
    os.replace(part, target)
    return target


def transfer(url: str, part: Path, progress: bool) -> None:
    """Download ``url`` into ``part``, continuing a partial ``part`` where the server honours HTTP Range."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={**HEADERS, **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is complete already: its checksum decides
            return
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    with response:
        resumed = have and response.status == 206
        length = response.headers.get("Content-Length")
        total = (have if resumed else 0) + int(length) if length else None
        with part.open("ab" if resumed else "wb") as out, \
                tqdm(total=total, initial=out.tell(), unit="B", unit_scale=True, desc=part.stem,
                     disable=not progress) as bar:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"{url}: the transfer broke off ({exc}); run the same command again to resume "
                                 f"it") from None
            if total is not None and out.tell() < total:
                raise FetchError(f"{url}: the transfer broke off at {out.tell()} of {total} bytes; run the same "
                                 f"command again to resume it")


def unpack(download: Download, path: Path, scratch: Path, build: Path) -> None:
    """Put what ``download.place`` keeps of the file at ``path`` into the dataset folder being built."""
    if not download.place:
        try:
            os.link(path, build / download.file)  # the cached file stays until the dataset is in place
        except OSError:
            shutil.copy2(path, build / download.file)
        return
    kind = next((fmt for suffix, fmt in FORMATS.items() if download.file.endswith(suffix)), None)
    try:
        shutil.unpack_archive(path, scratch, kind, **({} if kind == "zip" else {"filter": "data"}))
    except DAMAGED as exc:
        path.unlink()
        raise FetchError(f"{download.file} cannot be unpacked ({exc}); it was deleted: run the command again to "
                         f"download it afresh") from None
    for inside, target in download.place:
        found = scratch / inside
        if not found.exists():
            held = ", ".join(sorted(p.name for p in scratch.iterdir())[:8]) or "nothing"
            raise FetchError(f"{download.file} holds no {inside!r} (at its top: {held}); expected the published "
                             f"archive")
        if target == ".":
            for child in found.iterdir():
                os.replace(child, build / child.name)
        else:
            (build / target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(found, build / target)


class RangeFile(io.RawIOBase):
    """A file on an HTTP server read by Range requests: zipfile reads only the central directory and the members
    asked for, so a few list files come out of a large zip without downloading it."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.position = url, 0
        with self._get(0, 0) as response:
            if response.status != 206:
                raise FetchError(f"{url} does not answer HTTP range requests, so its members cannot be read alone")
            self.size = int(response.headers["Content-Range"].rpartition("/")[2])

    def _get(self, start: int, end: int):
        request = urllib.request.Request(self.url, headers={**HEADERS, "Range": f"bytes={start}-{end}"})
        try:
            return urllib.request.urlopen(request, timeout=60)
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"cannot read {self.url}: {getattr(exc, 'reason', exc)}") from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size or not len(buffer):
            return 0
        with self._get(self.position, min(self.position + len(buffer), self.size) - 1) as response:
            data = response.read()
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def read_members(download: Download, build: Path) -> None:
    """Copy the ``place`` members of a remote zip into the dataset folder being built (matched by path ending)."""
    with zipfile.ZipFile(io.BufferedReader(RangeFile(download.url), CHUNK)) as archive:
        names = archive.namelist()
        for inside, target in download.place:
            match = next((n for n in names if n == inside or n.endswith("/" + inside)), None)
            if match is None:
                lists = [n for n in names if n.endswith(".txt")][:8]
                raise FetchError(f"{download.url} holds no {inside!r}; its .txt files: {', '.join(lists) or 'none'}")
            (build / target).parent.mkdir(parents=True, exist_ok=True)
            (build / target).write_bytes(archive.read(match))


def check_loads(src: Source, build: Path) -> None:
    """The loader opens every split of the unpacked folder, or nothing is put in place."""
    loader = DATASETS.get(src.dataset).dataset_class()
    for split in src.splits:
        try:
            loader(str(build), split, (8, 8), 1)
        except DatasetError as exc:
            raise FetchError(f"the unpacked {src.name} is not in the layout its loader reads, so nothing was put in "
                             f"place: {str(exc).splitlines()[0]}") from None


def put_in_place(src: Source, build: Path, folder: Path) -> None:
    """Rename the built folder to the dataset's (one step), or an add-on's paths into it (its list last)."""
    if not src.adds:
        os.replace(build, folder)
        return
    for path in src.adds:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(build / path, folder / path)
