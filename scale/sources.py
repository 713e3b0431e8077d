"""A batch job's inputs: a folder or a glob of images, or a Parquet/CSV table with a ``path`` column
(or the images' encoded bytes in an ``image`` column) and an optional ``text`` column. Paths may be
local or any URI pyarrow's file systems read (``s3://``, ``gs://``, ``hdfs://``, ``file://``).

:func:`read_source` returns the job's rows as a pyarrow table: ``path`` (unique: a row's name in
the output, the key ``--resume`` skips by), and ``image`` (bytes) and ``text`` where the source has
them. Images are read and decoded later, inside the workers (:func:`read_image_bytes`)."""

from __future__ import annotations

import glob
from pathlib import Path

import pyarrow as pa

from edgevfm.runtime.errors import InputError
from edgevfm.runtime.image import IMAGE_SUFFIXES, list_images

PATH, IMAGE, TEXT = "path", "image", "text"
TABLE_SUFFIXES = (".parquet", ".csv")


def is_uri(source: str) -> bool:
    return "://" in source


def read_source(source: str) -> pa.Table:
    """The rows of ``source`` (see the module's docstring); an ``InputError`` says what was wrong
    with it: nothing found, a table without a path or image column, a path given twice."""
    source = str(source)
    if source.lower().endswith(TABLE_SUFFIXES):
        table = _read_table(source)
    elif is_uri(source):
        table = pa.table({PATH: _list_remote(source)})
    elif any(ch in source for ch in "*?["):
        table = pa.table({PATH: sorted(p for p in glob.glob(source, recursive=True)
                                       if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file())})
    elif Path(source).is_dir():
        table = pa.table({PATH: [str(p) for p in list_images(source)]})
    else:
        raise InputError(f"--input {source!r} is neither a folder, a glob, a URI nor a .parquet/.csv file: pass "
                         "a folder of images, a pattern such as 'photos/**/*.jpg', or a table with a path column")
    if table.num_rows == 0:
        raise InputError(f"--input {source!r} holds no images (image files end in "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}): point it at images")
    return _checked(table, source)


def _read_table(source: str) -> pa.Table:
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if source.lower().endswith(".parquet"):
            table = pyarrow.parquet.read_table(source)
        else:
            with _open(source) as stream:
                table = pyarrow.csv.read_csv(stream)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"--input {source!r} cannot be read as a table ({type(exc).__name__}: {exc})") from None
    columns = set(table.column_names)
    if PATH not in columns and IMAGE not in columns:
        raise InputError(f"--input {source!r} has the columns {sorted(columns)} but no {PATH!r} (image paths) or "
                         f"{IMAGE!r} (encoded image bytes): name the column that holds the images so")
    keep = [c for c in (PATH, IMAGE, TEXT) if c in columns]
    table = table.select(keep)
    if PATH not in columns:  # images as bytes only: a row is named by its place in the table
        table = table.append_column(PATH, pa.array([f"{source}#{i}" for i in range(table.num_rows)]))
    for name, kinds in ((PATH, (pa.string(), pa.large_string())), (TEXT, (pa.string(), pa.large_string())),
                        (IMAGE, (pa.binary(), pa.large_binary()))):
        if name in table.column_names and table.schema.field(name).type not in kinds:
            raise InputError(f"--input {source!r}: column {name!r} holds {table.schema.field(name).type}, expected "
                             f"{'bytes' if name == IMAGE else 'strings'}")
    return table


def _checked(table: pa.Table, source: str) -> pa.Table:
    paths = table.column(PATH)
    if paths.null_count:
        raise InputError(f"--input {source!r}: {paths.null_count} rows have no {PATH!r}: give every row one")
    seen, twice = set(), []
    for path in paths.to_pylist():
        if path in seen:
            twice.append(path)
        seen.add(path)
    if twice:
        raise InputError(f"--input {source!r} names {len(twice)} images more than once ({twice[:3]}): each row's "
                         f"{PATH!r} is its name in the output, so it must be unique")
    return table


def _list_remote(source: str) -> list[str]:
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(source)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"--input {source!r} cannot be listed ({type(exc).__name__}: {exc})") from None
    scheme = source.split("://", 1)[0]
    return sorted(f"{scheme}://{info.path}" for info in infos
                  if info.type == pyarrow.fs.FileType.File and Path(info.path).suffix.lower() in IMAGE_SUFFIXES)


def _open(path: str):
    if not is_uri(path):
        return open(path, "rb")
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    return fs.open_input_stream(inner)


def read_image_bytes(path: str) -> bytes:
    """An image file's bytes, local or remote; an ``InputError`` when it cannot be read."""
    try:
        with _open(path) as stream:
            return stream.read()
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path!r} cannot be read ({type(exc).__name__}: {exc})") from None
