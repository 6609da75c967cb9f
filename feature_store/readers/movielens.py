"""The MovieLens reader: a 100K (u.data, u.user, u.item, u.genre) or 1M (ratings.dat, users.dat,
movies.dat, '::' separated) directory -> tables 'events', 'users' and 'items'.

events: user_id int64, item_id int64, rating float32, ts int64, label float32 (rating >= rating_threshold);
users: user_id int64, age int64, gender, occupation, zip, zip_prefix (first 3 characters) strings;
items: item_id int64, title string, year int64 (release date, else '(YYYY)' in the title),
genres list<string>.
Ratings of users or items the metadata lacks are kept (the join handles them). Bad lines of every file are
rejected with that file's path and line. rows_read['items'] counts u.item and u.genre (or movies.dat) lines.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import ColumnType, ConfigError, MovieLensSource, require_path
from feature_store.readers.base import RawData
from feature_store.readers.text import UNPARSABLE_NUMBER, read_delimited, reject_where
from feature_store.rejects import Rejects

LAYOUTS: dict[str, tuple[str, ...]] = {
    "100k": ("u.data", "u.user", "u.item", "u.genre"),
    "1m": ("ratings.dat", "users.dat", "movies.dat"),
}
_LINE = "__line__"
_YEAR_AT_END = r"(?P<year>[0-9]{4})\s*$"
_YEAR_IN_TITLE = r"\((?P<year>[0-9]{4})\)\s*$"


def detect_layout(directory: Path, shown: str) -> str:
    """'100k' or '1m' from the files present; a ConfigError naming the directory and files otherwise."""
    for name, files in LAYOUTS.items():
        if (directory / files[0]).is_file():
            missing = [f for f in files if not (directory / f).is_file()]
            if missing:
                raise ConfigError(
                    f"source.path '{shown}': MovieLens {name.upper()} layout ({files[0]} found) but "
                    f"{missing} missing; it needs {list(files)}"
                )
            return name
    raise ConfigError(
        f"source.path '{shown}': not a MovieLens directory; expected {list(LAYOUTS['100k'])} (ml-100k) "
        f"or {list(LAYOUTS['1m'])} (ml-1m)"
    )


def _year(title: pa.ChunkedArray, release: pa.ChunkedArray | None = None) -> pa.Array:
    """Four-digit year ending `release` (e.g. '01-Jan-1995'), else '(1995)' ending the title; else null."""
    years = pc.struct_field(pc.extract_regex(title, _YEAR_IN_TITLE), "year")
    if release is not None:
        years = pc.coalesce(pc.struct_field(pc.extract_regex(release, _YEAR_AT_END), "year"), years)
    return years.cast(pa.int64())


def _events(table: pa.Table, threshold: float) -> pa.Table:
    rating = table.column("rating").cast(pa.float32())
    return pa.table(
        {
            "user_id": table.column("user_id"),
            "item_id": table.column("item_id"),
            "rating": rating,
            "ts": table.column("ts"),
            "label": pc.greater_equal(rating, pa.scalar(threshold, pa.float32())).cast(pa.float32()),
        }
    )


def _users(table: pa.Table) -> pa.Table:
    zips = table.column("zip")
    return pa.table(
        {
            "user_id": table.column("user_id"),
            "age": table.column("age"),
            "gender": table.column("gender"),
            "occupation": table.column("occupation").cast(pa.string()),
            "zip": zips,
            "zip_prefix": pc.utf8_slice_codeunits(zips, 0, 3),
        }
    )


def _ratings(path: str, rejects: Rejects, delimiter: str) -> tuple[pa.Table, int]:
    return read_delimited(
        path,
        {"user_id": "int", "item_id": "int", "rating": "float", "ts": "timestamp"},
        delimiter=delimiter,
        header=False,
        required=["user_id", "item_id", "rating", "ts"],
        non_negative=["rating"],
        rejects=rejects,
        source_name=path,
        quote_char=False,
    )


def _genre_lists(flags: np.ndarray, names: list[str]) -> pa.Array:
    """(rows x genres) 0/1 matrix -> list<string> of the names whose flag is 1, in genre order."""
    on = flags == 1
    offsets = np.concatenate([[0], np.cumsum(on.sum(axis=1))]).astype(np.int32)
    values = pa.array(np.asarray(names, dtype=object)[np.nonzero(on)[1]], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _read_100k(cfg: MovieLensSource, rejects: Rejects) -> tuple[dict[str, pa.Table], dict[str, int], dict]:
    data, user, item, genre = (os.path.join(cfg.path, f) for f in LAYOUTS["100k"])
    ratings, n_ratings = _ratings(data, rejects, "\t")
    users, n_users = read_delimited(
        user,
        {"user_id": "int", "age": "int", "gender": "string", "occupation": "string", "zip": "string"},
        delimiter="|", header=False, required=["user_id"], non_negative=["age"], rejects=rejects,
        source_name=user, quote_char=False,
    )
    genres, n_genres = read_delimited(
        genre, {"name": "string", "index": "int"}, delimiter="|", header=False,
        required=["name", "index"], rejects=rejects, source_name=genre, quote_char=False,
    )
    genres = genres.sort_by("index")
    names = genres.column("name").to_pylist()
    flag_cols = [f"genre:{n}" for n in names]
    item_cols: dict[str, ColumnType] = {
        "item_id": "int", "title": "string", "release_date": "string", "video_release_date": "string",
        "url": "string",
    }
    item_cols |= {c: "int" for c in flag_cols}
    items, n_items = read_delimited(
        item, item_cols, delimiter="|", header=False, required=["item_id"], rejects=rejects,
        source_name=item, encoding="latin-1", quote_char=False, line_column=_LINE,
    )
    for col in flag_cols:
        values = items.column(col)
        bad = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=pa.array([0, 1]))))
        items = reject_where(items, bad, f"{UNPARSABLE_NUMBER}: {col}", rejects=rejects, source_name=item,
                             line_column=_LINE, delimiter="|")
    flags = np.stack([pc.fill_null(items.column(c), 0).to_numpy() for c in flag_cols], axis=1) if flag_cols \
        else np.zeros((items.num_rows, 0), dtype=np.int64)
    items_out = pa.table(
        {
            "item_id": items.column("item_id"),
            "title": items.column("title"),
            "year": _year(items.column("title"), items.column("release_date")),
            "genres": _genre_lists(flags, names),
        }
    )
    tables = {"events": _events(ratings, cfg.rating_threshold), "users": _users(users), "items": items_out}
    counts = {"events": n_ratings, "users": n_users, "items": n_items + n_genres}
    return tables, counts, {"events": data, "users": user, "items": item}


def _read_1m(cfg: MovieLensSource, rejects: Rejects) -> tuple[dict[str, pa.Table], dict[str, int], dict]:
    data, user, movie = (os.path.join(cfg.path, f) for f in LAYOUTS["1m"])
    ratings, n_ratings = _ratings(data, rejects, "::")
    users, n_users = read_delimited(
        user,
        {"user_id": "int", "gender": "string", "age": "int", "occupation": "string", "zip": "string"},
        delimiter="::", header=False, required=["user_id"], non_negative=["age"], rejects=rejects,
        source_name=user, quote_char=False,
    )
    movies, n_movies = read_delimited(
        movie, {"item_id": "int", "title": "string", "genres": "string"}, delimiter="::", header=False,
        required=["item_id"], rejects=rejects, source_name=movie, encoding="latin-1", quote_char=False,
    )
    split = pc.split_pattern(movies.column("genres"), "|")
    empty = pa.scalar([], pa.list_(pa.string()))
    items_out = pa.table(
        {
            "item_id": movies.column("item_id"),
            "title": movies.column("title"),
            "year": _year(movies.column("title")),
            "genres": pc.if_else(pc.is_null(split), empty, split).cast(pa.list_(pa.string())),
        }
    )
    tables = {"events": _events(ratings, cfg.rating_threshold), "users": _users(users), "items": items_out}
    counts = {"events": n_ratings, "users": n_users, "items": n_movies}
    return tables, counts, {"events": data, "users": user, "items": movie}


def read_movielens(cfg: MovieLensSource, work_dir: Path | None = None) -> RawData:
    """Read a MovieLens 100K or 1M directory. `work_dir` is unused (nothing is cached)."""
    directory = require_path(cfg.path, "source.path", kind="dir")
    layout = detect_layout(directory, cfg.path)
    rejects = Rejects()
    reader = _read_100k if layout == "100k" else _read_1m
    tables, counts, paths = reader(cfg, rejects)
    return RawData(tables=tables, rows_read=counts, rejects=rejects, paths=paths)
