"""CSV import and export (spec 05 §4): decoding, delimiter sniffing, header matching, and the
conversion of each cell to a field's value and back. Pure and synchronous.

A file is read twice, row by row, never whole: once when it arrives (`scan`: header, row count,
a sample, per-column date-order hints) and once per check or import (`iter_records`). Values
are in the API's user form (what `/records/list` answers and `/records/create` takes): ints for
integers, durations (ms) and datetimes (ms since the epoch), `YYYY-MM-DD` for dates, the choice
key for a choice, a record id for a link.

Rules (docs: /tmp/ui9/decisions_csv.md):
- Encoding: UTF-8 (with or without BOM); a file that is not valid UTF-8 is read as Windows-1252
  (what Excel writes on Windows), or Latin-1 when it has bytes Windows-1252 leaves undefined.
- Delimiter: `,`, `;` or tab, whichever splits the first lines into the same number (>1) of
  columns. A `;` file (Excel in many European locales) takes a decimal comma in numbers.
- Dates: ISO `2024-05-01`; `01/05/2024`, `1.5.2024` and `1-5-24` are day first, unless a value
  of that column can only be month first (`05/13/2024`): then the whole column is read month
  first. `1 May 2024`, `May 1, 2024` work too.
- Export: UTF-8 with a BOM (so Excel reads it as UTF-8), `,`-separated, CRLF; links as the
  linked record's name, files as their names, durations `h:mm:ss`, datetimes
  `YYYY-MM-DD HH:MM[:SS[.mmm]]` in local time (with its UTC offset only where the local time is
  ambiguous, at a DST change), booleans `yes`/`no`, choices by label.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from openprod.core import ids, values
from openprod.core.errors import ValidationError
from openprod.engine.views import FieldDef, TableDef

BOM = codecs.BOM_UTF8
SNIFF_CHARS = 64 * 1024
SAMPLE_ROWS = 5
DELIMITERS = (",", ";", "\t")
FIELD_LIMIT = 2 * values.MAX_TEXT  # characters in one cell (csv's default is 128 KiB)
CP1252_UNDEFINED = (b"\x81", b"\x8d", b"\x8f", b"\x90", b"\x9d")
ENCODING_LABELS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "cp1252": "Windows-1252",
                   "latin-1": "Latin-1"}

csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))


class CellError(ValueError):
    """A cell that does not convert; the message is for people."""


class CsvFormatError(ValidationError):
    code = "bad_csv"


# --- decoding and sniffing --------------------------------------------------------------------

class EncodingDetector:
    """Fed the file's bytes in order; says which encoding reads all of them."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.utf8_ok = True
        self.cp1252_ok = True
        self._head = b""
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < 3:
            self._head = (self._head + chunk)[:3]
        self.size += len(chunk)
        if self.utf8_ok:
            try:
                self._utf8.decode(chunk)
            except UnicodeDecodeError:
                self.utf8_ok = False
        if self.cp1252_ok and any(b in chunk for b in CP1252_UNDEFINED):
            self.cp1252_ok = False

    def result(self) -> tuple[str, str | None]:
        """(Python codec name, a note for the user when the file was not UTF-8)."""
        if self.utf8_ok:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self.utf8_ok = False
        if self.utf8_ok:
            return ("utf-8-sig" if self._head == BOM else "utf-8"), None
        if self.cp1252_ok:
            return "cp1252", ("This file is not UTF-8: it was read as Windows-1252 (what Excel "
                              "saves on Windows). Check accented letters in the preview.")
        return "latin-1", ("This file is not UTF-8: it was read as Latin-1. Check accented "
                           "letters in the preview.")


def detect_encoding(data: bytes) -> tuple[str, str | None]:
    d = EncodingDetector()
    d.feed(data)
    return d.result()


def sniff_delimiter(sample: str) -> str:
    """`,`, `;` or tab: the one that splits the sample's lines most consistently."""
    lines = sample.splitlines(keepends=True)
    if len(lines) > 1 and not sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last line may be cut off
    text = "".join(lines[:50])
    best: tuple[int, int, int] = (0, 0, 0)
    choice = ","
    for rank, d in enumerate(DELIMITERS):
        try:
            rows = [r for r in csv.reader(io.StringIO(text), delimiter=d) if r]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        same = sum(1 for r in rows if len(r) == width)
        score = (same, width, -rank)
        if score > best:
            best, choice = score, d
    return choice


def delimiter_name(d: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab"}.get(d, repr(d))


def open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    return open(path, encoding=encoding, newline="")


def unique_headers(raw: Sequence[str]) -> list[str]:
    """Headers as the user will see them: blanks named "Column n", duplicates numbered."""
    out: list[str] = []
    seen: set[str] = set()
    for i, h in enumerate(raw):
        name = h.strip() or f"Column {i + 1}"
        base, n = name, 2
        while name in seen:
            name = f"{base} ({n})"
            n += 1
        seen.add(name)
        out.append(name)
    return out


@attrs.frozen
class Scan:
    headers: list[str]
    rows: int  # non-blank data rows
    sample: list[list[str]]
    month_first: frozenset[int]  # column indexes whose slash dates are month first


_SLASH_DATE = re.compile(r"\s*(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2}|\d{4})(?:\D.*)?")


def _is_blank(cells: Sequence[str]) -> bool:
    return all(not c.strip() for c in cells)


def scan(path: Path, encoding: str, delimiter: str) -> Scan:
    """One pass over the file: header, row count, the first rows, date-order hints."""
    headers: list[str] | None = None
    rows = 0
    sample: list[list[str]] = []
    day_first: set[int] = set()
    month_first: set[int] = set()
    with open_text(path, encoding) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            for cells in reader:
                if headers is None:
                    if _is_blank(cells):
                        continue
                    headers = unique_headers(cells)
                    continue
                if _is_blank(cells):
                    continue
                rows += 1
                if len(sample) < SAMPLE_ROWS:
                    sample.append(list(cells))
                for i, c in enumerate(cells):
                    if c and c[0].isdigit() and (m := _SLASH_DATE.fullmatch(c)) is not None:
                        a, b = int(m[1]), int(m[2])
                        if a > 12 >= b:
                            day_first.add(i)
                        elif b > 12 >= a:
                            month_first.add(i)
        except csv.Error as exc:
            raise CsvFormatError(f"line {reader.line_num} of the file can't be read as CSV: "
                                 f"{exc}", line=reader.line_num) from None
    if headers is None:
        raise CsvFormatError("the file is empty: it needs a header row naming its columns")
    return Scan(headers, rows, sample, frozenset(month_first - day_first))


def iter_records(path: Path, encoding: str, delimiter: str
                 ) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row number, cells) of each non-blank data row; the header is row 1."""
    with open_text(path, encoding) as f:
        reader = csv.reader(f, delimiter=delimiter)
        n = 0
        header_seen = False
        try:
            for cells in reader:
                n += 1
                if not header_seen:
                    if _is_blank(cells):
                        continue
                    header_seen = True
                    continue
                if _is_blank(cells):
                    continue
                yield n, cells
        except csv.Error as exc:
            raise CsvFormatError(f"line {reader.line_num} of the file can't be read as CSV: "
                                 f"{exc}", line=reader.line_num) from None


# --- header matching --------------------------------------------------------------------------

def norm(s: str) -> str:
    """Case-, space- and punctuation-insensitive form of a header or field name."""
    s = unicodedata.normalize("NFKD", s).casefold()
    return "".join(ch for ch in s if ch.isalnum())


def unimportable(f: FieldDef) -> str | None:
    """Why a field cannot be filled from a CSV, or None."""
    if f.ftype == "blob_ref":
        return f"“{f.label}” is a file field: files can't be imported from a CSV"
    if f.crdt:
        return (f"“{f.label}” is a collaborative long-text field: it can't be filled by an "
                "import (imports are staged for review, and collaborative text can't be "
                "staged)")
    return None


def match_headers(headers: Sequence[str], table: TableDef
                  ) -> tuple[dict[str, str | None], dict[str, str]]:
    """(header -> field name or None, header -> why its matching field is not offered)."""
    mapping: dict[str, str | None] = {}
    skipped: dict[str, str] = {}
    taken: set[str] = set()
    for h in headers:
        key = norm(h)
        found: FieldDef | None = None
        if key:
            for f in table.fields:
                if norm(f.label) == key or norm(f.name) == key:
                    found = f
                    break
        if found is None or found.name in taken:
            mapping[h] = None
            continue
        reason = unimportable(found)
        if reason is not None:
            mapping[h] = None
            skipped[h] = reason
            continue
        mapping[h] = found.name
        taken.add(found.name)
    return mapping, skipped


def check_mapping(table: TableDef, headers: Sequence[str],
                  mapping: Mapping[str, Any]) -> dict[int, FieldDef]:
    """Column index -> field for a mapping the user confirmed (unknown headers, unknown or
    unimportable fields and a field named twice are refused)."""
    index = {h: i for i, h in enumerate(headers)}
    out: dict[int, FieldDef] = {}
    used: dict[str, str] = {}
    for h, ref in mapping.items():
        if h not in index:
            raise ValidationError(f"the file has no column {h!r}", field="mapping", column=h)
        if ref is None or ref == "":
            continue
        if not isinstance(ref, str):
            raise ValidationError(f"column {h!r}: a field name or null", field="mapping")
        f = next((x for x in table.fields if x.name == ref), None)
        if f is None:
            f = next((x for x in table.fields if x.label.casefold() == ref.casefold()), None)
        if f is None:
            raise ValidationError(f"table {table.label!r} has no field {ref!r}",
                                  field="mapping", column=h)
        reason = unimportable(f)
        if reason is not None:
            raise ValidationError(reason, field="mapping", column=h)
        if f.name in used:
            raise ValidationError(f"columns {used[f.name]!r} and {h!r} both go to "
                                  f"“{f.label}”; pick one", field="mapping", column=h)
        used[f.name] = h
        out[index[h]] = f
    if not out:
        raise ValidationError("choose a field for at least one column", field="mapping")
    return out


# --- record names (links) ---------------------------------------------------------------------

def record_title(table: TableDef, vals: Mapping[str, Any]) -> str | None:
    """A record's name: its first non-empty text value (first line), as the UI shows it."""
    for f in table.fields:
        v = vals.get(f.name)
        if f.ftype == "text" and isinstance(v, str) and v.strip():
            return v.strip().split("\n")[0].strip()
    return None


class LinkIndex:
    """The records a link field may point to, by name (exact, then case-insensitive) or id."""

    def __init__(self, label: str, entries: Iterable[tuple[str | None, str]]) -> None:
        self.label = label  # "Cast", or "any table"
        self.ids: set[str] = set()
        self.exact: dict[str, set[str]] = {}
        self.folded: dict[str, set[str]] = {}
        for name, rid in entries:
            self.ids.add(rid)
            if name:
                self.exact.setdefault(name, set()).add(rid)
                self.folded.setdefault(name.casefold(), set()).add(rid)

    def lookup(self, text: str) -> str:
        t = text.strip()
        for hits in (self.exact.get(t), self.folded.get(t.casefold())):
            if hits is not None:
                if len(hits) == 1:
                    return next(iter(hits))
                raise CellError(f"{len(hits)} records in {self.label} are named “{t}”; "
                                "rename one, or give the record's id")
        if _is_id_text(t):
            rid = ids.to_text(ids.from_text(t))
            if rid in self.ids:
                return rid
        raise CellError(f"no record named “{t}” in {self.label}")


def _is_id_text(t: str) -> bool:
    try:
        ids.from_text(t)
    except (ValueError, TypeError):
        return False
    return True


def link_index(views: Any, f: FieldDef) -> LinkIndex:
    """The records a link field may point to (its target table, or every table)."""
    target = f.opts.get("ref_table")
    tables = [t for t in views.tables() if target is None or t.facet == target]
    entries: list[tuple[str | None, str]] = []
    for t in tables:
        for e in views.record_ids(t.facet):
            vals, _ = views.record_values(e, t)
            entries.append((record_title(t, vals), ids.to_text(e)))
    label = tables[0].label if target is not None and tables else "any table"
    return LinkIndex(label, entries)


# --- cells to values --------------------------------------------------------------------------

TRUE = frozenset(["yes", "y", "true", "t", "1", "x", "✓", "✔", "on"])
FALSE = frozenset(["no", "n", "false", "f", "0", "off"])
MONTHS = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}
_GROUP = re.compile(r"[\s\u00a0\u202f'_]")
_INT = re.compile(r"[+-]?\d+")
_ISO_DATE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")
_DMY = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})")
_D_MON_Y = re.compile(r"(\d{1,2})[\s\-]+([a-z]{3,})\.?,?[\s\-]+(\d{4}|\d{2})")
_MON_D_Y = re.compile(r"([a-z]{3,})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})")
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?\s*([ap]\.?m\.?)?")
_TZ = re.compile(r"(z|[+-]\d{2}:?\d{2})$")
_HMS = re.compile(r"(-)?(\d+):(\d{1,2})(?::(\d{1,2})([.,]\d{1,3})?)?")
_UNITS = re.compile(r"(?:(\d+)\s*h(?:ours?|rs?)?)?\s*(?:(\d+)\s*m(?:in(?:utes?|s)?)?)?\s*"
                    r"(?:(\d+)\s*s(?:ec(?:onds?|s)?)?)?")


def _int(text: str, decimal_comma: bool) -> int:
    t = _GROUP.sub("", text)
    sep, point = (".", ",") if decimal_comma else (",", ".")
    if re.fullmatch(rf"[+-]?\d{{1,3}}(\{sep}\d{{3}})+(\{point}0*)?", t):
        t = t.replace(sep, "")
    t = re.sub(rf"\{point}0*$", "", t)
    if not _INT.fullmatch(t):
        raise CellError("not a whole number")
    n = int(t)
    if not values.I64_MIN <= n <= values.I64_MAX:
        raise CellError("this number is too large")
    return n


def _float(text: str, decimal_comma: bool) -> float:
    t = _GROUP.sub("", text)
    if decimal_comma and "," in t:
        t = t.replace(".", "").replace(",", ".")
    elif not decimal_comma:
        t = t.replace(",", "")
    try:
        x = float(t)
    except ValueError:
        raise CellError("not a number") from None
    if not math.isfinite(x) or t.lower().strip("+-") in ("inf", "infinity", "nan"):
        raise CellError("not a finite number")
    return 0.0 if x == 0.0 else x


def _year(y: str) -> int:
    n = int(y)
    if len(y) == 2:
        n += 2000 if n < 69 else 1900
    return n


def _date(text: str, month_first: bool) -> tuple[dt.date, str]:
    """The date at the start of text, and what follows it."""
    t = text.strip().lower()
    ymd: tuple[int, int, int] | None = None
    rest = ""
    if m := _ISO_DATE.match(t):
        ymd, rest = (int(m[1]), int(m[2]), int(m[3])), t[m.end():]
    elif m := _DMY.match(t):
        a, b = int(m[1]), int(m[2])
        d, mo = (b, a) if month_first else (a, b)
        ymd, rest = (_year(m[3]), mo, d), t[m.end():]
    elif (m := _D_MON_Y.match(t)) and m[2][:3] in MONTHS:
        ymd, rest = (_year(m[3]), MONTHS[m[2][:3]], int(m[1])), t[m.end():]
    elif (m := _MON_D_Y.match(t)) and m[1][:3] in MONTHS:
        ymd, rest = (int(m[3]), MONTHS[m[1][:3]], int(m[2])), t[m.end():]
    if ymd is None:
        raise CellError("not a date (write it as 2024-05-01 or 01/05/2024)")
    try:
        return dt.date(*ymd), rest
    except ValueError:
        raise CellError("no such date") from None


def parse_date(text: str, month_first: bool = False) -> str:
    d, rest = _date(text, month_first)
    rest = rest.strip().lstrip("t").strip()
    if rest and not re.fullmatch(r"0{1,2}:00(:00(\.0+)?)?", rest):
        raise CellError("a date field takes a date without a time")
    return d.isoformat()


def parse_datetime(text: str, month_first: bool = False,
                   tz: dt.tzinfo | None = None) -> int:
    """ms since the epoch; a time without an offset is local time (tz, else the system's)."""
    d, rest = _date(text, month_first)
    rest = rest.strip()
    if rest[:1] == "t":
        rest = rest[1:]
    offset: dt.tzinfo | None = None
    if (m := _TZ.search(rest)) is not None:
        z = m[1]
        if z == "z":
            offset = dt.UTC
        else:
            z = z.replace(":", "")
            mins = int(z[1:3]) * 60 + int(z[3:5])
            offset = dt.timezone(dt.timedelta(minutes=mins if z[0] == "+" else -mins))
        rest = rest[:m.start()].strip()
    hh = mm = ss = us = 0
    if rest:
        tm = _TIME.fullmatch(rest)
        if tm is None:
            raise CellError("not a time (write it as 2024-05-01 19:30)")
        hh, mm = int(tm[1]), int(tm[2])
        ss = int(tm[3]) if tm[3] else 0
        us = int((tm[4] or "0").ljust(6, "0"))
        if tm[5]:
            if not 1 <= hh <= 12:
                raise CellError("not a time")
            hh = hh % 12 + (12 if tm[5][0] == "p" else 0)
        if hh > 23 or mm > 59 or ss > 59:
            raise CellError("not a time")
    naive = dt.datetime(d.year, d.month, d.day, hh, mm, ss)
    try:
        ts = _naive_ts(naive, offset if offset is not None else tz)
    except (OverflowError, OSError, ValueError):
        raise CellError("this date is out of range") from None
    return int(ts) * 1000 + us // 1000


def parse_duration(text: str, decimal_comma: bool = False) -> int:
    """ms from `h:mm:ss(.mmm)`, `h:mm`, a number of minutes, or `1h 30m` / `45s`."""
    t = text.strip().lower()
    num = t.replace(",", ".") if decimal_comma else t
    if re.fullmatch(r"\d+(\.\d+)?", num):
        return round(float(num) * 60000)
    if m := _HMS.fullmatch(t):
        neg, h, mm, ss, frac = m.groups()
        if int(mm) > 59 or (ss is not None and int(ss) > 59):
            raise CellError("minutes and seconds go up to 59")
        ms = (int(h) * 3600 + int(mm) * 60 + (int(ss) if ss else 0)) * 1000
        if frac:
            ms += round(float("0" + frac.replace(",", ".")) * 1000)
        if abs(ms) > values.I64_MAX:
            raise CellError("this duration is too long")
        return -ms if neg else ms
    if t and (m := _UNITS.fullmatch(t)) is not None and any(m.groups()):
        h, mi, s = (int(x) if x else 0 for x in m.groups())
        return (h * 3600 + mi * 60 + s) * 1000
    raise CellError("not a duration (write it as 1:30:00, 1:30 or a number of minutes)")


def parse_bool(text: str) -> bool:
    t = text.strip().casefold()
    if t in TRUE:
        return True
    if t in FALSE:
        return False
    raise CellError("not yes or no (write yes/no, true/false, 1/0, or x for yes)")


def choices_of(f: FieldDef) -> list[tuple[str, str]]:
    """(key, label) of each choice."""
    out = []
    for c in f.opts.get("choices") or []:
        if isinstance(c, str):
            out.append((c, c))
        else:
            out.append((str(c[0]), str(c[1] if len(c) > 1 else c[0])))
    return out


def parse_choice(f: FieldDef, text: str) -> str:
    t = text.strip()
    ch = choices_of(f)
    if not ch and f.opts.get("choices") is None:
        return t  # a choice field without a list takes any key
    for key, _label in ch:
        if key == t:
            return key
    low = t.casefold()
    for key, label in ch:
        if key.casefold() == low or label.casefold() == low:
            return key
    shown = ", ".join(label for _k, label in ch[:12]) + (", …" if len(ch) > 12 else "")
    raise CellError(f"“{t}” is not one of the choices: {shown}")


@attrs.frozen
class Options:
    """How a file writes its values (from `scan` and the delimiter)."""

    decimal_comma: bool = False
    month_first: frozenset[int] = frozenset()
    tz: dt.tzinfo | None = None  # None: the system's local time


def parse_cell(f: FieldDef, text: str, *, col: int = -1, opts: Options = Options(),
               links: LinkIndex | None = None) -> Any:
    """The user-form value of one cell for field f (None for an empty cell); CellError."""
    if f.ftype == "text":
        if text == "" or not text.strip():
            return None
        if len(text.encode()) > values.MAX_TEXT:
            raise CellError("this text is longer than 1 MB")
        return text
    t = text.strip()
    if not t:
        return None
    ft = f.ftype
    if ft == "integer":
        return _int(t, opts.decimal_comma)
    if ft == "float":
        return _float(t, opts.decimal_comma)
    if ft == "boolean":
        return parse_bool(t)
    if ft == "date":
        return parse_date(t, col in opts.month_first)
    if ft == "datetime":
        ms = parse_datetime(t, col in opts.month_first, opts.tz)
        if not values.I64_MIN <= ms <= values.I64_MAX:
            raise CellError("this date is out of range")
        return ms
    if ft == "duration":
        return parse_duration(t, opts.decimal_comma)
    if ft == "enum":
        return parse_choice(f, t)
    if ft == "entity_ref":
        if links is None:
            raise CellError("links can't be resolved here")
        return links.lookup(t)
    if ft == "blob_ref":
        raise CellError("files can't be imported from a CSV")
    raise CellError(f"fields of type {ft} can't be imported")


@attrs.frozen
class RowError:
    row: int
    column: str | None
    field: str | None
    value: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "field": self.field,
                "value": self.value, "message": self.message}


class Plan:
    """A confirmed mapping, ready to convert rows: `convert(row, cells)` gives the values for
    `create_record` and the errors of that row."""

    def __init__(self, table: TableDef, headers: Sequence[str], mapping: Mapping[str, Any],
                 opts: Options, links: Mapping[str, LinkIndex] | None = None) -> None:
        self.table = table
        self.headers = list(headers)
        self.columns = check_mapping(table, headers, mapping)
        self.opts = opts
        self.links = dict(links or {})

    def link_fields(self) -> list[FieldDef]:
        return [f for f in self.columns.values() if f.ftype == "entity_ref"]

    def convert(self, row: int, cells: Sequence[str]) -> tuple[dict[str, Any], list[RowError]]:
        vals: dict[str, Any] = {}
        errs: list[RowError] = []
        width = len(self.headers)
        if len(cells) > width and any(c.strip() for c in cells[width:]):
            errs.append(RowError(row, None, None, ", ".join(cells[width:])[:200],
                                 f"this row has {len(cells)} values but the header names "
                                 f"{width} columns"))
        for i, f in self.columns.items():
            text = cells[i] if i < len(cells) else ""
            try:
                v = parse_cell(f, text, col=i, opts=self.opts, links=self.links.get(f.name))
            except CellError as exc:
                errs.append(RowError(row, self.headers[i], f.label, text[:200], str(exc)))
                continue
            if v is not None:
                vals[f.name] = v
        return vals, errs


# --- values to cells (export) -----------------------------------------------------------------

def format_duration(ms: int) -> str:
    sign = "-" if ms < 0 else ""
    rest = abs(ms)
    h, rest = divmod(rest, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    return f"{sign}{h}:{m:02d}:{s:02d}" + (f".{frac:03d}" if frac else "")


def _naive_ts(naive: dt.datetime, tz: dt.tzinfo | None) -> float:
    return naive.replace(tzinfo=tz).timestamp() if tz is not None else naive.timestamp()


def format_datetime(ms: int, tz: dt.tzinfo | None = None) -> str:
    """Local time `YYYY-MM-DD HH:MM[:SS[.mmm]]`; with the UTC offset where that local time is
    ambiguous or skipped (DST), so the value reads back exactly. Out of range: the ms."""
    secs, frac = divmod(ms, 1000)
    try:
        aware = dt.datetime.fromtimestamp(secs, dt.UTC).astimezone(tz)
        naive = aware.replace(tzinfo=None, fold=0)  # what the text says, read back
        back = _naive_ts(naive, tz)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    text = naive.strftime("%Y-%m-%d %H:%M")
    if naive.second or frac:
        text += f":{naive.second:02d}"
    if frac:
        text += f".{frac:03d}"
    if int(back) != secs:
        off = aware.utcoffset() or dt.timedelta(0)
        mins = int(off.total_seconds() // 60)
        sign = "+" if mins >= 0 else "-"
        text += f"{sign}{abs(mins) // 60:02d}:{abs(mins) % 60:02d}"
    if not text[:4].isdigit() or int(text[:4]) < 1000:
        return str(ms)  # a 3-digit year would not read back as a date
    return text


def format_float(x: float) -> str:
    return repr(float(x))


def render_cell(f: FieldDef, v: Any, *, name_of: Callable[[str], str | None] | None = None,
                file_name: Callable[[str], str | None] | None = None,
                tz: dt.tzinfo | None = None) -> str:
    """The CSV text of a user-form value (the inverse of `parse_cell`)."""
    if v is None:
        return ""
    ft = f.ftype
    if ft == "text":
        return str(v)
    if ft == "boolean":
        return "yes" if v else "no"
    if ft == "integer":
        return str(int(v))
    if ft == "float":
        return format_float(v)
    if ft == "date":
        return str(v)
    if ft == "datetime":
        return format_datetime(int(v), tz)
    if ft == "duration":
        return format_duration(int(v))
    if ft == "enum":
        for key, label in choices_of(f):
            if key == v:
                return label
        return str(v)
    if ft == "entity_ref":
        name = name_of(str(v)) if name_of is not None else None
        return name or str(v)
    if ft == "blob_ref":
        name = file_name(str(v)) if file_name is not None else None
        return name or str(v)
    return str(v)


def write_csv(rows: Iterable[Sequence[str]], *, bom: bool = True,
              chunk_rows: int = 500) -> Iterator[str]:
    """CSV text in pieces of about chunk_rows rows (comma-separated, CRLF, minimal quoting)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    if bom:
        buf.write("\ufeff")
    n = 0
    for r in rows:
        w.writerow(r)
        n += 1
        if n >= chunk_rows:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            n = 0
    rest = buf.getvalue()
    if rest:
        yield rest


__all__ = ["BOM", "CellError", "CsvFormatError", "EncodingDetector", "LinkIndex", "Options",
           "Plan", "RowError", "Scan", "check_mapping", "delimiter_name", "detect_encoding",
           "format_datetime", "format_duration", "iter_records", "link_index",
           "match_headers", "norm", "parse_cell", "parse_date", "parse_datetime",
           "parse_duration", "record_title", "render_cell", "scan", "sniff_delimiter",
           "unimportable", "unique_headers", "write_csv"]
