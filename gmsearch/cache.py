"""Content-addressed on-disk cache for expensive tensors.

Reference weights, adversarial sets and reference input gradients are computed
once and stored under a key that hashes everything they depend on. Each file
carries a checksum of its tensors; a corrupt or mismatched file is reported
(logged at WARNING with the path and the reason) and regenerated, never used.
Files are written atomically (temp file + rename) so concurrent workers never
read half-written data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CacheError(RuntimeError):
    """A cache file that cannot be trusted (corrupt, truncated or for other inputs)."""


def default_cache_dir() -> Path:
    """``$GMSEARCH_CACHE`` if set, else ``~/.cache/gmsearch``."""
    env = os.environ.get("GMSEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gmsearch"


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (device independent)."""
    t = tensor.detach().contiguous().cpu()
    h = hashlib.sha256()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": tensor_digest(obj)}
    if isinstance(obj, torch.nn.Module):
        return {"__module__": state_digest(obj.state_dict())}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return repr(obj)


def content_hash(*parts: Any) -> str:
    """Stable hex digest of JSON-like parts; tensors and modules hash by content."""
    text = json.dumps([_jsonable(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Digest of a name -> tensor mapping."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensor_digest(tensors[name]).encode())
    return h.hexdigest()


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write ``tensors`` with ``meta`` and a checksum to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    payload = {
        "format": FORMAT_VERSION,
        "meta_json": json.dumps(_jsonable(dict(meta)), sort_keys=True),
        "checksum": state_digest(cpu),
        "tensors": cpu,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_tensors(path: Path, meta: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Load a file written by :func:`save_tensors`, verifying its integrity.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CacheError: the file is corrupt, not plain tensors, fails its checksum,
            or was written for different ``meta``.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CacheError(f"cache file {path} is unreadable or not plain tensors: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CacheError(f"cache file {path} has an unknown format (expected version {FORMAT_VERSION})")
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CacheError(f"cache file {path} does not hold a name -> tensor mapping")
    if state_digest(tensors) != payload.get("checksum"):
        raise CacheError(f"cache file {path} fails its checksum (corrupt or modified)")
    if meta is not None:
        expected = json.dumps(_jsonable(dict(meta)), sort_keys=True)
        if payload.get("meta_json") != expected:
            raise CacheError(f"cache file {path} was written for other inputs")
    return dict(tensors)


def cached_tensors(
    path: Path,
    meta: Mapping[str, Any],
    compute: Callable[[], Mapping[str, torch.Tensor]],
    *,
    what: str = "cached tensors",
) -> dict[str, torch.Tensor]:
    """Load ``path`` if it is valid for ``meta``; otherwise ``compute``, save and return.

    A corrupt or mismatched file is logged at WARNING and regenerated.
    """
    try:
        return load_tensors(path, meta)
    except FileNotFoundError:
        pass
    except CacheError as exc:
        logger.warning("%s: %s; regenerating", what, exc)
    result = dict(compute())
    save_tensors(path, result, meta)
    logger.info("%s saved to %s", what, path)
    return result
