"""Hub weights for `timm:NAME`: fetched once, on purpose, into imgclf's cache; every run after reads the cache.

Why not timm's own `pretrained=True`: it reaches for the network (or Hugging Face's cache, whose contents no
one checked) inside a training run, so a run's result would depend on the network of the moment. Here only
`imgclf weights fetch` talks to a hub; a run with `--pretrained` reads a file whose sha256 was recorded when it
was fetched and checked again before it loads, and never imports a download path.

Where: timm's pretrained config for NAME names the repository (`hf_hub_id`, `repo@revision` allowed) and the
file (`hf_hub_filename`, else `pytorch_model.bin`, whose safetensors twin `model.safetensors` is tried first,
as timm's `load_state_dict_from_hf` does). The download goes through huggingface_hub (`get_hf_file_metadata`,
then `hf_hub_download` pinned to the commit it reported), at `--hub-url`, else `HF_ENDPOINT`, else the public
hub. What is kept: `$IMGCLF_CACHE/weights/timm/<architecture.tag>/<file>` and `provenance.json` beside it
(repository, requested revision and the commit served, URL, sha256, size, fetched_at, library versions).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgclf.errors import UserError
from imgclf.models.entry import TIMM_PREFIX

FORMAT = "imgclf-hub-weights-v1"
PROVENANCE = "provenance.json"
SHA256 = re.compile(r"[0-9a-f]{64}")
# timm's order (timm.models._hub): a pickle file's safetensors twin first, then the file itself
SAFE_TWINS = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


@dataclass(frozen=True)
class HubSource:
    """Where timm's pretrained config says NAME's weights are."""

    name: str  # timm's full name, architecture.tag: the cache key (resnet18 and resnet18.a1_in1k share it)
    repo_id: str
    revision: str  # as the config asks: a branch, tag or commit ("main" when it names none)
    filenames: tuple[str, ...]  # tried in order


def fetch_command(arch: str) -> str:
    return f"imgclf weights fetch {TIMM_PREFIX}{arch}"


def not_cached(arch: str) -> UserError:
    return UserError(f"no cached weights for {TIMM_PREFIX}{arch}; run `{fetch_command(arch)}` where there is a "
                     "network, or pass --weights FILE")


def _candidates(filename: str | None) -> tuple[str, ...]:
    name = filename or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return (name,)
    twin = SAFE_TWINS.get(name) or (name.removesuffix(".bin") + ".safetensors" if name.endswith(".bin") else None)
    return tuple(n for n in (twin, name) if n)


def hub_source(arch: str) -> HubSource:
    """NAME's hub location from timm's pretrained config; a name whose config names no hub file is a UserError."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(f"timm names no Hugging Face Hub weights for {arch!r} (its pretrained config has no "
                        f"hf_hub_id); pass --weights FILE")
    if cfg.custom_load:
        raise UserError(f"timm loads {arch}'s hub weights with a model-specific loader (custom_load), which imgclf "
                        "cannot check; pass --weights FILE")
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return HubSource(name, repo_id, revision or "main", _candidates(cfg.hf_hub_filename))


def cache_root() -> Path:
    """$IMGCLF_CACHE/weights/timm (the decode cache's root, so one variable moves everything imgclf keeps)."""
    from imgclf.data.sources import cache_dir

    return cache_dir() / "weights" / "timm"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    return record if (folder / str(record.get("filename"))).is_file() else None


def list_cached() -> list[dict[str, Any]]:
    """Every complete cache entry's provenance (with `path`, the weights file), by name; reads no weights."""
    root = cache_root()
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        record = None if folder.name.startswith(".") else _read_record(folder)  # .fetch-*: one under way
        if record is not None:
            found.append({**record, "path": str(folder / record["filename"])})
    return found


def cached_weights(arch: str, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """The cached file for NAME and its provenance; touches no network. Absent: the one-line way out.

    `verify` hashes the file again: a file changed since the fetch (a partial copy, an edit) is refused.
    """
    source = hub_source(arch)
    folder = cache_root() / source.name
    record = _read_record(folder)
    if record is None:
        raise not_cached(arch)
    path = folder / record["filename"]
    if verify and sha256_of(path) != record["sha256"]:
        raise UserError(f"cached weights {path} changed since they were fetched (sha256 differs from "
                        f"{PROVENANCE}); fetch again: `{fetch_command(arch)} --force`")
    return path, record


def _endpoint(hub_url: str | None) -> str:
    from huggingface_hub import constants

    return (hub_url or constants.ENDPOINT).rstrip("/")


def _network_error(source: HubSource, arch: str, endpoint: str, exc: BaseException) -> UserError:
    """One line for a hub that cannot be reached or refuses, naming the way out."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if constants.is_offline_mode():
        return UserError(f"cannot fetch {TIMM_PREFIX}{arch}: HF_HUB_OFFLINE is set; unset it where there is a "
                         "network, or pass --weights FILE")
    if isinstance(exc, GatedRepoError):
        return UserError(f"{endpoint}: the repository of {TIMM_PREFIX}{arch} is gated; accept its terms on the hub "
                         "and log in (`hf auth login`), or pass --weights FILE")
    if isinstance(exc, RevisionNotFoundError):
        return UserError(f"{endpoint}/{source.repo_id} has no revision {source.revision!r}; check --hub-url / "
                         "HF_ENDPOINT, or pass --weights FILE")
    if isinstance(exc, RepositoryNotFoundError):
        return UserError(f"{endpoint} has no repository {source.repo_id} (or it is private); check --hub-url / "
                         "HF_ENDPOINT, or pass --weights FILE")
    return UserError(f"cannot fetch {TIMM_PREFIX}{arch} from {endpoint} ({exc.__class__.__name__}); run "
                     f"`{fetch_command(arch)}` where there is a network, or pass --weights FILE")


def _metadata(source: HubSource, arch: str, endpoint: str, token: bool | None) -> tuple[str, Any]:
    """The first candidate file the hub has, with its metadata (commit, etag, size): one HEAD each."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import RemoteEntryNotFoundError

    for filename in source.filenames:
        url = hf_hub_url(source.repo_id, filename, revision=source.revision, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        except RemoteEntryNotFoundError:
            continue
        if not meta.commit_hash or not meta.etag:
            raise UserError(f"{endpoint} answered without X-Repo-Commit or ETag: not a Hugging Face Hub endpoint "
                            "(check --hub-url / HF_ENDPOINT)")
        return filename, meta
    raise UserError(f"{endpoint}/{source.repo_id} has none of {', '.join(source.filenames)} at {source.revision}; "
                    f"pass --weights FILE")


def _download(source: HubSource, arch: str, endpoint: str, token: bool | None, stage: Path) -> dict[str, Any]:
    """Download into `stage` (under the cache root, so the final move is a rename) and describe what came."""
    import httpx2
    from huggingface_hub import __version__ as hub_version
    from huggingface_hub import hf_hub_download, hf_hub_url
    from timm import __version__ as timm_version

    try:
        filename, meta = _metadata(source, arch, endpoint, token)
        pointer = hf_hub_download(source.repo_id, filename, revision=meta.commit_hash, endpoint=endpoint,
                                  token=token, cache_dir=stage / "hf", library_name="imgclf")
    except (OSError, httpx2.HTTPError) as exc:  # huggingface_hub's errors are OSErrors, ConnectionError too
        raise _network_error(source, arch, endpoint, exc) from None
    path = stage / "entry" / filename
    path.parent.mkdir(parents=True)
    shutil.move(Path(str(pointer)).resolve(), path)
    sha, size = sha256_of(path), path.stat().st_size
    if SHA256.fullmatch(meta.etag) and meta.etag != sha:  # the hub's ETag of an LFS file is its sha256
        raise UserError(f"the downloaded {filename} has sha256 {sha}, the hub said {meta.etag}; fetch again")
    if meta.size is not None and meta.size != size:
        raise UserError(f"the downloaded {filename} has {size} bytes, the hub said {meta.size}; fetch again")
    return {"format": FORMAT, "model": f"{TIMM_PREFIX}{source.name}", "repo_id": source.repo_id,
            "filename": filename, "revision": source.revision, "commit": meta.commit_hash,
            "url": hf_hub_url(source.repo_id, filename, revision=meta.commit_hash, endpoint=endpoint),
            "endpoint": endpoint, "sha256": sha, "size": size,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "timm": timm_version, "huggingface_hub": hub_version}


def fetch(arch: str, check: Callable[[Path, str], None], hub_url: str | None = None,
          force: bool = False) -> tuple[dict[str, Any], bool]:
    """Download NAME's hub weights, `check(file, its name for messages)` them (a strict load), and cache them
    with their provenance.

    Returns (provenance with `path`, fetched): already cached and not `force` -> the entry, no network.
    A failure leaves the cache as it was (the entry is built aside and renamed into place).
    """
    source = hub_source(arch)
    if not force:
        try:
            path, record = cached_weights(arch)
            return {**record, "path": str(path)}, False
        except UserError:
            pass
    endpoint = _endpoint(hub_url)
    token = False if hub_url else None  # the user's hub token goes only to the hub it was made for
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=root, prefix=".fetch-"))
    try:
        record = _download(source, arch, endpoint, token, stage)
        entry = stage / "entry"
        check(entry / record["filename"], f"the hub's {record['filename']} ({record['url']})")
        (entry / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        final = root / source.name
        if final.exists():
            final.rename(stage / "old")
        entry.rename(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {**record, "path": str(final / record["filename"])}, True
