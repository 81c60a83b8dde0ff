"""Files written whole or not at all: run records, eval results, hub checkpoints, session snapshots."""
import os
import uuid
from typing import Callable


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """write(temporary path) beside `path`, then rename it to `path`.

    A crash or an error never leaves a half-written file under the final name (the rename is
    atomic on one filesystem), the temporary name is unique (concurrent writers never share it),
    and it is removed if `write` fails.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """`write_atomic` of a text file."""
    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)
    write_atomic(path, write)
