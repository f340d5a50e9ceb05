"""File names for free text (queries, categories): the text itself when it is a safe file name,
else a readable prefix + a hash, so queries of any length or script map to distinct safe names."""
from __future__ import annotations

import hashlib
import re

MAX_BYTES = 120          # well under the 255-byte name limit of ext4 / APFS / NTFS, with room for a suffix
_UNSAFE = re.compile(r'[/\\\x00-\x1f\x7f<>:"|?*]')   # path separators, control and Windows-reserved characters


def safe_stem(text: str) -> str:
    """``text`` if it is safe as a file stem, else ``<sanitised prefix>-<sha1[:10]>``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty query {text!r}: give some text")
    ok = (not _UNSAFE.search(text) and text == text.strip() and not text.startswith((".", "-"))
          and len(text.encode("utf-8")) <= MAX_BYTES)
    if ok:
        return text
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    prefix = _UNSAFE.sub("_", text.strip()).lstrip(".-")
    while len(prefix.encode("utf-8")) > 60:
        prefix = prefix[:-1]
    return f"{prefix}-{digest}" if prefix else digest
