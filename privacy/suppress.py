"""k-anonymity cell suppression with complementary suppression, over a table with margins.

The table. One row per cell: the group dims as columns, where the level `"(all)"` marks a margin (dims [segment,
region] give the cells (s, r), the row margins (s, "(all)"), the column margins ("(all)", r) and the grand total
("(all)", "(all)")), and a column with the cell's number of distinct people. A *line* is every cell that shares
the values of all dims but one, d: its interior cells (d != "(all)") and its margin cell (d == "(all)"). Every
additive figure (rows, sums) obeys one equation per line: margin = sum of interior cells.

Primary suppression. Every cell, margins included, with fewer than k people is hidden (reason "under k"); a cell
with exactly k people is released.

Complementary suppression. A hidden cell that is the only hidden cell of a line whose equation is complete (the
margin is in the table) is recovered by subtraction. So, for every line with exactly one hidden cell, the released
cell of that line with the fewest people is hidden as well (reason "complementary"; the least information lost
and, as it is the smallest cell, usually the one with the least to protect), and this repeats until no line has a
single hidden cell: each new hidden cell can leave another line with one hidden cell. One pass is a groupby per
dim over the whole table.

Why the lines rule is not enough. "No line with exactly one hidden cell" is necessary but not sufficient: in a 2-dim
table the hidden cells are the edges of a bipartite graph (rows, columns), the values solvable from the released
ones are exactly the bridges of that graph, and two hidden 2x2 rectangles joined by one more hidden cell leave
every line with two or more hidden cells while the joining cell is the difference of the rectangles' row and
column equations. So after the lines rule, an audit solves the system: per connected group of hidden cells (cells
linked by a shared line), the null space of the line equations restricted to the hidden cells; a hidden cell is
recoverable exactly when every null-space vector is 0 on it. For each recoverable cell, the released cell with the
fewest people on one of its lines is hidden too, the lines rule runs again, and the loop ends when the audit finds
nothing (it terminates: every pass hides at least one more cell, and a table with every cell hidden has nothing to
subtract from). Randomised 1-, 2- and 3-dim tables in the tests check the result with an independent solver.

Not protected: the people counts of margins are distinct people, not sums, when a person falls in several cells;
subtraction then gives bounds rather than values, and those are out of scope here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.linalg import null_space
from scipy.sparse.csgraph import connected_components

from privacy.errors import PrivacyError

ALL = "(all)"
UNDER_K = "under k"
COMPLEMENTARY = "complementary"
# A null-space row with a norm below this is zero: the equations are small-integer, their null space well scaled.
NULL_TOL = 1e-9


def suppress(cells: pd.DataFrame, dims: Sequence[str], k: int, people: str = "people") -> pd.DataFrame:
    """A copy of `cells` with `suppressed` (bool) and `reason` ("under k", "complementary" or None) columns.

    `cells` has one row per cell (margins included, a margin level is "(all)"), the `dims` columns and `people`.
    """
    dims = list(dims)
    _validate(cells, dims, k, people)
    out = cells.reset_index(drop=True).copy()
    counts = out[people].to_numpy(dtype=np.float64)
    hidden = counts < k
    reason = np.where(hidden, UNDER_K, None).astype(object)
    if not dims or len(out) == 0 or not any((out[d] == ALL).any() for d in dims):
        # no margin, no equation: nothing can be subtracted
        out["suppressed"] = hidden
        out["reason"] = reason
        return out
    lines = _lines(out, dims)
    # order cells by (people, dims as text) so the "fewest people" pick is deterministic on ties
    codes = [pd.factorize(out[d].astype(str), sort=True)[0] for d in reversed(dims)]
    order = np.lexsort((*codes, counts))
    rank = np.empty(len(out), dtype=np.int64)
    rank[order] = np.arange(len(out))
    while True:
        while True:
            extra = _lines_rule(lines, hidden, rank)
            if not extra.any():
                break
            hidden |= extra
            reason[extra] = COMPLEMENTARY
        recoverable = _recoverable(lines, hidden)
        if not recoverable.any() or hidden.all():
            # with every cell hidden, a "recoverable" one is a margin over no cell at all: 0 by construction
            break
        extra = _cover(lines, hidden, recoverable, rank)
        hidden |= extra
        reason[extra] = COMPLEMENTARY
    out["suppressed"] = hidden
    out["reason"] = reason
    return out


def recoverable(cells: pd.DataFrame, dims: Sequence[str], hidden: np.ndarray) -> np.ndarray:
    """Which hidden cells the released ones determine exactly through the line equations (bool per row)."""
    frame = cells.reset_index(drop=True)
    return _recoverable(_lines(frame, list(dims)), np.asarray(hidden, dtype=bool))


# ---------------------------------------------------------------------------------------------------- internals


class _Lines:
    """The table's line equations as a sparse (lines x cells) matrix: +1 for interior cells, -1 for the margin;
    only lines whose margin is in the table are equations."""

    def __init__(self, matrix: sparse.csr_array):
        self.matrix = matrix  # lines x cells
        self.by_cell = matrix.T.tocsr()  # cells x lines
        self.members = abs(matrix).astype(bool).astype(np.int64).tocsr()


def _lines(cells: pd.DataFrame, dims: list[str]) -> _Lines:
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    offset = 0
    index = np.arange(len(cells))
    for d in dims:
        others = [o for o in dims if o != d]
        if others:
            line = cells.groupby(others, sort=False, dropna=False).ngroup().to_numpy()
        else:
            line = np.zeros(len(cells), dtype=np.int64)
        is_margin = (cells[d] == ALL).to_numpy()
        has_margin = np.bincount(line, weights=is_margin, minlength=line.max() + 1)[line] > 0
        rows.append(line[has_margin] + offset)
        cols.append(index[has_margin])
        vals.append(np.where(is_margin[has_margin], -1, 1))
        offset += int(line.max()) + 1
    matrix = sparse.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(offset, len(cells)))
    return _Lines(matrix)


def _lines_rule(lines: _Lines, hidden: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For every line with exactly one hidden cell, the released cell of the line with the lowest rank (fewest
    people)."""
    members = lines.members
    hidden_per_line = members @ hidden.astype(np.int64)
    single = np.flatnonzero(hidden_per_line == 1)
    extra = np.zeros(len(hidden), dtype=bool)
    if len(single) == 0:
        return extra
    sub = members[single].tocoo()
    line, cell = sub.row, sub.col
    released = ~hidden[cell]
    line, cell = line[released], cell[released]
    if len(cell) == 0:
        return extra
    # lowest rank per line: sort by (line, rank), keep the first of each line
    order = np.lexsort((rank[cell], line))
    line, cell = line[order], cell[order]
    first = np.ones(len(line), dtype=bool)
    first[1:] = line[1:] != line[:-1]
    extra[cell[first]] = True
    return extra


def _recoverable(lines: _Lines, hidden: np.ndarray) -> np.ndarray:
    """Hidden cells uniquely determined by the equations: per connected group of hidden cells, those on which
    every vector of the null space of the hidden-cell equations is zero."""
    result = np.zeros(len(hidden), dtype=bool)
    hidden_idx = np.flatnonzero(hidden)
    if len(hidden_idx) == 0:
        return result
    sub = lines.matrix[:, hidden_idx].tocsr()  # equations x hidden cells (released cells are known constants)
    used = np.flatnonzero(np.diff(sub.indptr) > 0)
    sub = sub[used]
    n_eq = sub.shape[0]
    if n_eq == 0:
        return result
    graph = sparse.bmat([[None, abs(sub)], [abs(sub).T, None]], format="csr")
    _, label = connected_components(graph, directed=False)
    eq_label, cell_label = label[:n_eq], label[n_eq:]
    for comp in np.unique(cell_label):
        cols = np.flatnonzero(cell_label == comp)
        eqs = np.flatnonzero(eq_label == comp)
        if len(eqs) == 0:
            continue
        block = sub[eqs][:, cols].toarray().astype(np.float64)
        basis = null_space(block)
        norms = np.linalg.norm(basis, axis=1) if basis.size else np.zeros(len(cols))
        result[hidden_idx[cols[norms < NULL_TOL]]] = True
    return result


def _cover(lines: _Lines, hidden: np.ndarray, recoverable: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For the recoverable cell with the fewest people, the released cell with the fewest people on one of its
    lines (one cell per pass: hiding it can protect other recoverable cells too)."""
    extra = np.zeros(len(hidden), dtype=bool)
    target = int(np.flatnonzero(recoverable)[np.argmin(rank[recoverable])])
    line_ids = lines.by_cell[[target]].indices
    candidates = np.unique(lines.members[line_ids].indices)
    candidates = candidates[~hidden[candidates]]
    if len(candidates) == 0:  # every cell on its lines is hidden already: hide the lowest-ranked released cell
        candidates = np.flatnonzero(~hidden)
    extra[candidates[np.argmin(rank[candidates])]] = True
    return extra


def _validate(cells: pd.DataFrame, dims: list[str], k: int, people: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise PrivacyError(f"k must be an integer >= 1 (the smallest number of people a released cell may "
                           f"describe); got {k!r}")
    missing = [c for c in [*dims, people] if c not in cells.columns]
    if missing:
        raise PrivacyError(f"the table to suppress has no column(s) {missing}; it needs the dims {dims} and the "
                           f"people count '{people}'")
    if cells[people].isna().any():
        raise PrivacyError(f"column '{people}' has missing counts; every cell needs its number of people")
    if dims and cells.duplicated(subset=dims).any():
        dup = cells.loc[cells.duplicated(subset=dims), dims].iloc[0].tolist()
        raise PrivacyError(f"the table has more than one row for the cell {dup}: aggregate it to one row per cell "
                           f"(dims {dims}) before suppression")
