"""Image sources: folders, manifests and in-memory tensors, all yielding the same records.

Every source yields :class:`Record` objects ``(id, image, label, metadata, error)``:

- ``image`` is a float tensor ``(3, H, W)`` with RGB pixels in ``[0, 1]`` (every PIL mode is decoded to RGB;
  alpha is composited over white; 16-bit and float images are scaled, not clipped);
- ``label`` is a class index or ``None``;
- a file that cannot be read or decoded gives a record with ``image=None`` and ``error`` set to the reason. It never
  raises: a bad sample in a large run is recorded and the run goes on.

:func:`open_source` turns a command-line string into a source; :func:`iter_batches` groups records into stacked
batches with a bounded memory footprint (one batch of decoded images at a time).
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from .registry import Registry

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCE_KINDS",
    "Batch",
    "DataSourceError",
    "FlatFolder",
    "ImageFolder",
    "ImageSource",
    "Manifest",
    "Record",
    "TensorSource",
    "decode_image",
    "iter_batches",
    "open_source",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k"})


class DataSourceError(ValueError):
    """A data source cannot be opened at all (missing folder, malformed manifest); per-file problems are records."""


@dataclass
class Record:
    """One sample: ``image`` is ``(3, H, W)`` float in ``[0, 1]``, or ``None`` with ``error`` saying why."""

    id: str
    image: Tensor | None
    label: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------------------------------------- decoding

def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image → float32 array (H, W, 3) in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float32)
        scale = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr / scale, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img).astype(np.float32)
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            arr = arr / 255.0
        grey = np.clip(np.nan_to_num(arr), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, HSV, RGBX, ...
    return np.asarray(img, dtype=np.float32) / 255.0


def decode_image(source: str | Path | bytes | Image.Image) -> Tensor:
    """Decode a file path, raw bytes or PIL image into a ``(3, H, W)`` float tensor in ``[0, 1]``.

    Applies the EXIF orientation. Raises ``ValueError`` with the reason when the data is not a readable image
    (image sources turn that into an error record).
    """
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                img = source
            else:
                if isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
                    raise ValueError("the file is empty (0 bytes)")
                img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            img.load()  # force the full decode here: truncated files fail now, not later
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # broken EXIF must not lose an otherwise good image
                pass
            array = _to_rgb_array(img)
    except ValueError:
        raise
    except FileNotFoundError:
        raise ValueError("the file does not exist") from None
    except Exception as exc:  # PIL raises many types: UnidentifiedImageError, OSError (truncated), SyntaxError...
        raise ValueError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"decoded to an empty image of shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not valid UTF-8 (which Python keeps as lone surrogates) written
    as ``\\xNN``: ids, paths and class names go to CSV, JSON, SQLite and HTML, which cannot hold surrogates."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _relative_id(path: Path, root: Path) -> str:
    return printable(path.relative_to(root).as_posix())


def _file_record(path: Path, rid: str, label: int | None, metadata: dict[str, Any]) -> Record:
    metadata = {k: printable(v) if isinstance(v, str) else v for k, v in metadata.items()}
    try:
        return Record(rid, decode_image(path), label, metadata)
    except ValueError as exc:
        return Record(rid, None, label, metadata, error=printable(f"{path}: {exc}"))


# ---------------------------------------------------------------------------------------------- sources

class ImageSource:
    """Base class: an iterable of :class:`Record`, with ``len()`` and optional ``class_names``."""

    class_names: list[str] | None = None
    note: str | None = None  # how the source was read, when that is not obvious (shown to the user)

    def __iter__(self) -> Iterator[Record]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        out = {"kind": type(self).__name__, "size": len(self), "class_names": self.class_names}
        if self.note:
            out["note"] = self.note
        return out

    def ids(self) -> list[str]:
        """Every sample's id, in iteration order. Sources that list their files override this so nothing is
        decoded; the default iterates (and decodes) once."""
        return [record.id for record in self]

    def take(self, positions: Iterable[int]) -> Iterator[Record]:
        """The records at ``positions`` (indices into iteration order), in the order given: how a worker reads
        its share of the data without the driver decoding it. Sources with random access override this; the
        default iterates once."""
        wanted = [int(p) for p in positions]
        if any(p < 0 or p >= len(self) for p in wanted):
            outside = [p for p in wanted if not 0 <= p < len(self)]
            raise IndexError(f"positions must be in [0, {len(self)}), got {outside[:5]}")
        found = {}
        lookup = set(wanted)
        for position, record in enumerate(self):
            if position in lookup:
                found[position] = record
        return iter([found[p] for p in wanted])


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _image_files(root: Path) -> list[Path]:
    """The image files under ``root``, sorted (see :func:`_walk_image_files`)."""
    return sorted(_walk_image_files(root))


def _walk_image_files(root: Path) -> Iterator[Path]:
    """The image files under ``root``, as they are found: sub-folders reached through symbolic links are followed
    (each real folder once, so a link loop ends), hidden files and everything inside hidden folders (``.thumbs/``,
    ``.ipynb_checkpoints/``) are skipped, and a link to a file that is gone is listed, to become an error row
    rather than vanish."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if (not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
                    and (path.is_file() or (path.is_symlink() and not path.exists()))):
                yield path


class ImageFolder(ImageSource):
    """``root/<class name>/<image>``: labels are the indices of the sorted sub-folder names.

    Files with an image extension are listed (recursively inside each class folder); each file is decoded only
    when iterated. ``class_names`` can be given to fix the label order (e.g. the model's own class list);
    sub-folders not in it are refused. Without ``class_names``, sub-folders named by integers (``0``, ``1``, …,
    ``10``) are class indices, not positions in sorted order (``"10"`` sorts before ``"2"``). ``num_classes``
    (the model's) refuses labels the model cannot have.
    """

    def __init__(self, root: str | Path, class_names: Sequence[str] | None = None, num_classes: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataSourceError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        folders = _sub_folders(self.root)
        if not folders:
            raise DataSourceError(f"{str(self.root)!r} has no class sub-folders; use FlatFolder for unlabelled "
                                  "images")
        if class_names is None and all(_is_index(f) for f in folders):
            index = {name: int(name) for name in folders}
            self.class_names = None
            too_high = [f for f in folders if num_classes is not None and int(f) >= num_classes]
            if too_high:
                raise DataSourceError(f"sub-folders {too_high} are not class indices of a {num_classes}-class model "
                                      f"(0 to {num_classes - 1})")
        else:
            names = list(class_names) if class_names is not None else folders
            unknown = [printable(f) for f in folders if f not in names]
            if unknown:
                raise DataSourceError(f"sub-folders {unknown} are not among the class names {names}")
            if num_classes is not None and len(names) > num_classes:
                raise DataSourceError(f"{str(self.root)!r} has {len(names)} class sub-folders but the "
                                      f"model has {num_classes} classes; name the sub-folders by class index "
                                      f"(0 to {num_classes - 1}) or give the model's class names (--classes)")
            index = {name: i for i, name in enumerate(names)}
            self.class_names = [printable(name) for name in names]
        self.items = [(p, index[folder]) for folder in folders for p in _image_files(self.root / folder)]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Record]:
        return self.take(range(len(self.items)))

    def ids(self) -> list[str]:
        return [_relative_id(path, self.root) for path, _ in self.items]

    def take(self, positions: Iterable[int]) -> Iterator[Record]:
        for position in positions:
            path, label = self.items[position]
            yield _file_record(path, _relative_id(path, self.root), label,
                               {"path": str(path), "class_folder": path.relative_to(self.root).parts[0]})


class FlatFolder(ImageSource):
    """Every image file under ``root`` (recursively), without labels; ``root`` may also be one image file. ``note``
    says why a folder with sub-folders was read this way (see :func:`open_source`)."""

    def __init__(self, root: str | Path, note: str | None = None):
        self.root = Path(root)
        self.note = note
        if self.root.is_file() and self.root.suffix.lower() in IMAGE_EXTENSIONS:  # a single image file
            self.items, self.root = [self.root], self.root.parent
            return
        if not self.root.is_dir():
            raise DataSourceError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        self.items = _image_files(self.root)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Record]:
        return self.take(range(len(self.items)))

    def ids(self) -> list[str]:
        return [_relative_id(path, self.root) for path in self.items]

    def take(self, positions: Iterable[int]) -> Iterator[Record]:
        for position in positions:
            path = self.items[position]
            yield _file_record(path, _relative_id(path, self.root), None, {"path": str(path)})


class Manifest(ImageSource):
    """A CSV or JSON Lines file with one row per image.

    Columns: ``path`` (required; relative paths are relative to the manifest's folder), ``label`` (optional: a
    class index or a class name), ``id`` (optional, unique; default: the path) and any number of metadata columns,
    kept as they are (numbers parsed in CSV). String labels are mapped through ``class_names``; without them, a
    manifest whose labels are all names maps them to their sorted unique values, and in one that mixes indices and
    names the names are error rows. With ``num_classes`` (the model's), a label the model cannot have is an error
    row. CSV files may start with a byte-order mark (Excel's "CSV UTF-8").
    """

    def __init__(self, path: str | Path, class_names: Sequence[str] | None = None, num_classes: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataSourceError(f"manifest {str(self.path)!r} does not exist")
        rows = self._read_rows()
        if not rows:
            raise DataSourceError(f"manifest {str(self.path)!r} has no rows")
        missing = next((n for n, row in enumerate(rows, 1) if "path" not in row), None)
        if missing is not None:
            found = sorted(rows[missing - 1])
            raise DataSourceError(f"manifest {str(self.path)!r} needs a 'path' column in every row; row {missing} has "
                                  f"the columns {found}" + (" (cfx reads comma-separated CSV files)"
                                                            if self.path.suffix.lower() == ".csv" else ""))
        labels = [row.get("label") for row in rows]
        text_labels = sorted({str(v) for v in labels if isinstance(v, str) and v != "" and not _is_int(v)})
        has_indices = any(_as_index(v) is not None for v in labels)
        self.num_classes = num_classes
        if class_names is not None:
            self.class_names = list(class_names)
        elif text_labels and not has_indices:
            if num_classes is not None and len(text_labels) > num_classes:
                raise DataSourceError(f"manifest {str(self.path)!r} has {len(text_labels)} label names but the model "
                                      f"has {num_classes} classes; write class indices (0 to {num_classes - 1}) "
                                      "or give the model's class names (--classes)")
            self.class_names = text_labels
        else:
            self.class_names = None
        self.rows = rows
        # ids: the given one, else the path; a path listed again without an id gets "#2", "#3", … so no row is lost
        self._ids, taken = [], Counter()
        for n, row in enumerate(rows, 1):
            rid = str(row["id"]) if "id" in row else (f"(row {n}: no path)" if _no_path(row) else str(row["path"]))
            taken[rid] += 1
            if "id" not in row and taken[rid] > 1:
                rid = f"{rid}#{taken[rid]}"
            self._ids.append(rid)
        twice = sorted(i for i, count in Counter(self._ids).items() if count > 1)
        if twice:
            raise DataSourceError(f"manifest {str(self.path)!r} repeats ids {twice[:5]}: every row needs its own id "
                                  "(drop the 'id' column to use the paths)")

    def _read_rows(self) -> list[dict[str, Any]]:
        suffix = self.path.suffix.lower()
        if suffix == ".csv":
            with self.path.open(newline="", encoding="utf-8-sig") as fh:
                return [{k.strip(): _parse_cell(v) for k, v in row.items() if k is not None}
                        for row in csv.DictReader(fh)]
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            for n, line in enumerate(self.path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataSourceError(f"{self.path}:{n} is not valid JSON: {exc}") from None
            return rows
        raise DataSourceError(f"manifest must be .csv or .jsonl, got {self.path.name!r}")

    def _label(self, value: Any) -> tuple[int | None, str | None]:
        if value is None or value == "":
            return None, None
        index = _as_index(value)
        if index is None and self.class_names is not None and str(value) in self.class_names:
            index = self.class_names.index(str(value))
        if index is None:
            if self.class_names is None and isinstance(value, str):
                return None, (f"label {value!r} is a name, but the model has no class names and this manifest's "
                              "other labels are class indices; write the index or give the class names (--classes)")
            if self.class_names is None:
                return None, f"label {value!r} is not a class index (a whole number)"
            return None, f"label {value!r} is not one of the class names {self.class_names}"
        if index < 0 or (self.num_classes is not None and index >= self.num_classes):
            return None, (f"label {value!r} is not a class of this model (class indices 0 to "
                          f"{self.num_classes - 1 if self.num_classes else '…'})")
        return index, None

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self) -> list[str]:
        return list(self._ids)

    def __iter__(self) -> Iterator[Record]:
        return self.take(range(len(self.rows)))

    def take(self, positions: Iterable[int]) -> Iterator[Record]:
        for position in positions:
            row = self.rows[position]
            path = Path(str(row["path"]))
            if not path.is_absolute():
                path = self.path.parent / path
            rid = self._ids[position]
            metadata = {k: v for k, v in row.items() if k not in ("path", "label", "id")}
            label, problem = self._label(row.get("label"))
            if _no_path(row):
                problem = f"row {position + 1} of {self.path.name} has an empty path"
            if problem:
                yield Record(rid, None, None, metadata, error=problem)
                continue
            record = _file_record(path, rid, label, metadata)
            given = Path(str(row["path"]))
            if (record.error or "").endswith("the file does not exist") and not given.is_absolute() and given.is_file():
                record.error += (f": paths in a manifest are read relative to the manifest's "
                                f"folder ({self.path.parent}), and {str(given)!r} is there only relative to the "
                                "working directory; write paths relative to the manifest, or absolute ones")
            yield record


def _no_path(row: dict[str, Any]) -> bool:
    """A manifest row whose path cell is empty (CSV) or NaN (how pandas reads an empty cell)."""
    text = str(row["path"]).strip()
    return not text or text.lower() == "nan"


def _as_index(value: Any) -> int | None:
    """A label written as a class index (``3``, ``"3"``, or ``3.0`` as pandas writes integer columns with gaps)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and _is_int(value)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def _is_index(name: str) -> bool:
    """Whether a folder name is a class index (``0``, ``12``)."""
    return name.isdigit()


def _sub_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except (TypeError, ValueError):
        return False


def _parse_cell(value: str | None) -> Any:
    if value is None:
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class TensorSource(ImageSource):
    """In-memory images: a tensor or array ``(N, 3, H, W)`` / ``(N, H, W, 3)`` / ``(N, H, W)``, uint8 or float.

    uint8 is divided by 255; float must already be in ``[0, 1]`` (checked). ``metadata`` is a list of dicts or a
    dict of columns.
    """

    def __init__(self, images: Tensor | np.ndarray, labels: Sequence[int] | Tensor | None = None,
                 ids: Sequence[str] | None = None, metadata: Sequence[dict] | dict[str, Sequence] | None = None,
                 class_names: Sequence[str] | None = None):
        x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
        if not isinstance(x, Tensor):
            raise DataSourceError(f"images must be a tensor or numpy array, got {type(images).__name__}")
        if x.dim() == 3 and x.shape[0] == 3 and min(x.shape[1:]) > 3:
            raise DataSourceError(f"a {tuple(x.shape)} tensor could be one RGB image or three grey ones: pass "
                                  "x.unsqueeze(0) for one image, x.unsqueeze(1) for three grey images")
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (N, H, W) grey
        if x.dim() != 4:
            raise DataSourceError(f"images must be (N, 3, H, W), (N, H, W, 3) or (N, H, W); got {tuple(x.shape)}")
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] not in (1, 3):
            raise DataSourceError(f"images need 1 or 3 channels, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            x = x.float()
            if x.numel() and (x.min() < 0 or x.max() > 1 or not torch.isfinite(x).all()):
                raise DataSourceError("float images must be finite and in [0, 1]; divide 0-255 images by 255")
        else:
            raise DataSourceError(f"images must be uint8 or float, got {x.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        n = x.shape[0]
        self.images = x
        self.labels = None if labels is None else [None if int(v) < 0 else int(v) for v in torch.as_tensor(labels)]
        if self.labels is not None and len(self.labels) != n:
            raise DataSourceError(f"{len(self.labels)} labels for {n} images")
        self.sample_ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
        if len(self.sample_ids) != n:
            raise DataSourceError(f"{len(self.sample_ids)} ids for {n} images")
        if len(set(self.sample_ids)) != n:  # a run stores one result per id: a repeated one would be lost
            seen: set[str] = set()
            repeated = sorted({i for i in self.sample_ids if i in seen or seen.add(i)})
            raise DataSourceError(f"ids must be unique, {len(repeated)} repeat (e.g. {repeated[:3]}); give each "
                                  "image its own id")
        if isinstance(metadata, dict):
            metadata = [{k: _plain(v[i]) for k, v in metadata.items()} for i in range(n)]
        self.metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
        if len(self.metadata) != n:
            raise DataSourceError(f"{len(self.metadata)} metadata rows for {n} images")
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __iter__(self) -> Iterator[Record]:
        return self.take(range(len(self)))

    def take(self, positions: Iterable[int]) -> Iterator[Record]:
        for i in positions:
            yield Record(self.sample_ids[i], self.images[i], self.labels[i] if self.labels else None, self.metadata[i])

    def ids(self) -> list[str]:
        return list(self.sample_ids)


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------- batching

@dataclass
class Batch:
    """Stacked good records plus the error records met while filling the batch."""

    ids: list[str]
    images: Tensor  # (B, 3, H, W)
    labels: Tensor  # (B,), -1 where unknown
    metadata: list[dict[str, Any]]
    errors: list[Record]

    def __len__(self) -> int:
        return len(self.ids)


def iter_batches(source: Iterable[Record], batch_size: int = 64,
                 size: tuple[int, int] | None = None) -> Iterator[Batch]:
    """Group records into batches of at most ``batch_size`` decoded images.

    Images of another size than ``size`` are resized (bilinear, antialiased); without ``size``, the first good
    image's size is used. Error records ride along in ``Batch.errors`` (a batch may hold only errors).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    target = tuple(size) if size is not None else None
    ids: list[str] = []
    images: list[Tensor] = []
    labels: list[int] = []
    metas: list[dict[str, Any]] = []
    errors: list[Record] = []

    def flush() -> Batch:
        batch = Batch(list(ids), torch.stack(images) if images else torch.empty(0, 3, *(target or (0, 0))),
                      torch.tensor(labels, dtype=torch.long), list(metas), list(errors))
        ids.clear(), images.clear(), labels.clear(), metas.clear(), errors.clear()
        return batch

    for record in source:
        if record.error is not None or record.image is None:
            errors.append(record)
        else:
            image = record.image
            if target is None:
                target = tuple(image.shape[-2:])
            if tuple(image.shape[-2:]) != target:
                shrink = image.shape[-2] > target[0] or image.shape[-1] > target[1]
                image = F.interpolate(image[None], size=target, mode="bilinear", align_corners=False,
                                      antialias=shrink)[0].clamp(0, 1)
            ids.append(record.id)
            images.append(image)
            labels.append(-1 if record.label is None else int(record.label))
            metas.append(record.metadata)
        if len(ids) >= batch_size:
            yield flush()
    if ids or errors:
        yield flush()


#: Data source kinds: ``KIND:TARGET`` → ``opener(spec) -> ImageSource``. Plugins add theirs (the demo adds
#: ``demo:``); see :mod:`cfx.core.registry`.
SOURCE_KINDS: Registry[Callable[[str], ImageSource]] = Registry("data source kind")


def open_source(spec: str | Path | ImageSource, class_names: Sequence[str] | None = None,
                num_classes: int | None = None) -> ImageSource:
    """Open a data source from a command-line string.

    - a folder with class sub-folders → :class:`ImageFolder`; a folder of images → :class:`FlatFolder`;
    - ``*.csv`` / ``*.jsonl`` → :class:`Manifest`;
    - ``KIND:TARGET`` for a registered source kind (:data:`SOURCE_KINDS`): the demo plugin adds
      ``demo:shapes[:SPLIT]`` and ``demo:digits[:SPLIT]`` (SPLIT: train, calibration, test, all, review; default
      test).

    ``class_names`` and ``num_classes`` are the model's. Sub-folders that cannot be its classes (none of them is a
    class name; or, for a model without class names, they are not class indices and there are not as many as the
    model has classes, e.g. ``2024-01/``, ``2024-02/``) are read as one unlabelled folder, and the source's
    ``note`` says so.
    """
    if isinstance(spec, ImageSource):
        return spec
    if not isinstance(spec, (str, Path)):
        raise DataSourceError(f"a data source is a folder, a CSV/JSONL manifest or KIND:TARGET, got a "
                              f"{type(spec).__name__}; wrap images already in memory in TensorSource(images, labels)")
    text = str(spec)
    if not text.strip():
        raise DataSourceError("the data source is an empty string; give a folder, a CSV/JSONL manifest or KIND:TARGET")
    kind, sep, _ = text.partition(":")
    if sep and len(kind) > 1 and not Path(text).exists():  # KIND:TARGET (a one-letter kind is a Windows drive)
        opener = SOURCE_KINDS.find(kind.lower())
        if opener is not None:
            return opener(text)
    path = Path(text)
    if path.is_dir():
        has_class_dirs = any(p.is_dir() and not p.name.startswith(".") and next(_walk_image_files(p), None)
                             for p in path.iterdir())  # stops at the first image: no full listing
        has_top_images = any(_is_image_file(p) for p in path.iterdir())
        if has_class_dirs and not has_top_images:
            folders = _sub_folders(path)
            if class_names is not None:
                labelled = any(f in class_names for f in folders)
            else:
                labelled = all(_is_index(f) for f in folders) or num_classes is None or len(folders) == num_classes
            if labelled:
                return ImageFolder(path, class_names, num_classes)
            return FlatFolder(path, note=(
                f"the sub-folders ({', '.join(folders[:5])}{', …' if len(folders) > 5 else ''}) are not "
                + ("class names of the model" if class_names is not None else
                   f"class indices, nor as many as the model's {num_classes} classes")
                + ": their images are read without labels"))
        return FlatFolder(path)
    if path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        return Manifest(path, class_names, num_classes)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:  # one image: a folder of one
        return FlatFolder(path)
    if not path.exists():
        raise DataSourceError(f"data source {text!r} does not exist; give a folder, a .csv/.jsonl manifest or "
                              "demo:shapes / demo:digits")
    raise DataSourceError(f"cannot tell what kind of data source {text!r} is; give a folder, a .csv/.jsonl "
                          "manifest or demo:shapes / demo:digits")
