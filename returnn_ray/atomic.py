"""Write a file so that readers see the old content or the new, never half of it.

Checkpoints and the ``learning_rate_file`` are what a resumed training starts from; a crash or
a full disk in the middle of a write must not destroy the previous version. Every writer here
goes the same way: a temp file in the same directory (``.<name>.tmp-<pid>-<random>``, so a
rename never crosses file systems and the checkpoint scan, which looks for ``<model>.NNN.pt``,
never mistakes it for a checkpoint), flush and fsync, :func:`os.replace` onto the target,
fsync the directory so the rename itself survives a power cut. A writer whose files are a cache
that it checks when it reads them (forward's parts, :mod:`returnn_ray.inference.parts`) may skip
both fsyncs (``durable=False``): the rename still shows readers and a killed writer's rerun the
old file or the whole new one; only an OS crash or power cut can leave a torn file behind.

On any error the temp file is removed and the target is left as it was. An :class:`OSError`
(directory missing or not writable, disk full) becomes a one-line :class:`UserError` that names
the path and the OS error.

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> atomic_write(os.path.join(d, "a.txt"), "hello\\n")
>>> open(os.path.join(d, "a.txt")).read()
'hello\\n'
>>> with atomic_open(os.path.join(d, "a.txt"), "w") as f:
...     _ = f.write("new")
>>> open(os.path.join(d, "a.txt")).read(), os.listdir(d)
('new', ['a.txt'])
"""

# Imports inside functions: torch loads only when a checkpoint is saved (start-up time).
from __future__ import annotations

import contextlib
import os
import secrets
from typing import IO, Any, Iterator, Literal, Sequence

from returnn_ray.errors import UserError

__all__ = ["atomic_write", "atomic_open", "atomic_torch_save", "temp_path_for", "is_temp_path"]


def temp_path_for(path: str) -> str:
    """A fresh temp file name next to ``path``: ``<dir>/.<name>.tmp-<pid>-<random>``."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_path(path: str) -> bool:
    """Whether ``path`` names a temp file of :func:`atomic_open` (left behind by a killed writer).

    >>> is_temp_path("/m/.net.001.pt.tmp-12-ab12cd34"), is_temp_path("/m/net.001.pt")
    (True, False)
    """
    name = os.path.basename(path)
    return name.startswith(".") and ".tmp-" in name


@contextlib.contextmanager
def atomic_open(
    path: str, mode: Literal["w", "wt", "wb"] = "w", *, encoding: str = "utf-8", durable: bool = True
) -> Iterator[IO[Any]]:
    """Open a temp file for writing; on a clean exit it replaces ``path``, on an error it is removed.

    An :class:`OSError` raised inside the block or while committing becomes a :class:`UserError`;
    any other exception propagates unchanged. Either way ``path`` keeps its previous content.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w', 'wt' or 'wb', got {mode!r}")
    tmp = temp_path_for(path)
    f: IO[Any] | None = None
    try:
        # O_EXCL: never write into someone else's temp file. 0o666 minus the umask, like open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        f = os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding=encoding)
        yield f
        f.flush()
        if durable:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as exc:
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    if durable:
        _fsync_directory(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str, data: bytes | str | Sequence[bytes], *, encoding: str = "utf-8", durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, str encoded with ``encoding``, or pieces of bytes written one
    after another, so a large payload behind a header is not copied) atomically."""
    if isinstance(data, str):
        with atomic_open(path, "w", encoding=encoding, durable=durable) as f:
            f.write(data)
    else:
        with atomic_open(path, "wb", durable=durable) as f:
            for piece in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(piece)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically. An object torch cannot save leaves ``path`` as it was."""
    import torch  # lazily: this module is also used where torch is not needed

    try:
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as exc:
        # torch's zip writer hides a failed write (disk full) behind its own RuntimeError
        # ("unexpected pos ..."), raised while the OSError was being handled
        cause = _os_error_behind(exc)
        if cause is None:
            raise
        raise _write_error(path, cause) from exc


def _os_error_behind(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_directory(directory: str) -> None:
    """Make the rename durable. Some file systems cannot fsync a directory; the rename is done anyway."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: str, exc: OSError) -> UserError:
    reason = (exc.strerror or str(exc)).replace("\n", " ")
    return UserError(
        f"cannot write {path!r}: {reason}; check that its directory exists, is writable and has free space"
    )


def same_file_among(path: str, others: Sequence[str]) -> str | None:
    """The first of ``others`` that is the file ``path`` (by device and inode: hard links and
    other spellings of the path too), or None; paths that do not exist are no match."""
    for other in others:
        try:
            if os.path.samefile(path, other):
                return other
        except OSError:
            continue
    return None
