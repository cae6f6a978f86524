"""Document ingest (every format, zips, skips, content ids, limits) and token-budgeted chunking."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import struct
import threading
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pypdf
import pytest

from helixloom.documents import Document, Ingested, IngestLimits, Skipped, chunk, ingest
from helixloom.errors import HelixloomError


def _pdf_with_text(text: str, title: str | None = None) -> bytes:
    """A minimal valid one-page PDF that draws ``text`` in Helvetica, with correct xref offsets."""
    content = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    info = b" /Info 6 0 R" if title is not None else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, info, xref)
    return bytes(out)


def _one(result: Ingested) -> Document:
    assert len(result.documents) == 1, result.summary()
    return result.documents[0]


# ------------------------------------------------------------------------------------------ formats


def test_markdown_title_and_id(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text("Intro line\n\n# The Guide\n\nBody text.\n")
    doc = _one(ingest([path]))
    assert doc.kind == "md"
    assert doc.title == "The Guide"
    assert doc.source == str(path)
    assert doc.text == "Intro line\n\n# The Guide\n\nBody text."
    assert doc.doc_id == hashlib.sha256(doc.text.encode()).hexdigest()[:10]


def test_text_without_heading_is_titled_by_stem(tmp_path: Path) -> None:
    path = tmp_path / "meeting-notes.txt"
    path.write_bytes("\ufeffWindows line one\r\nline two\r\n".encode())  # BOM and CRLF
    doc = _one(ingest([path]))
    assert (doc.kind, doc.title, doc.text) == ("txt", "meeting-notes", "Windows line one\nline two")


def test_html_headings_lists_and_dropped_parts(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>Page Title</title><style>body{color:red}</style></head><body>"
        "<nav>Home | About</nav>"
        "<h1>Main  heading</h1><p>First <b>bold</b> paragraph.</p>"
        "<script>var secret = 'do not keep';</script>"
        "<h2>Second</h2><ul><li>apples</li><li>pears <i>too</i></li></ul>"
        "<p>Last paragraph.</p><footer>Copyright footer</footer></body></html>"
    )
    doc = _one(ingest([path]))
    assert doc.kind == "html"
    assert doc.title == "Page Title"
    assert doc.text == (
        "# Main heading\n\nFirst bold paragraph.\n\n## Second\n\n- apples\n- pears too\n\nLast paragraph."
    )
    for dropped in ("secret", "color:red", "Home", "Copyright"):
        assert dropped not in doc.text


def test_html_without_title_uses_first_h1(tmp_path: Path) -> None:
    path = tmp_path / "bare.htm"
    path.write_text("<div>Loose text<h1>Heading One</h1><ol><li>a<ul><li>b</li></ul></li></ol></div>")
    doc = _one(ingest([path]))
    assert doc.title == "Heading One"
    assert doc.text == "Loose text\n\n# Heading One\n\n- a\n  - b"


def test_pdf_text_and_metadata_title(tmp_path: Path) -> None:
    data = _pdf_with_text("Hello PDF world", title="A PDF Title")
    assert "Hello PDF world" in pypdf.PdfReader(io.BytesIO(data)).pages[0].extract_text()
    path = tmp_path / "paper.pdf"
    path.write_bytes(data)
    doc = _one(ingest([path]))
    assert (doc.kind, doc.title, doc.text) == ("pdf", "A PDF Title", "Hello PDF world")
    untitled = tmp_path / "untitled.pdf"
    untitled.write_bytes(_pdf_with_text("Other words"))
    assert _one(ingest([untitled])).title == "untitled"


def test_encrypted_and_broken_pdfs_are_skipped(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=100, height=100)
    writer.encrypt("secret", algorithm="RC4-128")
    with open(tmp_path / "locked.pdf", "wb") as f:
        writer.write(f)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (tmp_path / "ok.md").write_text("fine")
    result = ingest([tmp_path])
    reasons = {Path(s.source).name: s.reason for s in result.skipped}
    assert reasons["locked.pdf"] == "encrypted PDF (needs a password)"
    assert reasons["broken.pdf"].startswith("unreadable PDF (")


def test_json_conversation_shapes(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "What is X?"}, {"role": "assistant", "content": "X is Y."}]
    shapes = {
        "list.json": messages,
        "wrapped.json": {"messages": [*messages, {"role": "user", "content": "thanks"}]},
        "many.json": [
            messages,
            {"messages": [{"role": "system", "content": [{"type": "text", "text": "Hi"}]}]},
        ],
    }
    for name, value in shapes.items():
        (tmp_path / name).write_text(json.dumps(value))
    (tmp_path / "config.json").write_text(json.dumps({"learning_rate": 0.1}))
    (tmp_path / "bad.json").write_text("{not json")
    result = ingest([tmp_path])
    texts = {Path(d.source).name: d.text for d in result.documents}
    assert texts["list.json"] == "user: What is X?\nassistant: X is Y."
    assert texts["wrapped.json"] == "user: What is X?\nassistant: X is Y.\nuser: thanks"
    assert texts["many.json"] == "user: What is X?\nassistant: X is Y.\n\nsystem: Hi"
    assert all(d.kind == "json" for d in result.documents)
    reasons = {Path(s.source).name: s.reason for s in result.skipped}
    assert reasons["config.json"].startswith("JSON is not a conversation export")
    assert reasons["bad.json"].startswith("not valid JSON")


def test_zip_members_with_folders(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("docs/b.md", "# Bee\n\nsecond")
        zf.writestr("docs/a.md", "# Ay\n\nfirst")
        zf.writestr("docs/tool.exe", b"MZ\x90\x00")
        zf.writestr("docs/inner.zip", b"PK")
        zf.writestr("__MACOSX/docs/._a.md", b"junk")
    result = ingest([archive])
    assert [d.source for d in result.documents] == [f"{archive}!docs/a.md", f"{archive}!docs/b.md"]
    assert [d.title for d in result.documents] == ["Ay", "Bee"]
    assert {(s.source, s.reason) for s in result.skipped} == {
        (f"{archive}!docs/tool.exe", "unsupported type .exe"),
        (f"{archive}!docs/inner.zip", "zip inside a zip is not supported"),
    }
    assert "tool.exe: unsupported type .exe" in result.summary()


def test_unusable_files_are_skipped_not_raised(tmp_path: Path) -> None:
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.md").write_text("  \n\n ")
    (tmp_path / "good.txt").write_text("usable text")
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    (tmp_path / ".hidden.md").write_text("never read")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.txt").write_text("never read either")
    result = ingest([tmp_path])
    assert [d.text for d in result.documents] == ["usable text"]
    reasons = {Path(s.source).name: s.reason for s in result.skipped}
    assert reasons == {
        "notes.docx": "unsupported type .docx",
        "latin1.txt": "not UTF-8 text",
        "empty.md": "empty (no text)",
        "broken.zip": "not a readable zip archive (File is not a zip file)",
    }
    assert result.summary().startswith("1 document used, 4 skipped (broken.zip: not a readable zip archive")
    assert result.summary().endswith("; latin1.txt: not UTF-8 text; and 1 more)")  # at most three shown


def test_missing_path_raises(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("text")
    with pytest.raises(HelixloomError, match="no-such-folder"):
        ingest([tmp_path / "a.md", tmp_path / "no-such-folder"])


def test_nothing_usable_raises_with_supported_types(tmp_path: Path) -> None:
    (tmp_path / "notes.docx").write_bytes(b"PK")
    with pytest.raises(HelixloomError) as info:
        ingest([tmp_path])
    assert "no usable documents" in info.value.message
    assert "notes.docx: unsupported type .docx" in info.value.message
    assert info.value.hint is not None and ".pdf" in info.value.hint and ".md" in info.value.hint


# ------------------------------------------------------------------------------------------ ids


def test_ids_are_content_addressed_and_duplicates_collapse(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.md").write_text("same words")
    (tmp_path / "two.txt").write_text("same words\n")  # same extracted text, other name and type
    (tmp_path / "three.md").write_text("other words")
    first = ingest([tmp_path])
    assert [d.source for d in first.documents] == [str(tmp_path / "one" / "a.md"), str(tmp_path / "three.md")]
    assert first.skipped == [Skipped(str(tmp_path / "two.txt"), f"duplicate of {tmp_path / 'one' / 'a.md'}")]
    same, other = first.documents
    assert same.doc_id != other.doc_id and len(same.doc_id) == 10

    renamed = tmp_path / "elsewhere"
    renamed.mkdir()
    (renamed / "z.txt").write_text("same words")
    (renamed / "y.md").write_text("other words")
    again = ingest([renamed])
    assert {d.doc_id for d in again.documents} == {same.doc_id, other.doc_id}
    assert again.group_id == first.group_id
    reordered = ingest([tmp_path / "three.md", tmp_path / "one"])
    assert [d.doc_id for d in reordered.documents] == [other.doc_id, same.doc_id]
    assert reordered.group_id == first.group_id
    assert ingest([tmp_path / "three.md"]).group_id != first.group_id
    expected = hashlib.sha256(",".join(sorted([same.doc_id, other.doc_id])).encode()).hexdigest()[:10]
    assert first.group_id == expected


# ------------------------------------------------------------------------------------------ chunk


def _words(s: str) -> int:
    return len(s.split())


def _paragraphs(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"p{i}w{j}" for j in range(rng.randint(5, 60))) for i in range(count)]


def _overlap_words(prev: str, nxt: str) -> int:
    a, b = prev.split(), nxt.split()
    return max((m for m in range(1, min(len(a), len(b)) + 1) if a[-m:] == b[:m]), default=0)


def _without_overlaps(chunks: list[str]) -> list[str]:
    out = chunks[0].split()
    for prev, nxt in itertools.pairwise(chunks):
        out += nxt.split()[_overlap_words(prev, nxt) :]
    return out


def test_chunks_fit_overlap_cover_and_cut_at_paragraphs() -> None:
    paragraphs = _paragraphs(300)
    text = "\n\n".join(paragraphs)
    chunks = chunk(text, _words, max_tokens=200, overlap_tokens=30)
    assert len(chunks) > 10
    assert all(_words(c) <= 200 for c in chunks)
    assert all(c == c.strip() and c in text for c in chunks)
    overlaps = [_overlap_words(a, b) for a, b in itertools.pairwise(chunks)]
    assert all(0 < n <= 30 for n in overlaps)
    assert sum(n == 30 for n in overlaps) > len(overlaps) // 2
    assert _without_overlaps(chunks) == text.split()
    paragraph_ends = {p.split()[-1] for p in paragraphs}
    assert all(c.split()[-1] in paragraph_ends for c in chunks)  # every cut at a blank line


def test_chunk_without_overlap_and_with_long_paragraph() -> None:
    long_paragraph = "\n".join(" ".join(f"l{i}w{j}" for j in range(15)) for i in range(40))  # 600 words
    text = "intro words here\n\n" + long_paragraph + "\n\noutro"
    chunks = chunk(text, _words, max_tokens=100, overlap_tokens=0)
    assert all(_words(c) <= 100 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert all(c.split()[-1].endswith("w14") for c in chunks[1:-2])  # inside the paragraph: at line ends


def test_single_huge_word_is_split() -> None:
    def pieces(s: str) -> int:  # a word costs one token per 8 characters
        return sum(-(-len(w) // 8) for w in s.split())

    word = "".join(chr(97 + i % 26) for i in range(1000))
    chunks = chunk(f"before {word} after", pieces, max_tokens=32, overlap_tokens=4)
    assert all(pieces(c) <= 32 for c in chunks)
    assert len(chunks) >= 1000 // (32 * 8)
    # A piece of a word holds no word start to overlap from, so the pieces join back into the text.
    assert "".join(chunks).replace(" ", "") == f"before{word}after"
    assert any(c == word[: len(c)] and len(c) == 32 * 8 for c in chunks)


def test_chunk_validates_and_handles_blank_text() -> None:
    with pytest.raises(HelixloomError, match="max_tokens"):
        chunk("x", _words, max_tokens=8, overlap_tokens=0)
    with pytest.raises(HelixloomError, match="overlap_tokens"):
        chunk("x", _words, max_tokens=100, overlap_tokens=50)
    with pytest.raises(HelixloomError, match="overlap_tokens"):
        chunk("x", _words, max_tokens=100, overlap_tokens=-1)
    assert chunk(" \n\n ", _words) == []
    assert chunk("  just this  ", _words) == ["just this"]


def test_chunk_large_text() -> None:
    text = "\n\n".join(_paragraphs(7000, seed=3))
    assert len(text) > 200_000
    chunks = chunk(text, _words, max_tokens=1024, overlap_tokens=128)
    assert all(_words(c) <= 1024 for c in chunks)
    assert _without_overlaps(chunks) == text.split()


# ------------------------------------------------------------------------------------------ limits

MiB = 1024 * 1024


def _zip_bomb(path: Path, members: dict[str, int], fill: bytes = b"\0") -> None:
    """A zip whose members each inflate to the given number of MiB of ``fill``, written without ever
    holding them: one MiB is compressed once and its block repeated (a full flush makes each block
    stand alone), so 700 MiB take about 700 KB, as in the bomb that issue 15 reports."""
    block_in = fill * MiB
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(block_in) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()  # the final (empty) block
    local, central = bytearray(), bytearray()
    for name, mib in members.items():
        crc = 0
        for _ in range(mib):
            crc = zlib.crc32(block_in, crc)
        data = block * mib + end
        raw = name.encode()
        sizes = (crc, len(data), mib * MiB, len(raw))
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, *sizes, 0, 0, 0, 0, 0, len(local)
        )
        central += raw
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, *sizes, 0) + raw + data
    end_record = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0
    )
    path.write_bytes(bytes(local + central + end_record))


def _within(seconds: float, *args: Any, **kwargs: Any) -> Ingested:
    """``ingest(*args, **kwargs)``, failing the test instead of hanging when it takes over ``seconds``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = ingest(*args, **kwargs)
        except BaseException as e:  # handed to the test's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"ingest did not return within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_zip_bomb_is_refused_quickly_without_the_memory(tmp_path: Path) -> None:
    cases = {  # members -> the refusal: the archive as a whole, then one member on its own
        (("notes.md", 700),): "{archive}: 700 MiB inflated, over the 512 MiB limit per archive",
        (("notes.md", 200),): "{archive}!notes.md: 200 MiB, over the 128 MiB limit for one file",
    }
    for members, refusal in cases.items():
        archive = tmp_path / f"bomb{len(refusal)}.zip"
        _zip_bomb(archive, dict(members))
        assert archive.stat().st_size < MiB
        with zipfile.ZipFile(archive) as zf, zf.open("notes.md") as member:  # valid: it inflates
            assert member.read(MiB) == bytes(MiB)
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(HelixloomError) as info:
                _within(30, [archive])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert time.monotonic() - started < 5
        assert peak < 8 * MiB
        assert info.value.message == "refused " + refusal.format(archive=archive)
        assert info.value.hint is not None and "IngestLimits.max_" in info.value.hint


def test_zip_members_over_the_ratio_or_the_archive_total_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "ratio.zip"
    _zip_bomb(archive, {"a.md": 10})  # under every size limit, but 10 MiB from about 10 KB
    with pytest.raises(
        HelixloomError, match=r"refused .*ratio\.zip!a\.md: inflates \d+ times .* \(a zip bomb\?\)"
    ):
        ingest([archive])
    archive = tmp_path / "letters.zip"
    _zip_bomb(archive, {"a.md": 2, "b.md": 2}, fill=b"a")
    generous = IngestLimits(max_ratio=1e6)
    assert [len(d.text) for d in ingest([archive], limits=generous).documents] == [
        2 * MiB
    ]  # b.md is a duplicate
    with pytest.raises(HelixloomError) as info:
        ingest([archive], limits=IngestLimits(max_ratio=1e6, max_archive_bytes=3 * MiB))
    assert info.value.message == f"refused {archive}: 4 MiB inflated, over the 3 MiB limit per archive"
    assert info.value.hint is not None and "IngestLimits.max_archive_bytes" in info.value.hint


def test_zip_with_too_many_entries_is_refused_and_unsupported_members_are_not_counted(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            zf.writestr(f"doc{i}.md", f"document {i}")
        zf.writestr("movie.mp4", b"\0" * 4000)
    with pytest.raises(HelixloomError, match=r"many\.zip: 6 entries, over the limit of 5 per archive"):
        ingest([archive], limits=IngestLimits(max_members=5))
    # The unsupported member is skipped unread: it counts toward neither the total nor the file size.
    result = ingest([archive], limits=IngestLimits(max_archive_bytes=100, max_file_bytes=100))
    assert len(result.documents) == 5
    assert result.skipped == [Skipped(f"{archive}!movie.mp4", "unsupported type .mp4")]


def test_files_over_the_size_limit_are_refused_and_unsupported_ones_skipped_unread(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("word " * 400)
    (tmp_path / "video.mp4").write_bytes(b"\0" * 5000)
    (tmp_path / "small.md").write_text("small")
    limits = IngestLimits(max_file_bytes=1000)
    with pytest.raises(HelixloomError) as info:
        ingest([tmp_path], limits=limits)
    assert (
        info.value.message == f"refused {tmp_path / 'big.txt'}: 2.0 KiB, over the 1000 B limit for one file"
    )
    result = ingest([tmp_path / "video.mp4", tmp_path / "small.md"], limits=limits)
    assert [d.text for d in result.documents] == ["small"]
    assert result.skipped == [Skipped(str(tmp_path / "video.mp4"), "unsupported type .mp4")]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_devices_are_refused_without_reading_them(tmp_path: Path) -> None:
    for path in (Path("/dev/zero"), tmp_path / "zero.txt"):
        if path.parent == tmp_path:
            path.symlink_to("/dev/zero")  # a supported name in front of a device
        with pytest.raises(HelixloomError) as info:
            _within(10, [path])
        assert info.value.message == f"refused {path}: not a regular file (a character device)"
        assert info.value.hint is not None and "regular files" in info.value.hint


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_refused_without_hanging(tmp_path: Path) -> None:
    for name in ("pipe.md", "pipe.zip", "pipe"):
        os.mkfifo(tmp_path / name)
        with pytest.raises(HelixloomError) as info:
            _within(10, [tmp_path / name])
        assert info.value.message == f"refused {tmp_path / name}: not a regular file (a FIFO)"
    # In a folder, devices and FIFOs are passed over as before: only regular files are visited.
    (tmp_path / "zero.md").symlink_to("/dev/zero")
    (tmp_path / "notes.md").write_text("the notes")
    result = _within(10, [tmp_path])
    assert [d.text for d in result.documents] == ["the notes"] and result.skipped == []


def test_deeply_nested_html_and_json_are_refused_cleanly(tmp_path: Path) -> None:
    (tmp_path / "deep.html").write_text("<div>" * 20_000 + "text" + "</div>" * 20_000)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deeper.json").write_text("[" * 300 + "]" * 300)  # parses, but past the limit
    for name, reason in [
        ("deep.html", "HTML nested more than 256 elements deep"),
        ("deep.json", "JSON nested too deeply to parse"),
        ("deeper.json", "JSON nested more than 256 arrays or objects deep"),
    ]:
        with pytest.raises(HelixloomError) as info:
            ingest([tmp_path / name])
        assert info.value.message == f"refused {tmp_path / name}: {reason}"
        assert info.value.hint is not None and "IngestLimits.max_depth" in info.value.hint
    (tmp_path / "nested.html").write_text("<div>" * 200 + "<p>deep but fine</p>" + "</div>" * 200)
    assert _one(ingest([tmp_path / "nested.html"])).text == "deep but fine"
    with pytest.raises(HelixloomError, match="HTML nested more than 100"):
        ingest([tmp_path / "nested.html"], limits=IngestLimits(max_depth=100))


def test_usual_inputs_ingest_the_same_under_the_default_limits(tmp_path: Path) -> None:
    (tmp_path / "paper.pdf").write_bytes(_pdf_with_text("Hello PDF world", title="A PDF Title"))
    (tmp_path / "page.html").write_text("<head><title>T</title></head><h1>Head</h1><ul><li>one</li></ul>")
    (tmp_path / "notes.md").write_text("# Notes\n\nsome notes")
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.md", "# Ay\n\n" + "repeated words " * 20_000)  # compresses well; under 1 MiB
        zf.writestr("chat.json", json.dumps([{"role": "user", "content": "hi"}]))
    unlimited = IngestLimits(max_file_bytes=2**62, max_members=2**62, max_archive_bytes=2**62, max_ratio=1e18)
    assert ingest([tmp_path]) == ingest([tmp_path], limits=unlimited)
    result = ingest([tmp_path])
    assert [(Path(d.source).name, d.kind, d.title) for d in result.documents] == [
        ("bundle.zip!a.md", "md", "Ay"),
        ("bundle.zip!chat.json", "json", "chat"),
        ("notes.md", "md", "Notes"),
        ("page.html", "html", "T"),
        ("paper.pdf", "pdf", "A PDF Title"),
    ]
    assert result.documents[3].text == "# Head\n\n- one" and result.skipped == []
