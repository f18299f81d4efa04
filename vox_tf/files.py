"""Writing outputs so that a failure never leaves a partial file behind."""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary path beside ``path``; renames it onto ``path`` only on success.

    The temporary file keeps ``path``'s suffix, so writers that pick the format from the
    name (numpy, matplotlib, trimesh) behave as they would on ``path`` itself.

    Example:
        >>> with atomic_output("out.npz") as tmp:
        ...     np.savez(tmp, a=1)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs get the permissions of any new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
