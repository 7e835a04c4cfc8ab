"""Reading large COCO-style JSON files without holding every record as Python objects at once.

``load_json_chunked(path, "annotations", consume)`` memory-maps the file, finds the top-level
``"annotations": [...]`` array and parses it in slices of about ``chunk_bytes`` with orjson,
handing each parsed list of records to ``consume`` (which copies what it needs into NumPy and
drops the dicts). The rest of the document (images, categories, ...) is parsed normally and
returned with the array replaced by ``[]``. Peak memory is the compact index plus one slice,
instead of the whole Python object tree (what ``json.load`` + ``pycocotools.COCO`` keep).

A slice ends at a ``}`` followed by ``, {"<first key of the first record>"`` (or by the
closing ``]``) and is accepted only when orjson parses it as a complete array, so a cut inside
a string or a nested object can never be taken for a record boundary. Anything unexpected
(no such array, a nested key of that name, a cut that does not parse) falls back to parsing
the whole file at once, which also gives the exact position of a real syntax error.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path

import orjson

from lightning_seg.data.io import DataError

DEFAULT_CHUNK_BYTES = 4 << 20  # ~25 MB of Python objects per slice
_WS = re.compile(rb"\s*")
_FIRST_KEY = re.compile(rb'\{\s*("(?:[^"\\]|\\.)*")')
_ARRAY_END = re.compile(rb"\}\s*\]")


class _Fallback(Exception):
    """The chunked path could not prove a record boundary: parse the whole file instead."""


def _decode_error(path: Path, exc: orjson.JSONDecodeError) -> DataError:
    return DataError(
        f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} (byte {exc.pos}): "
        f"{exc.msg}. The file is truncated or not valid JSON; re-download or re-export it "
        f"(check it with `python -m json.tool {path.name}`)."
    )


def _check_top(path: Path, top: object) -> dict:
    if not isinstance(top, dict):
        raise DataError(
            f"{path}: expected a JSON object at the top level (COCO style: "
            f'{{"images": [...], "annotations": [...], "categories": [...]}}), '
            f"got {type(top).__name__}."
        )
    return top


def load_json(path: str | os.PathLike) -> dict:
    """Parse a whole JSON file (orjson); errors name the file, the position and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found. Check the path in your config.")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: annotation file is empty; re-download or re-export it.")
    try:
        top = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _decode_error(path, exc) from None
    return _check_top(path, top)


def load_json_chunked(
    path: str | os.PathLike,
    array_key: str,
    consume: Callable[[list], None],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    reset: Callable[[], None] | None = None,
) -> dict:
    """Parse ``path`` handing the top-level array ``array_key`` to ``consume`` in slices.

    Args:
        path: JSON file whose top level is an object.
        array_key: key of the big array (``"annotations"``).
        consume: called with each parsed slice (a list of records), in file order.
        chunk_bytes: target slice size in bytes.
        reset: called before a fallback to whole-file parsing, so that ``consume``'s state
            built from slices already handed over can be dropped.

    Returns:
        The top-level object with ``array_key`` set to ``[]`` (``[]`` too when it is absent;
        callers check for required keys).

    Raises:
        DataError: file missing, empty, truncated or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found. Check the path in your config.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: annotation file is empty; re-download or re-export it.")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _chunked(mm, array_key, consume, chunk_bytes)
    except _Fallback:
        pass
    except orjson.JSONDecodeError:
        pass  # the slices were fine but the rest is not: the full parse names the position
    if reset is not None:
        reset()
    top = load_json(path)
    records = top.get(array_key)
    if isinstance(records, list):
        top[array_key] = []
        for i in range(0, len(records), 65536):
            consume(records[i : i + 65536])
        del records
    return top


def _chunked(mm: mmap.mmap, key: str, consume: Callable[[list], None], chunk_bytes: int) -> dict:
    m = re.compile(rb'"' + re.escape(key.encode()) + rb'"\s*:\s*\[').search(mm)
    if m is None:
        raise _Fallback
    open_pos = m.end() - 1  # the "[" of the array
    pos = _WS.match(mm, m.end()).end()
    if pos >= len(mm):
        raise _Fallback
    if mm[pos] == ord("]"):
        close_pos = pos
    else:
        first = _FIRST_KEY.match(mm, pos)
        if first is None:
            raise _Fallback
        sep = re.compile(rb"\}\s*,\s*\{\s*" + re.escape(first.group(1)))
        while True:
            m_sep = sep.search(mm, pos + chunk_bytes)
            if m_sep is not None:
                end = m_sep.start() + 1
                items = _parse_slice(mm, pos, end)
                if items is None:
                    raise _Fallback
                consume(items)
                del items
                _release(mm, end)
                pos = _WS.match(mm, end).end() + 1  # skip the ","
                pos = _WS.match(mm, pos).end()
                continue
            # last slice: the first "}]" after pos that closes a valid array of records
            for tries, m_end in enumerate(_ARRAY_END.finditer(mm, pos)):
                if tries >= 16:
                    raise _Fallback
                items = _parse_slice(mm, pos, m_end.start() + 1)
                if items is None:
                    continue
                consume(items)
                del items
                close_pos = m_end.end() - 1
                break
            else:
                raise _Fallback
            break
    rest = orjson.loads(mm[: open_pos + 1] + mm[close_pos:])
    if not isinstance(rest, dict) or rest.get(key) != []:
        raise _Fallback  # the key we found was not the top-level one
    return rest


def _parse_slice(mm: mmap.mmap, start: int, end: int) -> list | None:
    """``mm[start:end]`` parsed as the items of an array, or None when that is not valid JSON.

    The bytes are copied once, straight from the map into ``[`` ... ``]``.
    """
    buf = bytearray(end - start + 2)
    buf[0], buf[-1] = ord("["), ord("]")
    with memoryview(mm) as view:
        buf[1:-1] = view[start:end]
    try:
        items = orjson.loads(buf)
    except orjson.JSONDecodeError:
        return None
    return items if isinstance(items, list) else None


def _release(mm: mmap.mmap, end: int) -> None:
    """Drop the already parsed pages of the map from this process's RSS (Linux)."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    length = end - end % mmap.PAGESIZE
    if length > 0:
        mm.madvise(advice, 0, length)
