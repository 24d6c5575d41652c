"""Confinement of the files an asset refers to (glTF buffers and images, OBJ ``mtllib``, MTL ``map_*``).

One rule, owned here and applied by every loader: a reference resolves inside the asset's own folder after
percent-decoding (URIs only) and normalisation, with symlinks followed (a symlink that leaves the folder counts
as outside). Anything else (``../``, absolute paths, ``file:`` or any other URI scheme but ``data:``) is refused
with a one-line error that names the asset and the reference and says nothing about the target: the target is
never opened, stat-ed or checked for existence. Remote URLs are never fetched, not even with ``allow_outside``.

``allow_outside=True`` (``--allow-outside-refs`` on the command line) is for trusted files: relative and
absolute paths and ``file:`` URIs are then followed anywhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def _refuse(asset: Path, what: str, reference: str, why: str) -> ValueError:
    shown = reference if len(reference) <= 200 else reference[:200] + "..."
    return ValueError(f"{asset}: {what} refers to {shown!r}, {why}; refused (pass allow_outside=True or "
                      "--allow-outside-refs only for trusted files)")


def resolve_reference(asset: Path, reference: str, what: str, allow_outside: bool = False,
                      uri: bool = False, base: Optional[Path] = None, referrer: Optional[Path] = None) -> Path:
    """The file that ``reference`` (made by ``asset``) names, if it may be read.

    Args:
        asset: the file holding the reference; its folder is the confinement root.
        reference: the reference as written (a glTF URI when ``uri``, else a plain relative path).
        what: what refers, for the message (``"buffer 0"``, ``"mtllib"``).
        allow_outside: follow paths anywhere (never URLs of other schemes than ``file:``).
        uri: decode ``reference`` as a URI (percent-escapes, ``file:``).
        base: the folder a relative reference starts from (an MTL file's folder); default the asset's folder.
        referrer: the file that holds the reference when it is not ``asset`` (an MTL file), for the message.

    Raises:
        ValueError: the reference leaves the folder (and ``allow_outside`` is off), is a URL, or is malformed.
    """
    if not isinstance(reference, str) or not reference.strip() or "\x00" in reference:
        raise ValueError(f"{asset}: {what} has an empty or malformed file reference")
    text = reference.strip()
    if uri:
        match = _SCHEME.match(text)
        if match and len(match.group(1)) > 1:  # one letter: a Windows drive, handled as an absolute path below
            scheme = match.group(1).lower()
            if scheme != "file":
                raise _refuse(asset, what, reference, f"a {scheme}: URL (remote files are never fetched)")
            if not allow_outside:
                raise _refuse(asset, what, reference, "a file: URI")
            text = urlsplit(text).path
        text = unquote(text)
        if "\x00" in text:
            raise ValueError(f"{asset}: {what} has a malformed file reference")
    root = Path(os.path.abspath(asset)).parent
    start = Path(os.path.abspath(base)) if base is not None else root
    if referrer is not None:
        what = f"{referrer.name}: {what}"
    if allow_outside:
        return start / text
    if os.path.isabs(text) or re.match(r"^[A-Za-z]:", text) or text.startswith(("\\", "/")):
        raise _refuse(asset, what, reference, "an absolute path")
    # Lexical check first, so that nothing outside the folder is touched when the reference leaves it.
    lexical = os.path.normpath(os.path.join(start, text.replace("\\", "/")))
    if os.path.commonpath([lexical, str(root)]) != str(root):
        raise _refuse(asset, what, reference, "outside the asset's folder")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(lexical))
    if not real.is_relative_to(real_root):
        raise _refuse(asset, what, reference, "a symlink that leaves the asset's folder")
    return Path(lexical)
