"""The sort-free ranking kernel of `evaluate`: the rank of each true match among the kept
gallery items, counted rather than sorted.

Every metric needs only the ranks of the few true matches of each query, so `evaluate` counts,
for each true match, the kept items strictly closer and the equal-distance kept items earlier in
the gallery (its position in a stable sort, METHOD §5-§6). This module holds that count (blocked
boolean comparisons summed as uint64 words), the hash table that finds equal distances, the
stable-sort path for queries with hundreds of true matches, and the blocks of queries both run
on, under the memory bounds below. Pure numpy; the protocol and the metrics are in `rank`.
"""
from __future__ import annotations

import numpy as np

# Memory bounds of `evaluate`: the rows of distmat loaded at once, and the (rows, matches,
# gallery) boolean comparison block of the counting path. The comparison block is kept small
# enough to stay in cache: it is written and read back at once, and a block of a few MB runs
# several times slower than one of 1 MB.
_ROW_CHUNK_BYTES = 16 * 2**20
_COMPARE_BLOCK_BYTES = 2**20
# The comparison booleans are summed as uint64 words, 8 byte lanes at a time; at most 255 words
# per partial sum keep every lane below 256.
_WORDS_PER_SUM = 255
# Counting costs ~G comparisons per true match, a stable sort ~G log G work per row with a much
# larger constant (measured crossover: several hundred matches per query), so queries with more
# true matches than this are ranked by sorting their row instead.
_COUNTING_MAX_MATCHES = 256
# Slots per true match in the hash table that finds gallery items whose distance equals a true
# match's: about 1 item in 1,024 collides and is checked exactly.
_TIE_TABLE_SLOTS_PER_MATCH = 1024


# --------------------------------------------------------------------------------------------
# Ranks of the true matches

def _hash(bits: np.ndarray, num_bits: int) -> np.ndarray:
    """Multiplicative hash of float bit patterns into [0, 2**num_bits). The even multiplier
    drops the sign bit, so -0.0 and +0.0 (equal distances) hash alike."""
    width = bits.dtype.itemsize * 8
    h = np.multiply(bits, bits.dtype.type(0x3C6EF362 if width == 32 else 0x3C6EF372FE94F82A),
                    dtype=bits.dtype)
    h >>= bits.dtype.type(width - num_bits)
    return h


def _tie_candidates(d_bits: np.ndarray, match_bits: np.ndarray) -> np.ndarray:
    """Flat indices into d_bits (s, G) of the items whose bit pattern hashes like one of
    `match_bits`: every item equal to a true match, and a few others."""
    num_bits = max(10, int(np.ceil(np.log2(_TIE_TABLE_SLOTS_PER_MATCH * max(len(match_bits), 1)))))
    table = np.zeros(1 << num_bits, dtype=bool)
    table[_hash(match_bits, num_bits)] = True
    return np.flatnonzero(np.take(table, _hash(d_bits, num_bits)))


def _tie_counts(d: np.ndarray, thresholds: np.ndarray, cols: np.ndarray, ok: np.ndarray,
                candidates: np.ndarray) -> np.ndarray:
    """(c, M) number of gallery items k with d[r, k] == thresholds[r, m] and k < cols[r, m],
    checked exactly on the candidate items (flat indices into d) only."""
    c, G = d.shape
    M = thresholds.shape[1]
    ties = np.zeros(c * M, dtype=np.int64)
    batch = max(1, 2**22 // max(M, 1))
    for start in range(0, len(candidates), batch):
        r, k = np.divmod(candidates[start:start + batch], G)
        equal = (thresholds[r] == d[r, k][:, None]) & (cols[r] > k[:, None]) & ok[r]
        hit_row, hit_m = np.nonzero(equal)
        ties += np.bincount(r[hit_row] * M + hit_m, minlength=c * M)
    return ties.reshape(c, M)


def _count_true(block: np.ndarray, words_per_sum: int) -> np.ndarray:
    """(s, m) number of True in each row of a (s, m, width) bool block, width a multiple of
    8 * words_per_sum: sums uint64 words (8 booleans each) in groups of `words_per_sum` <= 255,
    then the byte lanes, several times faster than a byte-wise sum."""
    s, m, width = block.shape
    words = block.view(np.uint64).reshape(s, m, width // (8 * words_per_sum), words_per_sum)
    lanes = words.sum(axis=3, dtype=np.uint64)                               # no lane exceeds 255
    return lanes.view(np.uint8).reshape(s, m, -1).sum(axis=2, dtype=np.int64)


def _ranks_by_counting(d: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(c, M) 1-based ranks of the true matches among the kept gallery items, unsorted, and
    arbitrary in the pads beyond each row's count.

    d: (c, G) distances with discarded items set to NaN (NaN is neither < nor == anything, so
    they never count). cols: (c, M) gallery index of each true match; counts: (c,) true matches
    per row, ascending. The rank of match m is 1 + #{k : d[k] < d[m]} + #{k < m : d[k] == d[m]},
    its position in a stable sort (METHOD §5-§6). Cost: (c, M, G) comparisons, no sorting; they
    run in blocks of `_COMPARE_BLOCK_BYTES` that stay in cache, and the search for equal
    distances (a hash of each item's bits) runs on the same rows while they are in cache.
    """
    c, G = d.shape
    M = cols.shape[1]
    ok = np.arange(M)[None, :] < counts[:, None]
    thresholds = np.take_along_axis(d, cols, axis=1)                         # (c, M)
    uint = np.uint32 if d.dtype.itemsize == 4 else np.uint64
    d_bits, match_bits = d.view(uint), thresholds.view(uint)
    words_per_sum = min(_WORDS_PER_SUM, -(-G // 8))
    width = -(-G // (8 * words_per_sum)) * 8 * words_per_sum
    step = max(1, _COMPARE_BLOCK_BYTES // (max(M, 1) * width))
    buffer = np.empty(step * M * width, dtype=bool)
    ranks = np.ones((c, M), dtype=np.int64)
    candidates = []
    for start in range(0, c, step):
        stop = min(start + step, c)
        m = int(counts[stop - 1])                     # counts ascend
        block = buffer[:(stop - start) * m * width].reshape(stop - start, m, width)
        np.less(d[start:stop, None, :], thresholds[start:stop, :m, None], out=block[:, :, :G])
        block[:, :, G:] = False
        ranks[start:stop, :m] += _count_true(block, words_per_sum)
        candidates.append(start * G + _tie_candidates(d_bits[start:stop],
                                                      match_bits[start:stop][ok[start:stop]]))
    return ranks + _tie_counts(d, thresholds, cols, ok, np.concatenate(candidates))


def _ranks_by_sorting(d: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Same as `_ranks_by_counting` (pads included) through a stable sort of each row: cheaper
    for queries with hundreds of true matches."""
    c, G = d.shape
    order = np.argsort(d, axis=1, kind="stable")          # NaN (discarded) sorts last
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(G)[None, :].repeat(c, axis=0), axis=1)
    return np.take_along_axis(position, cols, axis=1) + 1


# --------------------------------------------------------------------------------------------
# Blocks of queries and their padded (rows, matches) layout

def _query_blocks(num_matches: np.ndarray, G: int, itemsize: int):
    """Yield (query indices, use sorting) blocks covering every query with a true match.

    Queries are taken in order of their number of true matches, so that each block's padded
    (rows, matches) layout stays dense; a block's rows stay under `_ROW_CHUNK_BYTES`, the sorting
    path's index arrays under a quarter of it.
    """
    order = np.flatnonzero(num_matches)
    order = order[np.argsort(num_matches[order], kind="stable")]
    split = np.searchsorted(num_matches[order], _COUNTING_MAX_MATCHES, side="right")
    max_rows = max(1, _ROW_CHUNK_BYTES // max(1, G * itemsize))
    pos = 0
    while pos < split:
        yield order[pos:min(pos + max_rows, split)], False
        pos += max_rows
    rows = max(1, min(max_rows, _ROW_CHUNK_BYTES // (4 * G * 24)))
    for pos in range(split, len(order), rows):
        yield order[pos:pos + rows], True


def _gather_groups(values: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                   groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local group index, value) of every entry of the given groups of a grouped flat array."""
    local = np.repeat(np.arange(len(groups)), counts)
    return local, values[np.repeat(starts[groups], counts) + _within_groups(counts)]


def _padded(row_of: np.ndarray, values: np.ndarray, counts: np.ndarray, fill) -> np.ndarray:
    """(len(counts), max(counts)) array of `values` grouped by `row_of` (ascending), padded."""
    width = int(counts.max()) if len(counts) else 0
    out = np.full((len(counts), width), fill, dtype=values.dtype)
    out[row_of, _within_groups(counts)] = values
    return out


def _within_groups(counts: np.ndarray) -> np.ndarray:
    """(sum(counts),) position of each entry within its group, for consecutive groups of the
    given sizes: 0, 1, ..., counts[0] - 1, 0, 1, ..., counts[1] - 1, ..."""
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
