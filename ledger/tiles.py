"""The Merkle tree stored as tiles, so that a proof reads O(log N) rows, never every leaf.

Why tiles: a proof against a checkpoint of N entries needs about log2 N subtree roots.
Recomputing them from the leaf hashes reads all N rows and holds them in memory (what
ledger/proofs.py did before, and why a 1M-entry export could not be made). Certificate
Transparency logs and Tessera keep the tree's nodes as *tiles* (C2SP tlog-tiles) and
read a handful of them per proof; this module does the same inside the database.

Layout (C2SP tlog-tiles, height 8). A tile at level L and index t holds up to 256
consecutive node hashes at tree height 8L: level 0 tiles hold leaf hashes
(t = 0 holds leaves 0..255), a level-1 tile holds the roots of 256 level-0 tiles, and
so on; one row of ``ledger_tiles`` per tile, keyed (level, tile_index, width), the
hashes concatenated. A *full* tile has width 256 and never changes. At the right edge
of a tree of size N each level has at most one *partial* tile (width N >> 8L mod 256).
A partial tile is a prefix of the full tile it will become (the tree only grows), so a
proof at an older size reads any stored tile of that index at least as wide and takes
the prefix: partial tiles of old sizes need not be kept, but rows are insert-only (the
app role has SELECT and INSERT only, like every ledger table), so they stay; each
checkpoint adds at most one partial row per level (about 4 KB each on average).

Cost. A proof at size N reads one tile per level it touches plus the edge tiles:
about 2·log256 N rows (6 at 1M entries), and hashes at most ~255 per tile read (each
tile's inner nodes are computed once per reader and cached). 1M entries keep about
32.1 MB of tiles (the leaf hashes again, plus 1/255 for the levels above).

Writing (:class:`TileBuilder`). Tiles are written when a checkpoint is made:
ledger.checkpoint.make_checkpoint feeds the leaf hashes it re-checks to a builder
resumed from the previous checkpoint's edge tiles (which it first checks fold to that
checkpoint's signed root), so old leaves are never re-read. A ledger made before tiles
existed, or a store that is behind, is extended by :func:`ensure` from where its tiles
end, streaming the ``leaf_hash`` column in bounded memory (one pass, once). Every write
is ``INSERT ... ON CONFLICT DO NOTHING``: two builders at once write identical rows.
The subject index (ledger/subject_refs.py) is written in the same transactions, so it
covers exactly the entries the tiles do.

Reading (:class:`TileTree`). Tiles are derived data and are trusted only once checked
against the checkpoint's SIGNED root, in this order:

1. the edge tiles at size N (one per level) must fold to the signed root;
2. every full tile read must hash to its parent node, itself in a checked tile, so
   each hash used is tied to the signed root by a chain of hashes;
3. a tile that is missing or fails 1 or 2 is rebuilt in memory from the ``leaf_hash``
   rows it covers (streamed) and checked the same way; if that fails too, the stored
   entries do not make the signed tree and :class:`TilesMismatch` says so.

Callers (ledger.proofs) still check every proof with RFC 9162's verifier before
handing it out, so a damaged tile can cost time, never yield a false proof.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import BigInteger, Connection, Engine, Executable, LargeBinary, SmallInteger, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapped, mapped_column

from ledger import merkle, subject_refs
from ledger.tables import LedgerBase, LedgerEntry

__all__ = [
    "HEIGHT",
    "WIDTH",
    "LedgerTile",
    "TileBuilder",
    "TileTree",
    "TilesMismatch",
    "ensure",
    "stored_end",
    "write_tiles",
]

HEIGHT = 8
WIDTH = 1 << HEIGHT  # 256 hashes per full tile
_H = merkle.HASH_SIZE
_FLUSH_TILES = 64  # full tiles buffered before they are sent (64 x 8 KB)
_READ_BATCH = 5_000  # leaf_hash rows per fetch when streaming
_CACHE_TILES = 64  # checked tiles a reader keeps (plus the edge tiles)


class LedgerTile(LedgerBase):
    """One tile of the Merkle tree: ``width`` node hashes at height 8·level, from node 256·tile_index."""

    __tablename__ = "ledger_tiles"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    tile_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    width: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)  # 1..256
    hashes: Mapped[bytes] = mapped_column(LargeBinary)  # width x 32 bytes


class TilesMismatch(RuntimeError):
    """The stored entries (not just the tiles) do not reproduce a signed root."""


# --------------------------------------------------------------------------- geometry


def _nodes(size: int, level: int) -> int:
    """How many complete nodes of height 8·level a tree of ``size`` leaves has."""
    return size >> (HEIGHT * level)


def _levels(size: int) -> int:
    """Tile levels of a tree of ``size`` leaves (0 for the empty tree)."""
    levels = 0
    while _nodes(size, levels):
        levels += 1
    return levels


def _edge(size: int, level: int) -> tuple[int, int]:
    """(index, width) of the partial tile at ``level`` at ``size``; width 0 when there is none."""
    n = _nodes(size, level)
    return n >> HEIGHT, n & (WIDTH - 1)


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + _H] for i in range(0, len(data), _H)]


class Tile:
    """A tile's hashes and every complete node above them inside the tile (rows[r]: height 8L + r)."""

    __slots__ = ("index", "level", "rows")

    def __init__(self, level: int, index: int, hashes: Sequence[bytes]) -> None:
        self.level = level
        self.index = index
        rows = [list(hashes)]
        for _ in range(HEIGHT):
            below = rows[-1]
            rows.append([merkle.node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
        self.rows = rows

    @property
    def width(self) -> int:
        return len(self.rows[0])

    def root(self) -> bytes:
        """The node one level up (a full tile only)."""
        return self.rows[HEIGHT][0]


def _frontier(size: int, edges: dict[int, Tile]) -> merkle.Frontier:
    """The perfect subtrees of the tree of ``size`` (largest first), from its edge tiles."""
    pieces: list[bytes] = []
    for h in range(size.bit_length() - 1, -1, -1):
        if size >> h & 1:
            level, r = divmod(h, HEIGHT)
            tile = edges[level]
            j = (size >> h) - 1  # the node of height h on the right edge
            pieces.append(tile.rows[r][j - (tile.index << (HEIGHT - r))])
    return merkle.Frontier(size, pieces)


# --------------------------------------------------------------------------- reading rows


def _read_tile(conn: Connection, level: int, index: int, width: int) -> list[bytes] | None:
    """The first ``width`` hashes of tile (level, index) from any stored row at least that wide."""
    t = LedgerTile.__table__
    row = conn.execute(
        select(t.c.hashes)
        .where(t.c.level == level, t.c.tile_index == index, t.c.width >= width)
        .order_by(t.c.width)
        .limit(1)
    ).first()
    if row is None:
        return None
    data = bytes(row.hashes)
    if len(data) < width * _H:
        return None  # malformed: treated as missing
    return _split(data[: width * _H])


def stored_end(conn: Connection) -> int:
    """The tree size the stored tiles reach (every write ends complete at some size)."""
    t = LedgerTile.__table__
    row = conn.execute(
        select(t.c.tile_index, t.c.width)
        .where(t.c.level == 0)
        .order_by(t.c.tile_index.desc(), t.c.width.desc())
        .limit(1)
    ).first()
    return 0 if row is None else row.tile_index * WIDTH + row.width


def _edge_tiles(conn: Connection, size: int) -> dict[int, Tile] | None:
    """The partial tiles at ``size``, by level (None if one is not stored)."""
    edges: dict[int, Tile] = {}
    for level in range(_levels(size)):
        index, width = _edge(size, level)
        if width:
            hashes = _read_tile(conn, level, index, width)
            if hashes is None:
                return None
            edges[level] = Tile(level, index, hashes)
    return edges


def _leaf_rows(conn: Connection, first: int, end: int, *columns: Any) -> Iterator[Any]:
    """(seq, leaf_hash, *columns) of leaf indices first..end-1 (seqs first+1..end), in order, by keyset.

    TilesMismatch on a gap.
    """
    expected = first + 1
    while expected <= end:
        rows = conn.execute(
            select(LedgerEntry.seq, LedgerEntry.leaf_hash, *columns)
            .where(LedgerEntry.seq >= expected, LedgerEntry.seq <= end)
            .order_by(LedgerEntry.seq)
            .limit(_READ_BATCH)
        ).all()
        if not rows:
            raise TilesMismatch(f"entry {expected:,} is missing")
        for row in rows:
            if row.seq != expected:
                raise TilesMismatch(f"entry {expected:,} is missing")
            yield row
            expected += 1


def _leaf_hashes(conn: Connection, first: int, end: int) -> Iterator[bytes]:
    """Stored leaf hashes of leaf indices first..end-1, in order."""
    for row in _leaf_rows(conn, first, end):
        yield bytes(row.leaf_hash)


def _subjects(text: str) -> list[str]:
    """An entry's ``subjects`` column (a JSON list); [] if it does not decode (verify names such an entry)."""
    if text == "[]":
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []


# --------------------------------------------------------------------------- writing


class TileBuilder:
    """The tiles of a growing tree: feed leaf hashes in order, collect full tiles as they close.

    ``levels[L]`` holds the hashes of the open (partial) tile at level L; appending a
    leaf is amortised O(1) hashes, and memory is at most 256 hashes per level plus the
    full tiles not yet written.
    """

    def __init__(self, size: int = 0, levels: Sequence[Sequence[bytes]] = ()) -> None:
        self.size = size
        self.levels: list[list[bytes]] = [list(row) for row in levels]
        self.closed: list[tuple[int, int, bytes]] = []  # (level, index, hashes) of full tiles
        self.refs: list[tuple[str, int]] = []  # (subject, seq) for ledger.subject_refs, not yet sent

    @classmethod
    def resume(cls, conn: Connection, size: int, root: bytes) -> TileBuilder | None:
        """A builder at ``size`` from the stored edge tiles, if they fold to ``root`` (the signed one)."""
        edges = _edge_tiles(conn, size)
        if edges is None or _frontier(size, edges).root() != root:
            return None
        return cls(size, [edges[level].rows[0] if level in edges else [] for level in range(_levels(size))])

    def append(self, leaf_hash: bytes) -> None:
        self.size += 1
        h, level = leaf_hash, 0
        while True:
            if level == len(self.levels):
                self.levels.append([])
            row = self.levels[level]
            row.append(h)
            if len(row) < WIDTH:
                return
            index = (_nodes(self.size, level) >> HEIGHT) - 1  # the tile this node closed
            self.closed.append((level, index, b"".join(row)))
            h = merkle.root(row)
            self.levels[level] = []
            level += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for h in leaf_hashes:
            self.append(h)

    def note_subjects(self, seq: int, subjects: Sequence[str]) -> None:
        """The entry's other subjects, for the subject index written with these tiles."""
        if subjects:
            self.refs.extend(subject_refs.refs(seq, subjects))

    def partials(self) -> list[tuple[int, int, int, bytes]]:
        """(level, index, width, hashes) of the open tiles at the current size."""
        return [
            (level, _nodes(self.size, level) >> HEIGHT, len(row), b"".join(row))
            for level, row in enumerate(self.levels)
            if row
        ]

    def flush(self, conn: Connection, *, final: bool = False) -> None:
        """Send the closed tiles (when enough are buffered, or ``final``) and, if final, the open ones."""
        if final or len(self.closed) >= _FLUSH_TILES or len(self.refs) >= _READ_BATCH:
            write_tiles(conn, [(lv, ix, WIDTH, hs) for lv, ix, hs in self.closed])
            self.closed.clear()
            subject_refs.write_refs(conn, self.refs)
            self.refs.clear()
        if final:
            write_tiles(conn, self.partials())

    def root(self) -> bytes:
        edges = {lv: Tile(lv, ix, _split(hs)) for lv, ix, _w, hs in self.partials()}
        return _frontier(self.size, edges).root()


def write_tiles(conn: Connection, tiles: Sequence[tuple[int, int, int, bytes]]) -> None:
    """INSERT (level, tile_index, width, hashes) rows, skipping any already stored (identical by construction)."""
    if not tiles:
        return
    rows = [{"level": lv, "tile_index": ix, "width": w, "hashes": hs} for lv, ix, w, hs in tiles]
    statement: Executable
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(LedgerTile).on_conflict_do_nothing()
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(LedgerTile).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"no tile store for dialect {conn.dialect.name!r}")
    conn.execute(statement, rows)


def ensure(engine: Engine, size: int) -> bool:
    """Extend the stored tiles to ``size`` from where they end, reading only the leaf hashes after it.

    For ledgers written before tiles existed (the first call reads every leaf hash once,
    in bounded memory) or a store left behind. True when tiles now reach ``size``;
    False when they could not be written (a role without INSERT, say): readers then
    rebuild what they need in memory. TilesMismatch if a leaf in between is missing.
    """
    with engine.connect() as conn:
        end = stored_end(conn)
        if end >= size:
            return True
        builder = _resume_unchecked(conn, end)
        try:
            for row in _leaf_rows(conn, builder.size, size, LedgerEntry.subjects):
                builder.append(bytes(row.leaf_hash))
                builder.note_subjects(row.seq, _subjects(row.subjects))
                builder.flush(conn)
            builder.flush(conn, final=True)
            conn.commit()
        except DBAPIError:  # derived data: a failed write leaves readers to rebuild in memory
            conn.rollback()
            return False
    return True


def _resume_unchecked(conn: Connection, end: int) -> TileBuilder:
    """A builder at the store's end (no signed root to check it against there: readers check later)."""
    edges = _edge_tiles(conn, end) if end else {}
    if edges is None:
        return TileBuilder()
    return TileBuilder(end, [edges[lv].rows[0] if lv in edges else [] for lv in range(_levels(end))])


# --------------------------------------------------------------------------- proofs from tiles


class TileTree:
    """The tree of ``size`` leaves whose signed root is ``root``, read from tiles, checked against the root.

    Steps 1-3 of the module docstring: :meth:`open` checks the edge tiles; :meth:`tile`
    checks each full tile against its parent; :meth:`_rebuilt` is the fallback, and
    ``rebuilt`` lists the tiles it had to rebuild (missing or damaged in the store).
    """

    def __init__(self, conn: Connection, size: int, root: bytes) -> None:
        self.conn = conn
        self.size = size
        self.signed_root = root
        self.rebuilt: list[tuple[int, int]] = []  # tiles that were missing or damaged
        self._edges: dict[int, Tile] = {}
        self._cache: OrderedDict[tuple[int, int], Tile] = OrderedDict()
        self._above: dict[int, list[bytes]] = {}  # one full level-0 tile's path above it

    @classmethod
    def open(cls, conn: Connection, size: int, root: bytes) -> TileTree:
        tree = cls(conn, size, root)
        tree._check_edges()
        return tree

    # 1. the edge tiles fold to the signed root
    def _check_edges(self) -> None:
        if self.size == 0:
            if self.signed_root != merkle.EMPTY_ROOT:
                raise TilesMismatch("the empty tree's root is not the signed root")
            return
        stored = _edge_tiles(self.conn, self.size)
        if stored is not None and _frontier(self.size, stored).root() == self.signed_root:
            self._edges = stored
            return
        edges = {}
        for level in range(_levels(self.size)):
            index, width = _edge(self.size, level)
            if width:
                edges[level] = self._rebuilt(level, index, width)
        if _frontier(self.size, edges).root() != self.signed_root:
            raise TilesMismatch(
                f"the stored entries do not reproduce checkpoint {self.size:,}'s signed root; run `accord ledger verify`"
            )
        self._edges = edges

    # 2. a full tile hashes to its parent node
    def tile(self, level: int, index: int) -> Tile:
        edge_index, edge_width = _edge(self.size, level)
        if index == edge_index and edge_width:
            return self._edges[level]
        key = (level, index)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if index >= edge_index:
            raise ValueError(f"tile {level}/{index} is outside the tree of size {self.size:,}")
        parent = self.node(HEIGHT * (level + 1), index)
        hashes = _read_tile(self.conn, level, index, WIDTH)
        tile = Tile(level, index, hashes) if hashes is not None else None
        if tile is None or tile.root() != parent:
            tile = self._rebuilt(level, index, WIDTH)  # 3.
            if tile.root() != parent:
                first = (index << (HEIGHT * (level + 1))) + 1
                last = min(self.size, (index + 1) << (HEIGHT * (level + 1)))
                raise TilesMismatch(
                    f"the stored entries {first:,} to {last:,} do not reproduce checkpoint {self.size:,}'s "
                    "signed tree; run `accord ledger verify`"
                )
        self._cache[key] = tile
        if len(self._cache) > _CACHE_TILES:
            self._cache.popitem(last=False)
        return tile

    # 3. rebuilt from the leaf hashes it covers
    def _rebuilt(self, level: int, index: int, width: int) -> Tile:
        self.rebuilt.append((level, index))
        span = 1 << (HEIGHT * level)  # leaves under one node of this tile
        first = (index << HEIGHT) * span
        leaves = _leaf_hashes(self.conn, first, first + width * span)
        if level == 0:
            return Tile(0, index, list(leaves))
        nodes = []
        for _ in range(width):
            f = merkle.Frontier()
            for _ in range(span):
                f.append(next(leaves))
            nodes.append(f.root())
        return Tile(level, index, nodes)

    def node(self, height: int, j: int) -> bytes:
        """The root of the perfect subtree of height ``height`` at index ``j`` (leaves j·2^h onwards)."""
        level, r = divmod(height, HEIGHT)
        t = j >> (HEIGHT - r)
        return self.tile(level, t).rows[r][j - (t << (HEIGHT - r))]

    def leaf_hash(self, index: int) -> bytes:
        return self.node(0, index)

    def range_root(self, start: int, end: int) -> bytes:
        """MTH of leaves start..end-1, where start is aligned to a power of two at least end - start
        (every subtree RFC 9162's PATH and SUBPROOF name is)."""
        n = end - start
        if n & (n - 1) == 0:
            h = n.bit_length() - 1
            if start & (n - 1):
                raise ValueError(f"leaves {start}..{end - 1} are not an aligned subtree")
            return self.node(h, start >> h)
        k = 1 << ((n - 1).bit_length() - 1)
        return merkle.node_hash(self.range_root(start, start + k), self.range_root(start + k, end))

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 2.1.3.1, leaf side first.

        When the leaf's level-0 tile is full, RFC 9162's recursion reaches that tile's
        aligned 256 leaves exactly, so the path is the 8 siblings inside the tile, then
        the siblings above it, which every leaf of the tile shares (kept for the next
        leaf: an export's neighbours cost 8 look-ups each).
        """
        if not 0 <= index < self.size:
            raise ValueError(f"index {index} is outside a tree of size {self.size}")
        block = index >> HEIGHT
        if block >= self.size >> HEIGHT:  # in the open tile at the right edge
            return self._path_down(index, 1)[::-1]
        above = self._above.get(block)
        if above is None:
            above = self._path_down(index, WIDTH)[::-1]
            self._above = {block: above}
        rows = self.tile(0, block).rows
        i = index & (WIDTH - 1)
        return [rows[r][(i >> r) ^ 1] for r in range(HEIGHT)] + above

    def _path_down(self, index: int, stop: int) -> list[bytes]:
        """The siblings of RFC 9162's PATH from the root down, until a subtree of ``stop`` leaves."""
        siblings: list[bytes] = []
        start, end = 0, self.size
        while end - start > stop:
            k = 1 << ((end - start - 1).bit_length() - 1)
            if index < start + k:
                siblings.append(self.range_root(start + k, end))
                end = start + k
            else:
                siblings.append(self.range_root(start, start + k))
                start += k
        if end - start != stop:
            raise AssertionError(f"leaf {index}'s path did not reach an aligned subtree of {stop}")
        return siblings

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """PROOF(old_size, D[size]) of RFC 9162 2.1.4.1."""
        if not 0 <= old_size <= self.size:
            raise ValueError(f"old size {old_size} is outside 0..{self.size}")
        if old_size in (0, self.size):
            return []
        out: list[bytes] = []
        m, start, end, whole = old_size, 0, self.size, True
        while True:
            n = end - start
            if m == n:
                if not whole:
                    out.append(self.range_root(start, end))
                break
            k = 1 << ((n - 1).bit_length() - 1)
            if m <= k:
                out.append(self.range_root(start + k, end))
                end = start + k
            else:
                out.append(self.range_root(start, start + k))
                m -= k
                start += k
                whole = False
        return out[::-1]
