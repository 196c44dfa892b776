"""smallpond.contrib.warc (reference §5.4): real WARC files written with warcio and compressed with
zstd run through ImportWarcFiles and ExtractHtmlBody in real jobs; without the 'warc' extra the
module says which extra to install, and nothing else in smallpond imports it."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

for _module in ("warcio", "bs4", "lxml", "zstandard"):
    pytest.importorskip(_module, reason="needs the 'warc' extra (pip install -e '.[dev]' installs it)")

import zstandard  # noqa: E402
from warcio.statusandheaders import StatusAndHeaders  # noqa: E402
from warcio.warcwriter import WARCWriter  # noqa: E402

from smallpond.contrib.warc import ExtractHtmlBody, ImportWarcFiles, html_body_tokens  # noqa: E402
from smallpond.errors import JobFailed, ParameterError  # noqa: E402
from smallpond.execution.job import make_runtime_ctx, run_job  # noqa: E402
from smallpond.logical.dataset import FileSet  # noqa: E402
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, RootNode  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402


def page(title: str, words: str) -> bytes:
    return (
        f"<html><head><title>{title}</title><style>p {{color: red}}</style></head>"
        f"<body><h1>{title}</h1><script>var hidden = 1;</script><p>{words}</p></body></html>"
    ).encode()


def warc_records(pages, gzip_body: bool = False) -> list:
    """The records of one WARC file, each as its own uncompressed bytes: a warcinfo, then per page
    a request (not imported) and a response."""
    out = []

    def record(make) -> None:
        buf = io.BytesIO()
        writer = WARCWriter(buf, gzip=False)
        writer.write_record(make(writer))
        out.append(buf.getvalue())

    record(lambda w: w.create_warcinfo_record("test.warc", {"software": "smallpond tests"}))
    for url, date, html, *content_type in pages:
        req = StatusAndHeaders("GET / HTTP/1.1", [("Host", url.split("/")[2])], is_http_request=True)
        record(lambda w, url=url, req=req: w.create_warc_record(url, "request", http_headers=req))
        body = gzip.compress(html) if gzip_body else html
        content_type = content_type[0] if content_type else "text/html; charset=utf-8"
        headers = [("Content-Type", content_type)] if content_type else []
        headers.append(("Content-Length", str(len(body))))
        if gzip_body:
            headers.append(("Content-Encoding", "gzip"))
        http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")
        record(
            lambda w, url=url, body=body, http=http, date=date: w.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=http, warc_headers_dict={"WARC-Date": date}
            )
        )
    return out


def write_warc(path: str, records: list, how: str) -> None:
    """``how``: ``zstd`` (a frame per record, as the WARC zstd format writes them), ``zstd-dict``
    (the same with a dictionary in a leading skippable frame), ``zstd-one`` (one frame), ``gzip``
    (a member per record) or ``plain``."""
    with open(path, "wb") as f:
        if how == "zstd":
            for r in records:
                f.write(zstandard.ZstdCompressor(level=3).compress(r))
        elif how == "zstd-dict":
            raw = b"<html><head><title></title></head><body><p></p></body></html> WARC/1.0 HTTP/1.1 200 OK text/html" * 4
            dictionary = zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            packed = zstandard.ZstdCompressor().compress(raw)  # the format allows the dictionary compressed
            f.write(b"\x5d\x2a\x4d\x18" + len(packed).to_bytes(4, "little") + packed)
            for r in records:
                f.write(zstandard.ZstdCompressor(level=3, dict_data=dictionary).compress(r))
        elif how == "zstd-one":
            f.write(zstandard.ZstdCompressor(level=3).compress(b"".join(records)))
        elif how == "gzip":
            for r in records:
                f.write(gzip.compress(r))
        else:
            f.write(b"".join(records))


PAGES = {
    "a.warc.zst": [
        ("https://www.example.com/index.html", "2023-03-01T10:00:00Z", page("Alpha", "first page words")),
        ("http://news.example.org:8080/a?b=1", "2023-03-01T10:00:05Z", page("Beta", "second   page\nhere")),
    ],
    "b.warc.zst": [("https://shop.example.net/x", "2023-04-02T00:00:00Z", page("Gamma", "third"))],
    "c.warc.zst": [("https://WWW.Example.COM/caps", "2023-05-03T00:00:00Z", page("Delta", "fourth one"))],
    "d.warc.gz": [("https://gz.example.com/", "2023-06-04T00:00:00Z", page("Epsilon", "fifth"))],
    "f.warc": [("<https://brackets.example.com/b>", "2023-07-05T00:00:00Z", page("Zeta", "sixth"))],
    "e.warc.zst": [],  # only a warcinfo record: an empty file with the columns
}
HOW = {
    "a.warc.zst": "zstd",
    "b.warc.zst": "zstd-dict",
    "c.warc.zst": "zstd-one",
    "d.warc.gz": "gzip",
    "e.warc.zst": "zstd",
    "f.warc": "plain",
}


def expected_rows():
    return [
        {"url": url.strip("<>"), "domain": url.split("/")[2].split(":")[0].lower(), "date": date, "content": html}
        for name in sorted(PAGES)
        for url, date, html in PAGES[name]
    ]


@pytest.fixture
def warc_dir(tmp_path):
    folder = tmp_path / "warc"
    folder.mkdir()
    for name, pages in PAGES.items():
        write_warc(str(folder / name), warc_records(pages, gzip_body=(name == "b.warc.zst")), HOW[name])
    return folder


def test_import_and_extract_in_a_job(warc_dir, tmp_path):
    ctx = Context()
    src = DataSourceNode(ctx, FileSet([str(warc_dir / "*")]))
    parts = DataSetPartitionNode(ctx, (src,), 2)
    imported = ImportWarcFiles(ctx, (parts,), output_name="pages")
    extracted = ExtractHtmlBody(ctx, (imported,), output_name="tokens", streaming_batch_size=2)
    ep = run_job(LogicalPlan(ctx, extracted), make_runtime_ctx(None, None, str(tmp_path / "root")), num_workers=2)

    pages = ep.get_output("pages")
    files = sorted(pages.resolved_paths)
    assert len(files) == len(PAGES)  # one file per WARC file, the empty one included
    for f in files:
        assert pq.read_schema(f).names == ["url", "domain", "date", "content"]
    rows = sorted(pages.to_arrow_table().to_pylist(), key=lambda r: r["url"])
    assert rows == sorted(expected_rows(), key=lambda r: r["url"])  # gzip Content-Encoding undone too

    got = {r["url"]: r for r in ep.get_output("tokens").to_arrow_table().to_pylist()}
    assert set(got) == {r["url"] for r in rows}
    first = got["https://www.example.com/index.html"]
    assert first["tokens"] == ["Alpha", "first", "page", "words"]  # no title, style or script text
    assert first["domain"] == "www.example.com" and first["date"] == "2023-03-01T10:00:00Z" and "content" not in first
    assert got["http://news.example.org:8080/a?b=1"]["tokens"] == ["Beta", "second", "page", "here"]
    assert got["https://shop.example.net/x"]["tokens"] == ["Gamma", "third"]


def test_content_types_choose_the_responses_imported(tmp_path):
    """Web pages by default (and a response without a Content-Type); ``content_types`` names others;
    None keeps every response."""
    path = str(tmp_path / "mixed.warc.zst")
    pages = [
        ("https://a.example.com/", "2023-01-01T00:00:00Z", page("A", "html page"), "text/html; charset=UTF-8"),
        ("https://a.example.com/x.xhtml", "2023-01-01T00:00:01Z", page("X", "xhtml"), "Application/XHTML+XML"),
        ("https://a.example.com/logo.png", "2023-01-01T00:00:02Z", b"\x89PNG\r\n\x1a\n\x00\x01", "image/png"),
        ("https://a.example.com/robots.txt", "2023-01-01T00:00:03Z", b"User-agent: *", "text/plain"),
        ("https://a.example.com/unknown", "2023-01-01T00:00:04Z", page("U", "no type"), None),
    ]
    write_warc(path, warc_records(pages), "zstd")
    ctx = Context()
    src = DataSourceNode(ctx, FileSet([path]))
    nodes = {
        "default": ImportWarcFiles(ctx, (src,), output_name="default"),
        "everything": ImportWarcFiles(ctx, (src,), content_types=None, output_name="everything"),
        "text": ImportWarcFiles(ctx, (src,), content_types=["Text/Plain"], output_name="text"),
    }
    ep = run_job(LogicalPlan(ctx, RootNode(ctx, tuple(nodes.values()))), make_runtime_ctx(None, None, str(tmp_path / "root")))
    got = {name: sorted(r["url"].rsplit("/", 1)[1] for r in ep.get_output(name).to_arrow_table().to_pylist()) for name in nodes}
    assert got == {
        "default": ["", "unknown", "x.xhtml"],
        "everything": ["", "logo.png", "robots.txt", "unknown", "x.xhtml"],
        "text": ["robots.txt", "unknown"],
    }
    for bad in ("text/html", [""], [3]):
        with pytest.raises(ParameterError, match="content_types must be a list of media types or None"):
            ImportWarcFiles(ctx, (src,), content_types=bad)


def test_html_body_tokens():
    html = b"<html><body><p>a <b>b</b></p><template>t</template><noscript>Enable JavaScript</noscript> c</body></html>"
    assert html_body_tokens(html) == ["a", "b", "c"]
    assert html_body_tokens(b"") == [] and html_body_tokens(None) == []
    assert html_body_tokens("<p>caf\u00e9 ok</p>".encode("utf-8")) == ["caf\u00e9", "ok"]


@pytest.mark.parametrize(
    "data",
    [b"this is not a WARC record\r\n\r\n", b"<html>" * 100],  # (warcio reads the first as an ARC record)
    ids=["arc-like", "html"],
)
def test_a_file_that_is_not_warc_fails_naming_it(warc_dir, tmp_path, data):
    bad = warc_dir / "f.warc.zst"
    bad.write_bytes(zstandard.ZstdCompressor().compress(data))
    ctx = Context()
    imported = ImportWarcFiles(ctx, (DataSourceNode(ctx, FileSet([str(bad)])),))
    with pytest.raises(JobFailed) as info:
        run_job(LogicalPlan(ctx, imported), make_runtime_ctx(None, None, str(tmp_path / "root")), max_fail_count=0)
    assert str(bad) in str(info.value) and "not a readable WARC file" in str(info.value)


def test_corrupt_zstd_fails_naming_the_file(warc_dir, tmp_path):
    good = (warc_dir / "a.warc.zst").read_bytes()
    bad = warc_dir / "cut.warc.zst"
    bad.write_bytes(good[:20] + bytes(200) + good[220:])
    ctx = Context()
    imported = ImportWarcFiles(ctx, (DataSourceNode(ctx, FileSet([str(bad)])),))
    with pytest.raises(JobFailed) as info:
        run_job(LogicalPlan(ctx, imported), make_runtime_ctx(None, None, str(tmp_path / "root")), max_fail_count=0)
    assert str(bad) in str(info.value) and "zstd data is corrupt" in str(info.value)


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env)


def test_without_the_extra_the_error_names_it():
    proc = run_python(
        """
        import sys
        sys.modules["warcio"] = None  # as if the extra were not installed
        try:
            import smallpond.contrib.warc
        except ImportError as e:
            print(e)
        else:
            print("imported")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "'warc' extra" in proc.stdout and 'pip install "smallpond[warc]"' in proc.stdout, proc.stdout


def test_nothing_else_imports_it():
    proc = run_python(
        """
        import sys
        import smallpond, smallpond.contrib, smallpond.compat, smallpond.execution.driver, smallpond.dataframe
        print(sorted(m for m in ("smallpond.contrib.warc", "warcio", "bs4", "zstandard") if m in sys.modules))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    package = os.path.join(REPO_ROOT, "smallpond")
    for folder, _, names in os.walk(package):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".py") and path != os.path.join(package, "contrib", "warc.py"):
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                assert "contrib.warc" not in text and "import warc" not in text, path
