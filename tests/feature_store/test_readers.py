"""Readers: every source becomes RawData with exact rejects (file, physical line, reason, raw text)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.config import (
    ConfigError,
    CriteoSource,
    LabelRule,
    MovieLensSource,
    SyntheticSource,
    TableSource,
    TransactionsSource,
)
from feature_store.readers import REGISTRY, read_source
from feature_store.readers.text import _TranscodedFile, read_delimited
from feature_store.rejects import RejectFractionExceeded, Rejects

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"real data set '{name}' is absent at ../shared/datasets/{name}; this test reads it")
    return path


@pytest.fixture
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    """Run in tmp_path so that relative config paths resolve there (as they do from the project root)."""
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def rejects_of(rejects: Rejects) -> list[tuple[int, str, str]]:
    return [(r["line"], r["reason"], r["raw"]) for r in rejects.to_table().to_pylist()]


COLS = {"user": "int", "item": "string", "score": "float", "when": "timestamp"}


def read(path: Path, **kw: object) -> tuple[pa.Table, int, Rejects]:
    rejects = Rejects()
    args: dict = {"delimiter": ",", "header": True, "rejects": rejects, "source_name": path.name} | kw
    columns = args.pop("columns", COLS)
    table, n = read_delimited(path, columns, **args)
    return table, n, rejects


# ------------------------------------------------------------------------------------------ text parser


def test_wrong_field_count_is_rejected_with_physical_line_and_raw_text(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n1,a,0.5,100\n2,b,0.7\n3,c,0.1,300,extra\n4,d,0.2,400\n")
    table, n, rejects = read(p)
    assert table.column("user").to_pylist() == [1, 4]
    assert rejects_of(rejects) == [
        (3, "wrong field count", "2,b,0.7"),
        (4, "wrong field count", "3,c,0.1,300,extra"),
    ]
    assert n == 4 == table.num_rows + len(rejects)
    assert rejects.to_table().column("source").to_pylist() == ["e.csv", "e.csv"]


def test_value_rejects_after_skipped_and_blank_lines_carry_exact_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n1,a,0.5,100\nbroken\n\n2,b,zero,200\n\n3,c,0.1,300\n4,d,-1,x\n")
    table, n, rejects = read(p)
    assert table.column("user").to_pylist() == [1, 3]
    assert rejects_of(rejects) == [
        (3, "wrong field count", "broken"),
        (5, "unparsable number: score", "2,b,zero,200"),
        (8, "unparsable timestamp: when", "4,d,-1,x"),
    ]
    assert n == 5  # blank lines are not data rows


def test_empty_fields_are_null_not_rejected(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n1,,,\n2,b, ,NA\n")
    table, n, rejects = read(p)
    assert len(rejects) == 0 and n == 2
    assert table.to_pydict() == {
        "user": [1, 2], "item": [None, "b"], "score": [None, None], "when": [None, None]
    }
    assert table.schema.types == [pa.int64(), pa.string(), pa.float64(), pa.int64()]


def test_crlf_line_endings_and_utf8_bom_are_read_like_plain_lines(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_bytes("\ufeffuser,item,score,when\r\n1,é,0.5,100\r\n2,b\r\n3,c,1e2,300\r\n".encode())
    table, n, rejects = read(p)
    assert n == 3
    assert table.to_pydict() == {
        "user": [1, 3], "item": ["é", "c"], "score": [0.5, 100.0], "when": [100, 300]
    }
    assert rejects_of(rejects) == [(3, "wrong field count", "2,b")]
    p.write_bytes(b"\xef\xbb\xbf7,x,1,5\r\n")
    table, _, _ = read(p, header=False)
    assert table.column("user").to_pylist() == [7]


def test_missing_required_id_and_negative_value_are_rejected_with_column(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n,a,0.5,100\n2,,0.5,100\n3,c,-0.5,100\n4,d,0,100\n")
    table, n, rejects = read(p, required=["user", "item"], non_negative=["score"])
    assert table.column("user").to_pylist() == [4]
    assert [(line, reason) for line, reason, _ in rejects_of(rejects)] == [
        (2, "missing required id: user"),
        (3, "missing required id: item"),
        (4, "negative value: score"),
    ]
    assert n == 4


def test_row_with_several_problems_is_rejected_once_with_first_reason_in_column_order(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\nx,a,y,z\n")
    _, n, rejects = read(p)
    assert rejects_of(rejects) == [(2, "unparsable number: user", "x,a,y,z")]
    assert n == 1


def test_integers_accept_float_notation_of_whole_numbers_only(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n17850.0,a,1,1\n+5,b,1,1\n2.5,c,1,1\n")
    table, _, rejects = read(p)
    assert table.column("user").to_pylist() == [17850, 5]
    assert rejects_of(rejects)[0][:2] == (4, "unparsable number: user")


def test_timestamps_parse_unix_seconds_iso8601_and_explicit_formats(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text(
        "user,item,score,when\n1,a,1,1291191960\n2,a,1,2010-12-01 08:26:00\n3,a,1,2010-12-01T08:26:00Z\n"
        "4,a,1,2010-12-01T09:26:00.123+01:00\n5,a,1,2010-12-01\n6,a,1,2010-13-01\n"
    )
    table, _, rejects = read(p)
    assert table.column("when").to_pylist() == [1291191960] * 4 + [1291161600]
    assert rejects_of(rejects) == [(7, "unparsable timestamp: when", "6,a,1,2010-13-01")]
    p.write_text("user,item,score,when\n1,a,1,01/12/2010 08:26\n2,a,1,2010-12-01 08:26:00\n")
    table, _, rejects = read(p, timestamp_format="%d/%m/%Y %H:%M")
    assert table.column("when").to_pylist() == [1291191960]
    assert rejects_of(rejects)[0][:2] == (3, "unparsable timestamp: when")


def test_bool_columns_read_true_false_and_one_zero(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_text("true\nFALSE\n1\n0\n\nmaybe\n")
    table, n, rejects = read(p, columns={"flag": "bool"}, header=False)
    assert table.column("flag").to_pylist() == [True, False, True, False]
    assert rejects_of(rejects) == [(6, "unparsable number: flag", "maybe")]
    assert n == 5


def test_invalid_utf8_bytes_reject_their_line_with_the_encoding_named(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_bytes(b"user,item,score,when\n1,caf\xe9,1,1\n2,b,1,1\n3,\xff\xfe\n4,d,1,1\n")
    table, n, rejects = read(p)
    assert table.column("user").to_pylist() == [2, 4]
    assert rejects_of(rejects) == [
        (2, "undecodable bytes (encoding utf-8)", "1,caf\ufffd,1,1"),
        (4, "undecodable bytes (encoding utf-8)", "3,\ufffd\ufffd"),
    ]
    assert n == 4


def test_a_real_replacement_character_in_utf8_text_is_kept(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_bytes("user,item,score,when\n1,caf\ufffd,1,1\n2,b\xe9,1,1\n".encode() + b"3,\xe9,1,1\n")
    table, _, rejects = read(p)
    assert table.column("item").to_pylist() == ["caf\ufffd", "b\xe9"]
    assert [(line, reason) for line, reason, _ in rejects_of(rejects)] == [(4, "undecodable bytes (encoding utf-8)")]


def test_latin1_text_reads_correctly_with_its_encoding_and_is_rejected_as_utf8(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_bytes("user,item,score,when\n1,Amélie,1,1\n2,Zoë,2,2\n".encode("latin-1"))
    table, n, rejects = read(p, encoding="latin-1")
    assert table.column("item").to_pylist() == ["Amélie", "Zoë"] and len(rejects) == 0 and n == 2
    table, n, rejects = read(p)
    assert table.num_rows == 0 and n == 2
    assert {reason for _, reason, _ in rejects_of(rejects)} == {"undecodable bytes (encoding utf-8)"}
    assert any("source.encoding" in h for h in rejects.hints())


def test_integers_beyond_int64_are_rejected_with_a_hint_to_declare_string(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n12345678901234567890,a,1,1\n99999999999999999999,b,1,1\n3,c,1,1\n"
                 "x4,d,1,1\n")
    table, n, rejects = read(p)
    assert table.column("user").to_pylist() == [3]
    assert [reason for _, reason, _ in rejects_of(rejects)] == [
        "unparsable number: user (integer beyond int64)",
        "unparsable number: user (integer beyond int64)",
        "unparsable number: user",
    ]
    assert rejects.hints() == ["column 'user': 2 rows hold integers beyond int64 (ids most likely, too long "
                               "for a number); declare it `string` under source.columns"]
    with pytest.raises(RejectFractionExceeded, match=r"Hint: column 'user'.*declare it `string`"):
        rejects.check_fraction(n, 0.05)


def test_int_columns_read_every_int64_including_its_19_digit_limits(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("9223372036854775807\n-9223372036854775808\n+1234567890123456789\n9223372036854775808\n")
    table, _, rejects = read(p, columns={"id": "int"}, header=False)
    assert table.column("id").to_pylist() == [2**63 - 1, -(2**63), 1234567890123456789]
    assert rejects_of(rejects) == [(4, "unparsable number: id (integer beyond int64)", "9223372036854775808")]


def test_mostly_non_digit_number_rejects_give_no_string_hint(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n12345678901234567890,a,1,1\nx,b,1,1\ny,c,1,1\n")
    _, _, rejects = read(p)
    assert rejects.hints() == []


def test_max_rows_counts_kept_and_rejected_rows(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n1,a,1,1\nbad\n3,c,1,1\n4,d,x,1\n5,e,1,1\n6,f,1,1\n")
    table, n, rejects = read(p, max_rows=4)
    assert table.column("user").to_pylist() == [1, 3]
    assert [line for line, _, _ in rejects_of(rejects)] == [3, 5]
    assert n == 4


def test_line_numbers_stay_exact_across_many_small_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    kinds = rng.choice(["ok", "short", "blank", "badnum"], size=3000, p=[0.7, 0.1, 0.1, 0.1])
    text = {"ok": "{i},x,1.5,10", "short": "{i},x", "blank": "", "badnum": "{i},x,nan?,10"}
    lines = [text[k].format(i=i) for i, k in enumerate(kinds)]
    p = tmp_path / "big.csv"
    p.write_text("\n".join(lines) + "\n")
    table, n, rejects = read(p, header=False, block_size=1 << 10, line_column="line")
    expected_kept = [i + 1 for i, k in enumerate(kinds) if k == "ok"]
    assert table.column("line").to_pylist() == expected_kept
    assert table.column("user").to_pylist() == [i for i, k in enumerate(kinds) if k == "ok"]
    expected_rej = [(i + 1, "wrong field count" if k == "short" else "unparsable number: score", lines[i])
                    for i, k in enumerate(kinds) if k in ("short", "badnum")]
    assert rejects_of(rejects) == expected_rej
    assert n == int((kinds != "blank").sum())


def test_multi_character_delimiter_and_latin1_are_transcoded(tmp_path: Path) -> None:
    p = tmp_path / "m.dat"
    text = "1::Star Wars: Episode IV (1977)::Action|Sci-Fi\n2::Amélie (2001)::Comedy\n3::x\n"
    p.write_bytes(text.encode("latin-1"))
    cols = {"id": "int", "title": "string", "genres": "string"}
    table, n, rejects = read(
        p, columns=cols, delimiter="::", header=False, encoding="latin-1", quote_char=False
    )
    assert table.column("title").to_pylist() == ["Star Wars: Episode IV (1977)", "Amélie (2001)"]
    assert rejects_of(rejects) == [(3, "wrong field count", "3::x")]
    assert n == 3


def test_transcoder_replaces_a_delimiter_split_across_chunks(tmp_path: Path) -> None:
    p = tmp_path / "m.dat"
    p.write_text("ab::cd:::e::f\n")
    for chunk in (1, 2, 3, 5):
        stream = _TranscodedFile(p, "utf-8", "::", chunk=chunk)
        assert stream.read().decode() == "ab\x1fcd\x1f:e\x1ff\n"
        stream.close()


def test_header_with_other_field_count_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item\n1,a\n")
    with pytest.raises(ConfigError, match=r"e\.csv:1: the header has 2 fields"):
        read(p)


def test_header_true_on_a_headerless_file_is_an_error_not_a_lost_row(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("".join(f"{i},item{i},0.5,{1000 + i}\n" for i in range(480)))
    with pytest.raises(ConfigError, match=r"e\.csv:1: line 1 .* parses as data .* set source\.header: false"):
        read(p)
    table, n, rejects = read(p, header=False)
    assert table.num_rows == n == 480 and len(rejects) == 0


def test_header_naming_other_columns_is_an_error_saying_what_to_fix(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("uid,iid,rating,time\n1,a,1,1\n")
    with pytest.raises(ConfigError, match=r"e\.csv:1: the header names \['uid', 'iid', 'rating', 'time'\] but "
                                          r"source\.columns declares \['user', 'item', 'score', 'when'\]"):
        read(p)


def test_a_header_with_control_characters_is_named_as_binary_not_text(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_bytes(b"\x1f\x02\x08\x00user,item\n1,a\n")
    with pytest.raises(ConfigError, match=r"e\.csv:1: the header holds control characters \('\\x1f'\): this looks "
                                          r"like a binary or compressed file"):
        read(p)


def test_header_false_on_a_file_with_the_declared_header_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item,score,when\n1,a,1,1\n")
    with pytest.raises(ConfigError, match=r"e\.csv:1: line 1 names the declared columns .* set source\.header: "
                                          r"true"):
        read(p, header=False)


def test_binary_junk_is_rejected_line_by_line_or_named_as_unreadable(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    p = tmp_path / "junk.csv"
    p.write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(ConfigError, match=r"junk\.csv"):
        read(p)
    table, n, rejects = read(p, header=False)
    assert table.num_rows == 0 and len(rejects) == n > 0


def test_header_order_wins_when_it_names_the_declared_columns(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("when,score,item,user\n100,0.5,a,1\n")
    table, _, _ = read(p)
    assert table.to_pylist() == [{"user": 1, "item": "a", "score": 0.5, "when": 100}]


def test_empty_file_gives_empty_typed_table(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("")
    table, n, _ = read(p)
    assert n == 0 and table.num_rows == 0 and table.schema.field("user").type == pa.int64()


# ------------------------------------------------------------------------------------------ table source


def test_tsv_source_adds_float_label_and_renames_its_timestamp_to_ts(in_tmp: Path) -> None:
    (in_tmp / "clicks.tsv").write_text("u\ti\tclicked\tat\n1\ta\t3\t100\n2\tb\t0\t200\n3\tc\tx\t300\n")
    cfg = TableSource(type="tsv", path="clicks.tsv", columns={"u": "int", "i": "string", "clicked": "int",
                      "at": "timestamp"}, label=LabelRule(column="clicked", threshold=1))
    raw = read_source(cfg, in_tmp)
    ev = raw.events
    assert ev.column_names == ["u", "i", "clicked", "ts", "label"]
    assert ev.column("label").type == pa.float32() and ev.column("label").to_pylist() == [1.0, 0.0]
    assert raw.rows_read == {"events": 3}
    assert rejects_of(raw.rejects) == [(4, "unparsable number: clicked", "3\tc\tx\t300")]
    assert raw.rejects.to_table().column("source").to_pylist() == ["clicks.tsv"]


def test_label_rule_with_positive_values_matches_text(in_tmp: Path) -> None:
    (in_tmp / "e.csv").write_text("user,action\n1,buy\n2,view\n3,cart\n")
    cfg = TableSource(type="csv", path="e.csv", columns={"user": "int", "action": "string"},
                      label=LabelRule(column="action", positive_values=["buy", "cart"]))
    assert read_source(cfg, in_tmp).events.column("label").to_pylist() == [1.0, 0.0, 1.0]


def test_ts_is_not_renamed_when_config_has_ts_or_two_timestamps(in_tmp: Path) -> None:
    (in_tmp / "e.csv").write_text("1,2\n")
    two = TableSource(type="csv", path="e.csv", header=False, columns={"a": "timestamp", "b": "timestamp"})
    assert read_source(two, in_tmp).events.column_names == ["a", "b"]
    named = TableSource(type="csv", path="e.csv", header=False, columns={"ts": "timestamp", "b": "timestamp"})
    assert read_source(named, in_tmp).events.column_names == ["ts", "b"]


def test_parquet_source_is_validated_like_text_with_row_numbers(in_tmp: Path) -> None:
    pq.write_table(
        pa.table({
            "user": pa.array([1.0, 2.5, None, 4.0]),
            "when": pa.array([0, 1, 2, 3], pa.timestamp("ms")),
            "amount": pa.array(["1.5", "2", "3", "-1"]),
        }),
        in_tmp / "e.parquet",
    )
    cfg = TableSource(type="parquet", path="e.parquet", columns={"user": "int", "when": "timestamp",
                      "amount": "float"}, required=["user"], non_negative=["amount"])
    raw = read_source(cfg, in_tmp)
    assert raw.events.to_pydict() == {"user": [1], "ts": [0], "amount": [1.5]}
    assert [(line, reason) for line, reason, _ in rejects_of(raw.rejects)] == [
        (2, "unparsable number: user"),
        (3, "missing required id: user"),
        (4, "negative value: amount"),
    ]
    assert rejects_of(raw.rejects)[0][2] == "2.5,1970-01-01 00:00:00.001,2"
    assert raw.rows_read == {"events": 4}


def test_parquet_column_missing_from_file_is_a_config_error(in_tmp: Path) -> None:
    pq.write_table(pa.table({"a": [1]}), in_tmp / "e.parquet")
    cfg = TableSource(type="parquet", path="e.parquet", columns={"a": "int", "b": "int"})
    with pytest.raises(ConfigError, match=r"e\.parquet: .*\['b'\]"):
        read_source(cfg, in_tmp)


def test_empty_text_files_and_header_only_files_are_errors_naming_the_file(in_tmp: Path) -> None:
    (in_tmp / "empty.csv").write_text("")
    (in_tmp / "head.csv").write_text("a,b\n")
    for name, what in (("empty.csv", "it is empty"), ("head.csv", "a header only")):
        cfg = TableSource(type="csv", path=name, columns={"a": "int", "b": "int"})
        with pytest.raises(ConfigError, match=rf"{name} \(source\.path\): the file has no data rows .*{what}"):
            read_source(cfg, in_tmp)


@pytest.mark.parametrize("content", [b"", b"PAR1\x00\x01garbage", "truncated"])
def test_empty_truncated_or_foreign_parquet_is_a_config_error_naming_the_file(in_tmp: Path, content: object) -> None:
    if content == "truncated":
        pq.write_table(pa.table({"a": list(range(1000))}), in_tmp / "full.parquet")
        content = (in_tmp / "full.parquet").read_bytes()[:-200]
    (in_tmp / "e.parquet").write_bytes(content)  # type: ignore[arg-type]
    cfg = TableSource(type="parquet", path="e.parquet", columns={"a": "int"})
    with pytest.raises(ConfigError, match=r"e\.parquet: not a readable Parquet file .* empty, truncated"):
        read_source(cfg, in_tmp)


def test_parquet_without_rows_is_a_config_error(in_tmp: Path) -> None:
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), in_tmp / "e.parquet")
    cfg = TableSource(type="parquet", path="e.parquet", columns={"a": "int"})
    with pytest.raises(ConfigError, match=r"e\.parquet \(source\.path\): the file has no data rows \(it is empty\)"):
        read_source(cfg, in_tmp)


def test_table_files_are_read_alike_with_rejects_naming_each_file(in_tmp: Path) -> None:
    from feature_store.readers.table import read_table_files

    (in_tmp / "train.csv").write_text("1,a\n2,b\nx,c\n3,d\n")
    (in_tmp / "dev.csv").write_text("4,e\n5\n")
    (in_tmp / "test.csv").write_text("6,f\n7,g\n")
    cfg = TableSource(type="csv", path="train.csv", header=False, columns={"user": "int", "item": "string"})
    raw = read_table_files(cfg, {"train": "train.csv", "valid": "dev.csv", "test": "test.csv"}, in_tmp)
    assert raw.events.column("user").to_pylist() == [1, 2, 3, 4, 6, 7]
    assert raw.parts == {"train": 3, "valid": 1, "test": 2}
    assert raw.rows_read == {"events": 8}
    assert [(r["source"], r["line"], r["reason"]) for r in raw.rejects.to_table().to_pylist()] == [
        ("dev.csv", 2, "wrong field count"), ("train.csv", 3, "unparsable number: user")]
    (in_tmp / "dev.csv").write_text("")
    with pytest.raises(ConfigError, match=r"dev\.csv \(split\.files\.valid\): the file has no data rows"):
        read_table_files(cfg, {"train": "train.csv", "valid": "dev.csv", "test": "test.csv"}, in_tmp)


def test_missing_path_is_a_config_error_naming_source_path(in_tmp: Path) -> None:
    for cfg in (TableSource(type="csv", path="nope.csv", columns={"a": "int"}),
                MovieLensSource(type="movielens", path="nope"),
                CriteoSource(type="criteo", path="nope.tsv"),
                TransactionsSource(type="transactions", path="nope.parquet")):
        with pytest.raises(ConfigError, match=r"source\.path: .*'nope"):
            read_source(cfg, in_tmp)


# ------------------------------------------------------------------------------------------ MovieLens

GENRES = "unknown|0\nAction|1\nComedy|2\n\n"


def write_ml100k(root: Path) -> None:
    root.mkdir()
    (root / "u.data").write_text(
        "1\t10\t5\t881250949\n2\t11\t3\t891717742\n3\tx\t4\t1\n1\t99\t4.5\t5\n2\t10\n"
    )
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|\n3|-4|M|writer|T8H1N\n")
    (root / "u.genre").write_text(GENRES)
    (root / "u.item").write_bytes(
        "10|Amélie (2001)|01-Jan-2001||http://x|0|0|1\n11|unknown||||1|0|0\n12|Bad (1999)|||u|0|7|0\n".encode(
            "latin-1")
    )


def test_movielens_100k_tables_types_and_rejects_per_file(in_tmp: Path) -> None:
    write_ml100k(in_tmp / "ml")
    raw = read_source(MovieLensSource(type="movielens", path="ml", rating_threshold=4.0), in_tmp)
    ev, users, items = raw.tables["events"], raw.tables["users"], raw.tables["items"]
    assert ev.schema == pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float32()),
                                   ("ts", pa.int64()), ("label", pa.float32())])
    assert ev.column("item_id").to_pylist() == [10, 11, 99]  # item 99 is unknown to u.item: still kept
    assert ev.column("label").to_pylist() == [1.0, 0.0, 1.0]
    assert users.to_pydict() == {"user_id": [1, 2], "age": [24, 53], "gender": ["M", "F"],
                                 "occupation": ["technician", "other"], "zip": ["85711", None],
                                 "zip_prefix": ["857", None]}
    assert items.to_pydict() == {"item_id": [10, 11], "title": ["Amélie (2001)", "unknown"],
                                 "year": [2001, None], "genres": [["Comedy"], ["unknown"]]}
    got = [(r["source"], r["line"], r["reason"]) for r in raw.rejects.to_table().to_pylist()]
    assert got == [
        (os.path.join("ml", "u.data"), 3, "unparsable number: item_id"),
        (os.path.join("ml", "u.data"), 5, "wrong field count"),
        (os.path.join("ml", "u.item"), 3, "unparsable number: genre:Action"),
        (os.path.join("ml", "u.user"), 3, "negative value: age"),
    ]
    assert raw.rows_read == {"events": 5, "users": 3, "items": 6}


def test_movielens_1m_layout_reads_double_colon_files(in_tmp: Path) -> None:
    root = in_tmp / "ml1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (root / "users.dat").write_text("1::F::1::10::48067\n")
    movies = "1193::One Flew: Over (1975)::Drama\n661::Café (1996)::Animation|Musical\n"
    (root / "movies.dat").write_bytes(movies.encode("latin-1"))
    raw = read_source(MovieLensSource(type="movielens", path="ml1m"), in_tmp)
    assert raw.events.column("label").to_pylist() == [1.0, 0.0]
    assert raw.tables["users"].to_pylist() == [{"user_id": 1, "age": 1, "gender": "F", "occupation": "10",
                                                "zip": "48067", "zip_prefix": "480"}]
    assert raw.tables["items"].to_pylist() == [
        {"item_id": 1193, "title": "One Flew: Over (1975)", "year": 1975, "genres": ["Drama"]},
        {"item_id": 661, "title": "Café (1996)", "year": 1996, "genres": ["Animation", "Musical"]},
    ]
    assert len(raw.rejects) == 0


def test_movielens_directory_without_known_layout_names_the_expected_files(in_tmp: Path) -> None:
    (in_tmp / "empty").mkdir()
    expected = r"source\.path 'empty': not a MovieLens directory.*u\.data.*ratings\.dat"
    with pytest.raises(ConfigError, match=expected):
        read_source(MovieLensSource(type="movielens", path="empty"), in_tmp)
    (in_tmp / "partial").mkdir()
    (in_tmp / "partial" / "u.data").write_text("1\t1\t1\t1\n")
    with pytest.raises(ConfigError, match=r"\['u\.user', 'u\.item', 'u\.genre'\] missing"):
        read_source(MovieLensSource(type="movielens", path="partial"), in_tmp)


@pytest.mark.slow
def test_movielens_100k_real_data_keeps_every_rating(tmp_path: Path) -> None:
    root = shared_dataset("ml-100k")
    raw = read_source(MovieLensSource(type="movielens", path=str(root)), tmp_path)
    assert raw.events.num_rows == 100_000 and raw.tables["users"].num_rows == 943
    assert raw.tables["items"].num_rows == 1_682 and len(raw.rejects) == 0
    assert raw.events.column("ts").null_count == 0
    assert raw.tables["items"].column("genres").to_pylist()[0] == ["Animation", "Children's", "Comedy"]


# ------------------------------------------------------------------------------------------ Criteo


def criteo_line(label: str, ints: list[str] | None = None, cats: list[str] | None = None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *ints, *cats])


def test_criteo_types_nulls_and_line_number_time(in_tmp: Path) -> None:
    lines = [criteo_line("1"), criteo_line("0", [""] * 13, [""] * 26), criteo_line("0", ["-1"] + [""] * 12)]
    (in_tmp / "c.tsv").write_text("\n".join(lines) + "\n")
    ev = read_source(CriteoSource(type="criteo", path="c.tsv"), in_tmp).events
    ints, cats = [f"I{i}" for i in range(1, 14)], [f"C{i}" for i in range(1, 27)]
    assert ev.column_names == ["label", *ints, *cats, "ts"]
    assert ev.column("label").type == pa.float32() and ev.column("I1").type == pa.float32()
    assert ev.column("ts").to_pylist() == [1, 2, 3]
    assert ev.column("I1").to_pylist() == [0.0, None, -1.0]
    assert ev.column("C26").to_pylist() == ["00000019", None, "00000019"]


def test_criteo_bad_label_unparsable_integer_and_short_line_are_rejected(in_tmp: Path) -> None:
    lines = [criteo_line("1"), criteo_line("2"), criteo_line("0", ["1.5"] + ["1"] * 12), "1\t2\t3",
             criteo_line(""), criteo_line("0")]
    (in_tmp / "c.tsv").write_text("\n".join(lines) + "\n")
    raw = read_source(CriteoSource(type="criteo", path="c.tsv"), in_tmp)
    assert raw.events.column("ts").to_pylist() == [1, 6]
    assert [(line, reason) for line, reason, _ in rejects_of(raw.rejects)] == [
        (2, "unparsable number: label"),
        (3, "unparsable number: I1"),
        (4, "wrong field count"),
        (5, "missing required id: label"),
    ]
    assert rejects_of(raw.rejects)[0][2] == lines[1]
    assert raw.rows_read == {"events": 6}


def test_criteo_max_rows_stops_after_that_many_data_rows(in_tmp: Path) -> None:
    (in_tmp / "c.tsv").write_text("\n".join([criteo_line("1"), "bad", *[criteo_line("0")] * 10]) + "\n")
    raw = read_source(CriteoSource(type="criteo", path="c.tsv", max_rows=3), in_tmp)
    assert raw.events.column("ts").to_pylist() == [1, 3]
    assert raw.rows_read == {"events": 3} and len(raw.rejects) == 1


# ------------------------------------------------------------------------------------------ transactions

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_transactions_csv_normalises_customers_and_rejects_bad_lines(in_tmp: Path) -> None:
    (in_tmp / "t.csv").write_text(
        RETAIL_HEADER
        + "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
        + "536365,85123A,HEART,2,2010-12-01 08:26:00,2.45,17850.0,United Kingdom\n"
        + "536366,85123A,HEART HOLDER,1,2010-12-01 08:28:00,3.00,13047,France\n"
        + "536367,71053,,1,2010-12-01 08:30:00,3.39,0.0,UK\n"
        + "C536368,71053,LANTERN,-1,2010-12-01 08:31:00,3.39,13047,UK\n"
        + "536369,71053,LANTERN,1,2010-12-01 08:32:00,-3.39,13047,UK\n"
        + "536370,71053,LANTERN,1,2010-12-01 08:32:00,1,,UK\n"
        + "536371,71053,LANTERN,1,yesterday,1,13047,UK\n"
        + "536372,22,LANTERN,2,2010-12-01 08:33:00,4,13047,\n"
    )
    raw = read_source(TransactionsSource(type="transactions", path="t.csv"), in_tmp)
    ev = raw.events
    assert ev.column_names == ["invoice", "item_id", "quantity", "price", "user_id", "ts", "revenue", "label",
                               "description", "country"]
    assert ev.column("user_id").to_pylist() == ["17850", "17850", "13047", "13047"]
    assert ev.column("ts").to_pylist()[0] == 1291191960
    assert ev.column("revenue").to_pylist() == pytest.approx([15.3, 4.9, 3.0, 8.0], rel=1e-6)
    assert ev.column("label").to_pylist() == [1.0] * 4 and ev.column("country").to_pylist()[-1] is None
    assert [(line, reason) for line, reason, _ in rejects_of(raw.rejects)] == [
        (5, "missing required id: user_id"),
        (6, "unmatched cancellation"),
        (7, "negative value: price"),
        (8, "missing required id: user_id"),
        (9, "unparsable timestamp: ts"),
    ]
    assert rejects_of(raw.rejects)[0][2] == "536367,71053,,1,2010-12-01 08:30:00,3.39,0.0,UK"
    assert raw.rows_read == {"events": 9}
    assert raw.tables["purchases"].equals(ev)  # no returns: the purchase lines are the events
    assert raw.tables["items"].to_pylist() == [
        {"item_id": "22", "description": "LANTERN", "price": 4.0},
        {"item_id": "85123A", "description": "HEART", "price": pytest.approx(2.55)},
    ]


def test_transactions_missing_configured_column_is_a_config_error(in_tmp: Path) -> None:
    (in_tmp / "t.csv").write_text("a,b\n1,2\n")
    expected = r"t\.csv: the file has no column for source\.invoice_column='InvoiceNo'"
    with pytest.raises(ConfigError, match=expected):
        read_source(TransactionsSource(type="transactions", path="t.csv"), in_tmp)


@pytest.mark.slow
def test_online_retail_parquet_rejects_missing_customers_and_reads_fast(tmp_path: Path) -> None:
    path = shared_dataset("online-retail") / "online_retail.parquet"
    start = time.perf_counter()
    raw = read_source(TransactionsSource(type="transactions", path=str(path)), tmp_path)
    elapsed = time.perf_counter() - start
    assert raw.rows_read == {"events": 531_282}
    assert raw.events.num_rows + len(raw.rejects) == 531_282
    assert raw.rejects.counts_by_reason()["missing required id: user_id"] == 133_358
    assert raw.events.column("user_id").null_count == 0 and raw.events.column("ts").null_count == 0
    assert raw.tables["items"].column("item_id").null_count == 0
    assert elapsed < 10, f"reading 531k rows took {elapsed:.1f} s"


# ------------------------------------------------------------------------------------------ dispatch


def test_registry_covers_every_source_type_and_synthetic_is_dispatched(tmp_path: Path) -> None:
    assert set(REGISTRY) == {"synthetic", "csv", "tsv", "parquet", "movielens", "criteo", "transactions"}
    cfg = SyntheticSource(n_users=50, n_items=20, n_impressions=500, n_brands=5, n_regions=3, days=3)
    raw = read_source(cfg, tmp_path)
    assert raw.events.num_rows == 500


def test_whitespace_delimiter_reads_aligned_columns_and_rejects_short_lines_with_their_text(in_tmp: Path) -> None:
    text = (" customer_id  date number_of_cds  dollar_value\r\n"
            " 00001 19970101  1   11.77\r\n"
            " 00002\t19970112  2   12.00 \r\n"
            " 00003 19970102\r\n"
            "\r\n"
            " 00004 19970102  5   77.00\r\n")
    (in_tmp / "cd.txt").write_text(text)
    rejects = Rejects()
    cols = {"customer_id": "string", "date": "timestamp", "number_of_cds": "int", "dollar_value": "float"}
    table, n = read_delimited(in_tmp / "cd.txt", cols, delimiter="whitespace", header=True,
                              timestamp_format="%Y%m%d", rejects=rejects, source_name="cd.txt")
    assert table.column("customer_id").to_pylist() == ["00001", "00002", "00004"] and n == 4  # blank line: none
    assert table.column("number_of_cds").to_pylist() == [1, 2, 5]
    assert table.column("dollar_value").to_pylist() == [11.77, 12.0, 77.0]
    assert rejects_of(rejects) == [(4, "wrong field count", "00003 19970102")]  # fields joined by one space


def test_whitespace_transcoder_never_splits_a_field_at_a_chunk_boundary(in_tmp: Path) -> None:
    lines = [f"  {i}   {i * 7}\t {'x' * (i % 5)}y" for i in range(200)]
    (in_tmp / "w.txt").write_text("\n".join(lines) + "\n")
    with _TranscodedFile(in_tmp / "w.txt", "utf-8", "whitespace", chunk=7) as f:
        got = f.read().decode().splitlines()
    assert got == ["\x1f".join(line.split()) for line in lines]
