"""The one rule of every image-file source (a folder, a .tar, a folder of tar shards; timm's
readers in readers.py and the in-memory loader of sources.py alike): which entries are images
of which class, what is left out, and how one image is decoded.

- Hidden entries are never classes or samples, nor is anything below them: a name that starts
  with "." (`.ipynb_checkpoints`, `.DS_Store`, `._photo.jpg`, `.git`) or one of SYSTEM_NAMES
  (`__MACOSX`, ...).
- An image is a file whose extension, in any case (`.JPG`, `.Png`), is one of a still-image
  format that Pillow opens and decodes by itself (`image_extensions()`: every format Pillow
  registers less its stubs and the formats it needs another program or has no decoder for);
  any other file is "not an image". A file that shares an image's key (WebDataset's: its path
  up to the first dot of its name; a shard's `<key>.cls`, an `.xmp` beside a photo) is part
  of that sample, not counted.
- An image's class is the name of the folder it lies in (timm's leaf-folder labels; in a
  folder of tars the tar's name is the outer folder); classes are in natural order (timm's
  natural_key). An image directly in the root has no class ("outside class folders").
- A folder with no image anywhere below it is not a class: it is named as an empty folder.
- Everything left out is counted and named in `LeftOut`: the run's summary line and
  DIR/data.json (`skipped_entries`) say what was not read.

`read_image` decodes one image: the first frame (GIF, animated WebP, multi-page TIFF), EXIF
orientation applied, converted to "RGB" or "L" (palette with transparency, grey + alpha, RGBA
and CMYK included; alpha dropped; 16-bit grey scaled to 8 bits).
"""

from __future__ import annotations

import functools
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch

SYSTEM_NAMES = frozenset({"__MACOSX", "@eaDir", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN"})
# Pillow formats that open but do not decode a still image by themselves
NOT_DECODED = frozenset({"EPS", "MPEG"})  # EPS needs Ghostscript; MPEG: no decoder
SHARD_METADATA = frozenset({"info.json"})  # beside the tars of `mixfast data shard`
TARINFO_CACHE = re.compile(r"_.*_tarinfos\.pickle$")  # timm's cache beside large tars


def is_hidden(name: str) -> bool:
    """A dot name or a system name: never a class or a sample."""
    return name.startswith(".") or name in SYSTEM_NAMES


@functools.cache
def image_extensions() -> frozenset[str]:
    """Lower-case extensions (".jpg", ...) of every still-image format this Pillow opens and
    decodes by itself."""
    from PIL import Image, ImageFile

    Image.init()
    extensions = set()
    for extension, format_name in Image.registered_extensions().items():
        opener = Image.OPEN.get(format_name) or (
            Image.OPEN.get("JPEG") if format_name == "MPO" else None  # MPO opens as JPEG
        )
        if opener is None or format_name in NOT_DECODED:
            continue
        factory = opener[0]
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue  # BUFR, GRIB, HDF5, WMF: need a handler from outside Pillow
        extensions.add(extension.lower())
    return frozenset(extensions)


def is_image_name(name: str) -> bool:
    """A visible file name with an image extension (any case)."""
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in image_extensions()


def kept(parts: Sequence[str], label: str) -> bool:
    """Whether an image at relative path `parts` (folders..., file) with class `label` is a
    sample: no hidden part and a class folder (timm labels an image in the root "", or "."
    in a tar written from `.`; a "." part is that root, not a hidden name)."""
    return label not in ("", ".") and not any(is_hidden(p) for p in parts if p not in ("", "."))


@contextmanager
def timm_extensions() -> Iterator[None]:
    """timm's readers, while this lasts, find the files of image_extensions() (their default
    is .png, .jpg, .jpeg; the tar reader takes no other argument for it)."""
    from timm.data import get_img_extensions, set_img_extensions

    before = get_img_extensions()
    set_img_extensions(sorted(image_extensions()))
    try:
        yield
    finally:
        set_img_extensions(before)


# --------------------------------------------------------------------------------------------
# What a source holds, and what is left out


@dataclass(frozen=True)
class LeftOut:
    """The entries of a source that are not samples, by kind, each named by its path relative
    to the source (a hidden folder once, not its contents)."""

    hidden: tuple[str, ...] = ()
    not_images: tuple[str, ...] = ()
    empty_folders: tuple[str, ...] = ()
    outside_classes: tuple[str, ...] = ()

    WORDS = {
        "hidden": "hidden",
        "not_images": "non-image file(s)",
        "empty_folders": "folder(s) without images",
        "outside_classes": "image(s) outside class folders",
    }

    def __len__(self) -> int:
        return sum(len(getattr(self, f.name)) for f in fields(self))

    def __add__(self, other: LeftOut) -> LeftOut:
        return LeftOut(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def prefixed(self, prefix: str) -> LeftOut:
        """Every name as PREFIX/name (the split folder of a train/val layout)."""
        return LeftOut(
            *(tuple(f"{prefix}/{n}" for n in getattr(self, f.name)) for f in fields(self))
        )

    def summary(self, listed: int = 3) -> str:
        """The line the run summary shows: `left out N entries: 2 hidden (.DS_Store, ...), ...`
        (empty when nothing is left out)."""
        if not len(self):
            return ""
        kinds = []
        for f in fields(self):
            names = getattr(self, f.name)
            if names:
                more = ", ..." if len(names) > listed else ""
                shown = ", ".join(names[:listed]) + more
                kinds.append(f"{len(names)} {self.WORDS[f.name]} ({shown})")
        return f"left out {len(self)} entries: " + ", ".join(kinds)

    def record(self, listed: int = 100) -> dict[str, Any]:
        """data.json's `skipped_entries`: the total, and per kind its count and first names."""
        out: dict[str, Any] = {"total": len(self)}
        for f in fields(self):
            names = getattr(self, f.name)
            out[f.name] = {"count": len(names), "names": list(names[:listed])}
        return out


@dataclass
class Survey:
    """What a source holds under the rule: its images (relative POSIX path, class), the
    classes in natural order, and what is left out."""

    images: list[tuple[str, str]]
    classes: tuple[str, ...]
    left_out: LeftOut


FILE, FOLDER, INNER_TAR = "file", "folder", "tar"  # the kinds of entries survey() takes


def survey(entries: Iterable[tuple[str, str]]) -> Survey:
    """The rule over (relative POSIX path, kind) entries, kind FILE, FOLDER or INNER_TAR (a
    tar inside a tar: timm reads the images in it, so it is neither counted nor an empty
    folder; they are not surveyed). Folders may be listed or only implied by the files below
    them; a hidden entry may come with its contents (counted once) or without them."""
    from timm.utils.misc import natural_key

    hidden: dict[str, None] = {}
    folders: set[str] = set()
    with_images: set[str] = {""}
    files: list[str] = []
    for rel, kind in entries:
        parts = rel.strip("/").split("/")
        first = next((i for i, part in enumerate(parts) if is_hidden(part)), None)
        if first is not None:
            hidden["/".join(parts[: first + 1])] = None
            continue
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + (kind == FOLDER)))
        if kind != FOLDER:
            files.append("/".join(parts) if kind == FILE else "/".join(parts) + "/")

    def holds_images(folder: str) -> None:
        while folder not in with_images:
            with_images.add(folder)
            folder = folder.rpartition("/")[0]

    images, keys, others, outside = [], set(), [], []
    for rel in files:
        folder, _, name = rel.rpartition("/")
        if not name:  # an inner tar ("PATH.tar/"): the folder it lies in holds images
            holds_images(folder.rpartition("/")[0])
        elif os.path.splitext(name)[1].lower() not in image_extensions():
            others.append(rel)
        elif not folder:
            outside.append(rel)
        else:
            images.append((rel, folder.rpartition("/")[2]))
            keys.add(_key(rel))
            holds_images(folder)
    not_images = [r for r in others if _key(r) not in keys and not _metadata(r)]
    empty = [f for f in folders - with_images if f.rpartition("/")[0] in with_images]
    classes = tuple(sorted({label for _, label in images}, key=natural_key))
    images.sort(key=lambda item: natural_key(item[0]))
    left_out = LeftOut(
        tuple(sorted(hidden, key=natural_key)),
        tuple(sorted(not_images, key=natural_key)),
        tuple(sorted(empty, key=natural_key)),
        tuple(sorted(outside, key=natural_key)),
    )
    return Survey(images, classes, left_out)


def _key(rel: str) -> str:
    """A sample's key (WebDataset: the path up to the first dot of the file name)."""
    folder, _, name = rel.rpartition("/")
    return f"{folder}/{name.split('.', 1)[0]}"


def _metadata(rel: str) -> bool:
    """A shard folder's own files: `mixfast data shard`'s info.json, timm's tarinfo cache."""
    return "/" not in rel and (rel in SHARD_METADATA or bool(TARINFO_CACHE.match(rel)))


def folder_entries(root: Path) -> Iterator[tuple[str, str]]:
    """Every entry under `root` (links followed, as timm does), not descending into hidden
    folders."""
    for folder, subdirs, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for name in subdirs:
            yield prefix + name, FOLDER
        subdirs[:] = sorted(d for d in subdirs if not is_hidden(d))
        for name in files:
            yield prefix + name, FILE


def tar_entries(path: Path, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every member of the tar at `path` (its headers only), each as PREFIX + member."""
    with tarfile.open(path) as tar:
        for member in tar:
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            if not name.strip("/.") or not (member.isfile() or member.isdir()):
                continue
            inner = member.isfile() and name.endswith(".tar")
            yield prefix + name, FOLDER if member.isdir() else INNER_TAR if inner else FILE


def survey_source(root: Path) -> Survey:
    """The survey of a folder of class folders, a .tar of them, or a folder of tars (each tar
    a folder named after it, as timm labels them)."""
    root = Path(root)
    if root.is_file():
        return survey(tar_entries(root))
    if is_tar_folder(root):
        return survey(_tar_folder_entries(root))
    return survey(folder_entries(root))


def is_tar_folder(root: Path) -> bool:
    """A folder of .tar files (shards, or one tar per class) with no visible sub-folder."""
    visible = [p for p in root.iterdir() if not is_hidden(p.name)]
    return any(_is_tar(p) for p in visible) and not any(p.is_dir() for p in visible)


def _is_tar(path: Path) -> bool:
    return path.suffix == ".tar" and path.is_file()  # what timm's glob("*.tar") finds


def _tar_folder_entries(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.iterdir()):
        if _is_tar(path) and not is_hidden(path.name):
            yield from tar_entries(path, prefix=f"{path.stem}/")
        else:
            yield path.name, FOLDER if path.is_dir() else FILE


# --------------------------------------------------------------------------------------------
# Decoding


def read_image(file: str | os.PathLike | IO[bytes], mode: str, size: int | None) -> torch.Tensor:
    """The image in `file` as uint8 [C, H, W] (C: 3 for mode "RGB", 1 for "L"): its first
    frame, EXIF orientation applied, converted to `mode`, resized to size x size when `size`
    is given. Pillow's errors pass through (the caller names the file)."""
    from PIL import Image

    with Image.open(file) as img:
        img = to_mode(oriented(img), mode)
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        width, height = img.size
    channels = 1 if mode == "L" else 3
    return data.view(height, width, channels).permute(2, 0, 1).contiguous()


ROTATING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def orientation(img: Any) -> int:
    """The EXIF orientation tag (1: as stored)."""
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except (ValueError, TypeError, SyntaxError, OSError):
        return 1  # a broken EXIF block: the pixels as stored


def oriented(img: Any) -> Any:
    """The image turned as its EXIF orientation says (PIL.ImageOps.exif_transpose)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img) if orientation(img) != 1 else img


def oriented_size(img: Any) -> tuple[int, int]:
    """(width, height) after the EXIF orientation, without decoding the pixels."""
    width, height = img.size
    return (height, width) if orientation(img) in ROTATING else (width, height)


def to_mode(img: Any, mode: str) -> Any:
    """`img` in "RGB" or "L": a palette through RGBA when it has transparency (Pillow's own
    advice), 16- and 32-bit integer grey scaled from 16 bits to 8, alpha dropped."""
    if img.mode == mode:
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    if img.mode == "I":
        img = img.point(lambda value: value * (1 / 256)).convert("L")
    if img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError:  # no direct conversion (LAB -> L): through RGB
        return img.convert("RGB").convert(mode)


__all__ = [
    "SYSTEM_NAMES",
    "LeftOut",
    "Survey",
    "folder_entries",
    "image_extensions",
    "is_hidden",
    "is_image_name",
    "is_tar_folder",
    "kept",
    "oriented",
    "oriented_size",
    "read_image",
    "survey",
    "survey_source",
    "tar_entries",
    "timm_extensions",
    "to_mode",
]
