"""Atomic file output and the small table formats twinnet reads and writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinnet.errors import TwinnetError

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def first_row(path: str | os.PathLike[str] | None) -> int:
    """The number error messages give a table's first data row: its line in a CSV/TSV file (line 1 is the
    header) or a JSONL file, its 1-based row in Parquet (or a DataFrame, ``path=None``)."""
    if path is None:
        return 1
    return 2 if TABLE_SUFFIXES.get(Path(path).suffix.lower()) in ("csv", "tsv") else 1


def table_format(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        from twinnet.data.images import IMAGE_EXTENSIONS

        if suffix in IMAGE_EXTENSIONS:
            raise TwinnetError("is a single image; pass an image folder (root/<identity>/<image>), a .zip of one, "
                               "or a table with an 'image' column of paths", file=path)
        raise TwinnetError(
            f"unsupported file type '{suffix or '(none)'}'; use one of {', '.join(sorted(TABLE_SUFFIXES))}",
            file=path)
    return TABLE_SUFFIXES[suffix]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A failure (or Ctrl-C) inside the block leaves any existing file untouched and no partial file.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise TwinnetError("output already exists; pass --overwrite to replace it", file=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes the file private (0600); give it what a plain open() would
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it replaces ``path`` only if the block succeeds.

    The old folder is moved aside and removed only after the new one is in place, so a failure or a
    kill while writing leaves the previous folder as it was.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise TwinnetError("folder already exists; pass --overwrite to replace it", file=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        # mkdtemp makes the folder private (0700) and some writers (safetensors) make private files (0600);
        # a saved model should carry the same permissions as any file the user writes
        mask = _umask()
        for folder, subfolders, files in os.walk(staging):
            os.chmod(folder, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~mask)
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n",
                       encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Write a DataFrame as CSV, TSV, JSONL or Parquet (chosen by suffix), atomically."""
    kind = table_format(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "tsv":
            frame.to_csv(tmp, index=False, sep="\t")
        elif kind == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)


def not_utf8(path: Path) -> TwinnetError:
    """The error for a file that is not UTF-8, naming the line of the first bad byte."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        start = 0
    except UnicodeDecodeError as exc:
        start = exc.start
    return TwinnetError(f"is not valid UTF-8 (byte {start}: {raw[start:start + 1]!r}); re-encode it as UTF-8",
                        file=path, row=raw[:start].count(b"\n") + 1)


def _table_path(path: str | os.PathLike[str]) -> tuple[Path, str]:
    path = Path(path)
    if not path.exists():
        raise TwinnetError("file not found", file=path)
    if path.is_dir():
        raise TwinnetError("expected a file but found a folder", file=path)
    return path, table_format(path)


@contextlib.contextmanager
def _table_errors(path: Path, kind: str) -> Iterator[None]:
    """Turn pandas' reading errors into one line that names the file."""
    try:
        yield
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except pd.errors.EmptyDataError:
        raise TwinnetError("file is empty", file=path) from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise TwinnetError(f"cannot be parsed as {kind}: {str(exc).splitlines()[0]}", file=path) from None


def _csv_options(kind: str) -> dict[str, Any]:
    return {"sep": "\t" if kind == "tsv" else ",", "dtype": str, "keep_default_na": False, "na_values": [""],
            "encoding": "utf-8", "encoding_errors": "strict"}


def read_table(path: str | os.PathLike[str], **csv_options: Any) -> pd.DataFrame:
    """Read CSV, TSV, JSONL or Parquet into a DataFrame of strings, with errors that name the file."""
    path, kind = _table_path(path)
    with _table_errors(path, kind):
        if kind in ("csv", "tsv"):
            return pd.read_csv(path, **{**_csv_options(kind), **csv_options})
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        return pd.read_parquet(path)

def iter_table(path: str | os.PathLike[str], chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """Read a table in chunks of ``chunk_rows`` rows (strings, as :func:`read_table`), so a large
    collection never has to sit in memory as a whole DataFrame."""
    path, kind = _table_path(path)
    with _table_errors(path, kind):
        if kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
            return
        if kind == "jsonl":
            reader = pd.read_json(path, lines=True, dtype=False, encoding="utf-8", chunksize=chunk_rows)
        else:
            reader = pd.read_csv(path, chunksize=chunk_rows, **_csv_options(kind))
        with reader:
            yield from reader


def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``twinnet`` section of a model folder's ``config.json``."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not folder.exists():
        raise TwinnetError("model folder not found", file=folder)
    if not config_file.exists():
        raise TwinnetError("not a twinnet model folder (no config.json)", file=folder)
    try:
        return json.loads(config_file.read_text())["twinnet"]
    except (KeyError, json.JSONDecodeError):
        raise TwinnetError("config.json has no 'twinnet' section: this is a plain encoder, not a trained twinnet "
                           "model; use SiameseModel.for_text(path) to start from it", file=folder) from None
