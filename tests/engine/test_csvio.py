"""CSV conversions (openprod.engine.csvio): decoding, delimiter sniffing, header matching, cell
conversion with its messages, export rendering, and export → import round trips."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openprod.core import ids, values
from openprod.core.errors import ValidationError
from openprod.engine import csvio
from openprod.engine.csvio import CellError, Options
from openprod.engine.views import FieldDef, TableDef

PARIS = ZoneInfo("Europe/Paris")
CHOICES = ["Lead", ["ch", "Chorus"], "Swing"]


def fd(name: str, ftype: str, label: str | None = None, *, crdt: bool = False,
       **opts: Any) -> FieldDef:
    return FieldDef("w.Cast", name, ftype, crdt, label or name.title(), dict(opts))


FIELDS = {
    "text": fd("name", "text"), "integer": fd("age", "integer"),
    "float": fd("height", "float"), "boolean": fd("lead", "boolean"),
    "date": fd("first_call", "date", "First call"), "datetime": fd("arrives", "datetime"),
    "duration": fd("warmup", "duration", "Warm-up"),
    "enum": fd("role", "enum", choices=CHOICES),
    "entity_ref": fd("partner", "entity_ref", ref_table="w.Cast"),
}
TABLE = TableDef("w.Cast", "Cast", "w", (*FIELDS.values(), fd("photo", "blob_ref"),
                                         fd("notes", "text", crdt=True)))


def write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "f.csv"
    p.write_bytes(data)
    return p


# --- decoding and sniffing --------------------------------------------------------------------

@pytest.mark.parametrize(("data", "enc", "noted"), [
    ("Name\nZoë\n".encode(), "utf-8", False),
    (b"\xef\xbb\xbfName\nZo\xc3\xab\n", "utf-8-sig", False),
    ("Name\nZoë – “quoted”\n".encode("cp1252"), "cp1252", True),
    (b"Name\nZo\xeb\x81\n", "latin-1", True),
    (b"", "utf-8", False),
])
def test_encoding(data: bytes, enc: str, noted: bool) -> None:
    got, note = csvio.detect_encoding(data)
    assert got == enc and (note is not None) == noted
    data.decode(got)  # reads the whole file


def test_encoding_in_chunks_split_inside_a_character() -> None:
    data = ("Name\n" + "Zoë\n" * 1000).encode()
    d = csvio.EncodingDetector()
    for i in range(0, len(data), 7):  # 7-byte pieces cut the two-byte ë apart
        d.feed(data[i:i + 7])
    assert d.result() == ("utf-8", None) and d.size == len(data)


@pytest.mark.parametrize(("sample", "delim"), [
    ("Name,Age\nAda,36\n", ","),
    ("Name;Height;Note\nAda;1,72;a, b\nBo;1,80;c\n", ";"),
    ("Name\tNote\nAda\t\"a; b, c\"\n", "\t"),
    ('Name,Note\n"Ada; Lovelace","x;y;z"\n', ","),
    ("Name\nAda\n", ","),  # one column: comma
    ("Name;Age\nAda;3", ";"),  # the last line cut off
])
def test_sniff_delimiter(sample: str, delim: str) -> None:
    assert csvio.sniff_delimiter(sample) == delim


def test_scan_and_iter_records(tmp_path: Path) -> None:
    data = (b"\n"
            b"Name,,Name,Start\n"
            b"Ada,1,x,13/05/2024\n"
            b"\n"
            b"\"Bo\nsecond line\",2,y,05/06/2024\n"
            b",,,\n"
            b"Cy,3\n")
    p = write(tmp_path, data)
    sc = csvio.scan(p, "utf-8", ",")
    assert sc.headers == ["Name", "Column 2", "Name (2)", "Start"]
    assert sc.rows == 3 and sc.sample[1] == ["Bo\nsecond line", "2", "y", "05/06/2024"]
    assert sc.month_first == frozenset()  # 13/05 says day first
    assert [n for n, _ in csvio.iter_records(p, "utf-8", ",")] == [3, 5, 7]
    us = write(tmp_path, b"Start,End\n05/13/2024,01/02/2024\n")
    assert csvio.scan(us, "utf-8", ",").month_first == frozenset([0])


def test_scan_refuses_an_empty_file_and_broken_csv(tmp_path: Path) -> None:
    with pytest.raises(csvio.CsvFormatError, match="empty"):
        csvio.scan(write(tmp_path, b"\n\n"), "utf-8", ",")
    big = b"Name\n\"" + b"x" * (csvio.FIELD_LIMIT + 10) + b"\"\n"
    with pytest.raises(csvio.CsvFormatError, match="line"):
        csvio.scan(write(tmp_path, big), "utf-8", ",")


# --- header matching --------------------------------------------------------------------------

def test_match_headers() -> None:
    mapping, skipped = csvio.match_headers(
        ["NAME ", "first-call", "Warm up", "warmup", "ROLE", "Photo", "Notes", "Shoe", ""],
        TABLE)
    assert mapping == {"NAME ": "name", "first-call": "first_call", "Warm up": "warmup",
                       "warmup": None, "ROLE": "role", "Photo": None, "Notes": None,
                       "Shoe": None, "": None}
    assert "file field" in skipped["Photo"] and "collaborative" in skipped["Notes"]


def test_check_mapping_refusals() -> None:
    h = ["Name", "Age", "Photo"]
    assert csvio.check_mapping(TABLE, h, {"Name": "name", "Age": "Age", "Photo": None}) == {
        0: FIELDS["text"], 1: FIELDS["integer"]}
    for mapping, words in (({"Nope": "name"}, "no column"), ({"Name": "nope"}, "no field"),
                           ({"Photo": "photo"}, "file field"),
                           ({"Name": "name", "Age": "name"}, "both go to"),
                           ({"Name": None}, "at least one"), ({"Name": 3}, "field name")):
        with pytest.raises(ValidationError, match=words):
            csvio.check_mapping(TABLE, h, mapping)


# --- cells to values --------------------------------------------------------------------------

LINKS = csvio.LinkIndex("Cast", [("Ada", "00000000-0000-4000-8000-000000000001"),
                                 ("Bo", "00000000-0000-4000-8000-000000000002"),
                                 ("bo", "00000000-0000-4000-8000-000000000003"),
                                 ("Twin", "00000000-0000-4000-8000-000000000004"),
                                 ("Twin", "00000000-0000-4000-8000-000000000005"),
                                 (None, "00000000-0000-4000-8000-000000000006")])


def parse(kind: str, text: str, **kw: Any) -> Any:
    return csvio.parse_cell(FIELDS[kind], text, links=LINKS, **kw)


@pytest.mark.parametrize(("kind", "text", "value"), [
    ("text", "  Ada  ", "  Ada  "), ("text", "   ", None), ("integer", "", None),
    ("integer", "-12", -12), ("integer", "1,234", 1234), ("integer", "1 234", 1234),
    ("integer", "12.0", 12), ("float", "1.5", 1.5), ("float", "1,234.5", 1234.5),
    ("float", "-0", 0.0), ("float", "1e3", 1000.0),
    ("boolean", "YES", True), ("boolean", "x", True), ("boolean", "0", False),
    ("boolean", "False", False), ("date", "2024-05-01", "2024-05-01"),
    ("date", "1/5/2024", "2024-05-01"), ("date", "01.05.24", "2024-05-01"),
    ("date", "1 May 2024", "2024-05-01"), ("date", "May 1st, 2024", "2024-05-01"),
    ("date", "2024-05-01 00:00:00", "2024-05-01"),
    ("datetime", "2024-05-01T19:30:00Z", 1714591800000),
    ("datetime", "2024-05-01 21:30+02:00", 1714591800000),
    ("datetime", "01/05/2024 7:30 pm", 1714591800000),
    ("datetime", "2024-05-01 19:30:00.250", 1714591800250),
    ("duration", "1:30:00", 5_400_000), ("duration", "1:30", 5_400_000),
    ("duration", "90", 5_400_000), ("duration", "1.5", 90_000),
    ("duration", "0:00:01.5", 1500), ("duration", "-0:05:00", -300_000),
    ("duration", "1h 30m", 5_400_000), ("duration", "45s", 45_000),
    ("enum", "Lead", "Lead"), ("enum", " swing ", "Swing"), ("enum", "chorus", "ch"),
    ("enum", "CH", "ch"), ("entity_ref", "Ada", "00000000-0000-4000-8000-000000000001"),
    ("entity_ref", "bo", "00000000-0000-4000-8000-000000000003"),
    ("entity_ref", "ADA", "00000000-0000-4000-8000-000000000001"),
    ("entity_ref", "00000000-0000-4000-8000-000000000006",
     "00000000-0000-4000-8000-000000000006"),
])
def test_parse_cell(kind: str, text: str, value: Any) -> None:
    got = parse(kind, text, opts=Options(tz=dt.UTC))
    assert got == value and type(got) is type(value)


def test_decimal_comma_and_month_first() -> None:
    eu = Options(decimal_comma=True)
    assert parse("float", "1,5", opts=eu) == 1.5
    assert parse("float", "1.234,5", opts=eu) == 1234.5
    assert parse("integer", "1.234", opts=eu) == 1234
    assert parse("duration", "1,5", opts=eu) == 90_000
    us = Options(month_first=frozenset([4]))
    assert parse("date", "05/01/2024", col=4, opts=us) == "2024-05-01"
    assert parse("date", "05/01/2024", col=3, opts=us) == "2024-01-05"


@pytest.mark.parametrize(("kind", "text", "message"), [
    ("integer", "twelve", "not a whole number"), ("integer", "1.5", "not a whole number"),
    ("integer", "9" * 30, "too large"), ("float", "abc", "not a number"),
    ("float", "inf", "not a finite number"), ("boolean", "maybe", "not yes or no"),
    ("date", "31/02/2024", "no such date"), ("date", "soon", "not a date"),
    ("date", "2024-05-01 10:00", "without a time"), ("datetime", "2024-05-01 25:00",
                                                     "not a time"),
    ("duration", "1:75", "up to 59"), ("duration", "soon", "not a duration"),
    ("enum", "Villain", "“Villain” is not one of the choices: Lead, Chorus, Swing"),
    ("entity_ref", "Nobody", "no record named “Nobody” in Cast"),
    ("entity_ref", "twin", "2 records in Cast are named “twin”"),
    ("entity_ref", "00000000-0000-4000-8000-000000000009", "no record named"),
])
def test_parse_errors(kind: str, text: str, message: str) -> None:
    with pytest.raises(CellError, match=message):
        parse(kind, text)


def test_choice_field_without_a_list_takes_any_key() -> None:
    assert csvio.parse_cell(fd("tag", "enum"), " Blue ") == "Blue"


def test_file_and_long_text() -> None:
    with pytest.raises(CellError, match="files"):
        csvio.parse_cell(fd("photo", "blob_ref"), "a.png")
    with pytest.raises(CellError, match="1 MB"):
        parse("text", "x" * (values.MAX_TEXT + 1))


def test_plan_convert_reports_each_bad_cell() -> None:
    headers = ["Name", "Age", "Role"]
    plan = csvio.Plan(TABLE, headers, {"Name": "name", "Age": "age", "Role": "role"},
                      Options())
    assert plan.convert(2, ["Ada", "36"]) == ({"name": "Ada", "age": 36}, [])
    vals, errs = plan.convert(3, ["Bo", "x", "Villain", "extra"])
    assert vals == {"name": "Bo"}
    assert [(e.row, e.column, e.field, e.value) for e in errs] == [
        (3, None, None, "extra"), (3, "Age", "Age", "x"), (3, "Role", "Role", "Villain")]
    assert errs[0].message == "this row has 4 values but the header names 3 columns"


# --- export -----------------------------------------------------------------------------------

def test_render_cell() -> None:
    r = csvio.render_cell
    assert r(FIELDS["boolean"], True) == "yes" and r(FIELDS["boolean"], False) == "no"
    assert r(FIELDS["duration"], 5_400_000) == "1:30:00"
    assert r(FIELDS["duration"], -1) == "-0:00:00.001"
    assert r(FIELDS["enum"], "ch") == "Chorus"
    assert r(FIELDS["datetime"], 1714591800000, tz=dt.UTC) == "2024-05-01 19:30"
    assert r(FIELDS["datetime"], 1714591800250, tz=PARIS) == "2024-05-01 21:30:00.250"
    # 02:30 on 27 Oct 2024 happens twice in Paris: the second one says its offset
    assert r(FIELDS["datetime"], 1729989000000, tz=PARIS) == "2024-10-27 02:30"
    assert r(FIELDS["datetime"], 1729992600000, tz=PARIS) == "2024-10-27 02:30+01:00"
    assert csvio.parse_datetime("2024-10-27 02:30+01:00", tz=PARIS) == 1729992600000
    assert csvio.parse_datetime("2024-10-27 02:30", tz=PARIS) == 1729989000000
    assert r(FIELDS["entity_ref"], "id-1", name_of=lambda _x: "Ada") == "Ada"
    assert r(FIELDS["entity_ref"], "id-1", name_of=lambda _x: None) == "id-1"
    assert r(fd("photo", "blob_ref"), "ab" * 32, file_name=lambda _h: "plot.png") == "plot.png"
    assert r(FIELDS["text"], None) == ""


def test_write_csv() -> None:
    out = "".join(csvio.write_csv([["Name", "Note"], ["Ada", 'a, "b"\nc']], chunk_rows=1))
    assert out == '\ufeffName,Note\r\nAda,"a, ""b""\nc"\r\n'
    assert "".join(csvio.write_csv([["x"]], bom=False)) == "x\r\n"


# --- round trip -------------------------------------------------------------------------------

NAMES = [("Ada", "00000000-0000-4000-8000-00000000000a"),
         ("Bo, the second", "00000000-0000-4000-8000-00000000000b"),
         (None, "00000000-0000-4000-8000-00000000000c")]
ROUND_LINKS = csvio.LinkIndex("Cast", NAMES)
NAME_OF = {rid: name for name, rid in NAMES}

MS_RANGE = (-2_208_988_800_000, 4_102_444_800_000)  # 1900 .. 2100
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "text": st.text(st.characters(blacklist_categories=["Cs"]), min_size=1).filter(
        lambda s: s.strip() != ""),
    "integer": st.integers(values.I64_MIN, values.I64_MAX),
    "float": st.floats(allow_nan=False, allow_infinity=False).map(
        lambda x: 0.0 if x == 0 else x),
    "boolean": st.booleans(),
    "date": st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31)).map(dt.date.isoformat),
    "datetime": st.integers(*MS_RANGE),
    "duration": st.integers(-10**12, 10**12),
    "enum": st.sampled_from(["Lead", "ch", "Swing"]),
    "entity_ref": st.sampled_from([rid for _n, rid in NAMES]),
}
ROW = st.fixed_dictionaries({k: st.none() | s for k, s in VALUES.items()})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, min_size=1, max_size=5), delim=st.sampled_from([",", ";", "\t"]),
       tz=st.sampled_from([dt.UTC, PARIS, ZoneInfo("America/New_York")]))
def test_export_then_import_gives_the_same_values(
        tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]], delim: str,
        tz: dt.tzinfo) -> None:
    fields = list(FIELDS.values())
    text_rows = [[f.label for f in fields]] + [
        [csvio.render_cell(f, r[k], name_of=NAME_OF.get, tz=tz)
         for k, f in zip(FIELDS, fields, strict=True)] for r in rows]
    if delim == ",":
        data = "".join(csvio.write_csv(text_rows)).encode()
    else:  # what a spreadsheet writes in other locales (no BOM)
        buf = io.StringIO()
        csv.writer(buf, delimiter=delim, lineterminator="\r\n").writerows(text_rows)
        data = buf.getvalue().encode()
    p = tmp_path_factory.mktemp("rt") / "x.csv"
    p.write_bytes(data)
    enc, _ = csvio.detect_encoding(data)
    with csvio.open_text(p, enc) as f:
        sniffed = csvio.sniff_delimiter(f.read(csvio.SNIFF_CHARS))
    sc = csvio.scan(p, enc, sniffed)
    mapping, _ = csvio.match_headers(sc.headers, TABLE)
    plan = csvio.Plan(TABLE, sc.headers, mapping,
                      Options(decimal_comma=sniffed == ";", month_first=sc.month_first, tz=tz),
                      {"partner": ROUND_LINKS})
    got = []
    for n, cells in csvio.iter_records(p, enc, sniffed):
        vals, errs = plan.convert(n, cells)
        assert errs == []
        got.append(vals)
    want = [{f.name: r[k] for k, f in FIELDS.items() if r[k] is not None} for r in rows]
    want = [w for w in want if w]  # an all-empty row is a blank line: skipped
    assert got == want


def test_ids_are_valid() -> None:
    for _n, rid in NAMES:
        ids.from_text(rid)
