"""Web archives: WARC files (zstd-compressed, gzip or plain) to Parquet, and the words of HTML bodies.

:class:`ImportWarcFiles` reads the WARC files of its input (``FileSet``/any dataset's resolved
paths) and writes, per file, one Parquet file of its HTTP responses (web pages, unless
``content_types`` says otherwise): ``url``, ``domain`` (the URL's host), ``date`` (the record's
``WARC-Date``, ISO 8601 text as written) and ``content`` (the response body, transfer and content
encodings undone). :class:`ExtractHtmlBody` streams such rows
and replaces ``content`` with ``tokens``, the words of the HTML ``<body>`` text (scripts and styles
left out), parsed by BeautifulSoup with lxml.

A ``.warc.zst`` file is a sequence of zstd frames (one per record, as the WARC zstd format writes
them, or one for the whole file); a dictionary in a leading skippable frame (magic ``0x184D2A5D``,
itself raw or zstd-compressed) is used to decompress the rest. gzip and uncompressed WARC files are
read as they are.

It needs the optional ``warc`` extra (``pip install "smallpond[warc]"``: warcio, beautifulsoup4,
lxml, zstandard). Nothing else in smallpond imports this module, so smallpond works without it.
"""

from __future__ import annotations

import importlib
import os
from typing import IO, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from smallpond.errors import ParameterError
from smallpond.logical.node import ArrowStreamNode, PythonScriptNode


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"smallpond.contrib.warc needs the optional 'warc' extra, which is not installed "
            f'(no module {module!r}, from the package {package}): pip install "smallpond[warc]"'
        ) from e


_require("warcio", "warcio")
_require("bs4", "beautifulsoup4")
_require("lxml", "lxml")
_require("zstandard", "zstandard")

#: the columns :class:`ImportWarcFiles` writes, in this order
WARC_COLUMNS = ("url", "domain", "date", "content")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DICT_FRAME_MAGIC = b"\x5d\x2a\x4d\x18"  # the skippable frame the WARC zstd format keeps its dictionary in
# a row group is written once this much content is buffered (a WARC file may hold gigabytes)
_FLUSH_BYTES = 64 << 20
_FLUSH_ROWS = 10_000


def warc_schema():
    """The Arrow schema of :class:`ImportWarcFiles`' output."""
    import pyarrow as pa

    return pa.schema([("url", pa.string()), ("domain", pa.string()), ("date", pa.string()), ("content", pa.binary())])


def _zstd_dictionary(raw: bytes, path: str):
    import zstandard

    if raw.startswith(_ZSTD_MAGIC):
        try:
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        except zstandard.ZstdError as e:
            raise ValueError(f"WARC file {path}: its zstd dictionary frame does not decompress: {e}") from e
    return zstandard.ZstdCompressionDict(raw)


def open_warc(path: str) -> Tuple[IO[bytes], List[IO[bytes]]]:
    """``path`` as an uncompressed (or gzip, which warcio reads itself) byte stream, and the
    streams to close after it."""
    import zstandard

    f = open(path, "rb")
    try:
        head = f.read(4)
        f.seek(0)
        if head == _DICT_FRAME_MAGIC or head == _ZSTD_MAGIC:
            dictionary = None
            if head == _DICT_FRAME_MAGIC:
                f.seek(4)
                size = int.from_bytes(f.read(4), "little")
                raw = f.read(size)
                if len(raw) != size:
                    raise ValueError(f"WARC file {path}: its zstd dictionary frame is cut short")
                dictionary = _zstd_dictionary(raw, path)
            d = zstandard.ZstdDecompressor(dict_data=dictionary) if dictionary is not None else zstandard.ZstdDecompressor()
            reader = d.stream_reader(f, read_across_frames=True)
            return reader, [reader, f]
        return f, [f]
    except BaseException:
        f.close()
        raise


#: the HTTP Content-Types :class:`ImportWarcFiles` keeps by default: web pages
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")


def _media_type(record) -> str:
    """The media type of a response's HTTP Content-Type (``text/html; charset=...`` -> ``text/html``)."""
    headers = record.http_headers
    value = headers.get_header("Content-Type") if headers is not None else None
    return (value or "").split(";", 1)[0].strip().lower()


def iter_warc_responses(
    path: str, content_types: Optional[Sequence[str]] = HTML_CONTENT_TYPES
) -> Iterator[Tuple[str, str, str, bytes]]:
    """``(url, domain, date, content)`` of each HTTP response record of the WARC file ``path`` whose
    Content-Type is one of ``content_types`` (None: every response; one without a Content-Type is
    kept)."""
    import zstandard
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    wanted = None if content_types is None else {t.lower() for t in content_types}

    stream, to_close = open_warc(path)
    try:
        try:
            for record in ArchiveIterator(stream):
                if record.format != "warc":  # warcio also reads ARC, and takes many a text line for one
                    raise ArchiveLoadFailed(f"found a record in {record.format!r} format, not WARC")
                if record.rec_type != "response":
                    continue
                if wanted is not None and _media_type(record) not in wanted | {""}:
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                date = record.rec_headers.get_header("WARC-Date") or ""
                content = record.content_stream().read()
                yield url, (urlsplit(url).hostname or ""), date, content
        except ArchiveLoadFailed as e:
            raise ValueError(f"{path} is not a readable WARC file: {e}") from e
        except zstandard.ZstdError as e:
            raise ValueError(f"{path}: zstd data is corrupt: {e}") from e
    finally:
        for s in to_close:
            s.close()


def write_warc_as_parquet(path: str, output_file: str, content_types: Optional[Sequence[str]] = HTML_CONTENT_TYPES) -> int:
    """Write the responses of WARC file ``path`` (those :func:`iter_warc_responses` gives) to the
    Parquet file ``output_file`` (an empty file with the columns when it has none); the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = warc_schema()
    rows = 0
    columns: List[list] = [[] for _ in WARC_COLUMNS]
    buffered = 0
    with pq.ParquetWriter(output_file, schema, compression="zstd") as writer:

        def flush() -> None:
            writer.write_table(pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema))
            for c in columns:
                c.clear()

        for values in iter_warc_responses(path, content_types):
            for c, v in zip(columns, values):
                c.append(v)
            rows += 1
            buffered += len(values[3])
            if buffered >= _FLUSH_BYTES or len(columns[0]) >= _FLUSH_ROWS:
                flush()
                buffered = 0
        if columns[0] or rows == 0:
            flush()
    return rows


class ImportWarcFiles(PythonScriptNode):
    """Import the WARC files of each input partition into Parquet (``url``, ``domain``, ``date``,
    ``content``): one output file per WARC file, ``{output_filename}-{i:05d}.parquet``, in the
    order of the partition's paths.

    ``content_types``: the HTTP Content-Types of the responses kept, web pages by default
    (:data:`HTML_CONTENT_TYPES`; a response without one is kept too); ``None`` keeps every response
    (images, PDFs, ...). Takes the keyword arguments of ``PythonScriptNode``."""

    def __init__(self, ctx, input_deps, *, content_types: Optional[Sequence[str]] = HTML_CONTENT_TYPES, **kwargs) -> None:
        super().__init__(ctx, input_deps, **kwargs)
        if content_types is not None:
            if isinstance(content_types, str) or not all(isinstance(t, str) and t for t in content_types):
                raise ParameterError(self._msg(f"content_types must be a list of media types or None, got {content_types!r}"))
            content_types = tuple(content_types)
        self.content_types = content_types

    def process(self, runtime_ctx, input_datasets, output_path: str) -> bool:
        paths = [p for ds in input_datasets for p in ds.resolved_paths]
        prefix = runtime_ctx.task.output_filename
        for i, path in enumerate(paths):
            write_warc_as_parquet(path, os.path.join(output_path, f"{prefix}-{i:05d}.parquet"), self.content_types)
        return True


def html_body_tokens(content: Optional[bytes]) -> List[str]:
    """The words (whitespace-separated) of the text of ``content``'s HTML ``<body>``, without
    scripts, styles, templates and ``<noscript>`` fallbacks ("please enable JavaScript"); none when
    it has no body."""
    if not content:
        return []
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(content, "lxml")
    body = soup.body
    if body is None:
        return []
    for tag in body.find_all(["script", "style", "noscript", "template"]):
        tag.decompose()
    return body.get_text(" ").split()


class ExtractHtmlBody(ArrowStreamNode):
    """Stream rows with a binary ``content`` column of HTML (what :class:`ImportWarcFiles` writes)
    and replace that column with ``tokens`` (``list<string>``: :func:`html_body_tokens`); the other
    columns are kept. Takes the keyword arguments of ``ArrowStreamNode``."""

    def process(self, runtime_ctx, input_readers: List) -> Iterable:
        import pyarrow as pa

        for batch in input_readers[0]:
            names = batch.schema.names
            if "content" not in names:
                raise ValueError(
                    f"{type(self).__name__}: the input has no 'content' column (columns: {', '.join(names)}); "
                    "it reads the HTML in 'content', as ImportWarcFiles writes it"
                )
            table = pa.Table.from_batches([batch])
            tokens = pa.array([html_body_tokens(c) for c in table.column("content").to_pylist()], type=pa.list_(pa.string()))
            yield table.drop_columns(["content"]).append_column("tokens", tokens)
