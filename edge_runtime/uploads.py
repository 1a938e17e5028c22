"""Reading multipart uploads with a size bound, shared by the modules' HTTP routes."""
from __future__ import annotations

from typing import Any

READ_BLOCK = 1 << 16


async def read_limited(upload: Any, limit: int, what: str, key: str) -> bytes:
    """The upload's bytes, refusing (413) as soon as it passes `limit` instead of buffering it all."""
    from starlette.exceptions import HTTPException

    parts: list[bytes] = []
    size = 0
    while block := await upload.read(READ_BLOCK):
        size += len(block)
        if size > limit:
            raise HTTPException(413, f"file: the {what} is larger than the {limit}-byte limit ({key})")
        parts.append(block)
    return b"".join(parts)
