"""BERT's WordPiece tokenizer on the Rust `tokenizers` library, with the original algorithm's semantics.

Normalisation and splitting follow Google's `tokenization.py` as `transformers`' legacy `BertTokenizer` runs it:
drop control characters, put spaces around every CJK character, NFC, optional lower-casing (with Python's
final-sigma rule) and accent stripping (NFD, drop non-spacing marks), split on white space and punctuation, then
greedy longest-match-first WordPiece with `##` continuations and `[UNK]` for words over 100 characters.

Which characters are controls, white space, punctuation, non-spacing marks, cased or case-ignorable is read from
this Python's `unicodedata` (the tables the original algorithm uses), not from the Rust crate's own tables, which
are older; only NFC/NFD and per-character lower-casing run on the Rust side's tables (see `_char_classes`).
The ids equal the original's for every code point, except where the Rust crate's normalisation data (Unicode 9.0)
lacks what Python's has (tests/test_tokenizer_property.py checks every code point): U+11938, whose decomposition
came in Unicode 13.0, and 98 combining marks whose combining class came in 10.0 to 14.0 when another mark of a
lower class follows one of them (Python's NFC/NFD puts that mark first, the Rust side leaves the order). Counted
with Python 3.11 (Unicode 14.0) and tokenizers 0.23.

Special tokens and pair truncation are done here rather than by `tokenizers`, so that truncation trims the longer
segment first and, on a tie, segment B, exactly as the original `_truncate_seq_pair`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordPiece

from bertkit.constants import MIN_PAIR_FREQUENCY, VOCAB_SIZE
from bertkit.errors import BertkitError, shown
from bertkit.files import (
    BytesRead,
    atomic_write,
    make_model_directory,
    no_such_path,
    read_corpus_lines,
    read_json_object,
)
from bertkit.options import as_whole_number, check_switches
from bertkit.progress import progress_bar

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # BERT order: a trained vocabulary starts with these
MAX_INPUT_CHARS_PER_WORD = 100
# Tokens a text is cut at unless the tokenizer says otherwise: the positions BERT was pre-trained with (and where
# tokenizer_config.json gives none, or Hugging Face's 1e30 for "no limit").
MODEL_MAX_LENGTH = 512


class Encoding:
    """One encoded sequence `[CLS] A [SEP] (B [SEP])`.

    `offsets[i]` is token i's (start, end) character span in the text of its own segment (A or B), (0, 0) for
    special tokens; `sequence_ids[i]` is 0 for A, 1 for B and None for special tokens.
    """

    __slots__ = ("_a", "_b", "_len_a", "_len_b", "input_ids")

    def __init__(self, input_ids: list[int], a, b, len_a: int, len_b: int):
        self.input_ids = input_ids
        # Offsets are read from the segments only when asked for: building them for every text costs more than
        # the tokenization itself.
        self._a, self._b, self._len_a, self._len_b = a, b, len_a, len_b

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def token_type_ids(self) -> list[int]:
        """Segment ids: 0 over `[CLS] A [SEP]`, 1 over `B [SEP]`."""
        n_a = self._len_a + 2
        return [0] * n_a + [1] * (len(self.input_ids) - n_a)

    @property
    def attention_mask(self) -> list[int]:
        """All ones: an Encoding holds no padding (`Tokenizer.pad` adds it)."""
        return [1] * len(self.input_ids)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """Each token's (start, end) span in its own segment's text; (0, 0) for special tokens."""
        out = [(0, 0), *self._a.offsets[: self._len_a], (0, 0)]
        if self._b is not None:
            out += [*self._b.offsets[: self._len_b], (0, 0)]
        return out

    @property
    def truncated(self) -> bool:
        """Whether tokens of the text (or of the pair's second text) were cut off to fit the maximum length."""
        return self._len_a < len(self._a.ids) or (self._b is not None and self._len_b < len(self._b.ids))

    @property
    def cut_ids(self) -> list[int]:
        """The ids cut off the end of A, then those cut off the end of B (empty when nothing was cut)."""
        return [*self._a.ids[self._len_a :], *(self._b.ids[self._len_b :] if self._b is not None else [])]

    @property
    def sequence_ids(self) -> list[int | None]:
        """Each token's segment: 0 for A, 1 for B, None for special tokens."""
        out: list[int | None] = [None, *([0] * self._len_a), None]
        if self._b is not None:
            out += [*([1] * self._len_b), None]
        return out


def check_texts(texts: Sequence[str], name: str, each: bool = True) -> None:
    """Refuse `texts` that are not a list of strings (each one checked unless not `each`): a string alone would be
    read as a list of its characters."""
    if isinstance(texts, str | bytes):
        raise BertkitError(f"{name} must be a list of strings, got the string {shown(texts)}: put it in a list")
    for n, text in enumerate(texts if each else ()):
        if not isinstance(text, str):
            raise BertkitError(f"{name}[{n}] must be a string, got {type(text).__name__}")


def truncate_pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths after the original `_truncate_seq_pair`: pop from the longer side, from B on a tie.

    Closed form of that loop, so long inputs cost O(1).
    """
    excess = len_a + len_b - budget
    if excess <= 0:
        return len_a, len_b
    if len_a > len_b:
        d = min(excess, len_a - len_b)
        len_a, excess = len_a - d, excess - d
    elif len_b > len_a:
        d = min(excess, len_b - len_a)
        len_b, excess = len_b - d, excess - d
    # Now equal: the loop alternates B, A, B, ...
    return len_a - excess // 2, len_b - (excess + 1) // 2


# Padding lives here, beside `Tokenizer.pad`, because it is the form the tokenizer's output takes for the encoder;
# task batches and pre-training batches pad their rows (and labels) with the same two routines.
def pad_rows(rows: Sequence[Sequence[int] | np.ndarray], value: int, length: int | None = None) -> torch.Tensor:
    """Stack integer rows into a (B, T) LongTensor padded with `value`; T = `length` or the longest row."""
    T = length if length is not None else max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def encoder_inputs(
    input_ids: Sequence[Sequence[int] | np.ndarray],
    token_type_ids: Sequence[Sequence[int] | np.ndarray],
    pad_id: int,
    length: int | None = None,
) -> dict[str, torch.Tensor]:
    """`input_ids`, `token_type_ids` and `attention_mask` (1 on real tokens), each (B, T), right-padded."""
    T = length if length is not None else max((len(r) for r in input_ids), default=0)
    lengths = torch.tensor([len(r) for r in input_ids])
    return {
        "input_ids": pad_rows(input_ids, pad_id, T),
        "token_type_ids": pad_rows(token_type_ids, 0, T),
        "attention_mask": (torch.arange(T)[None, :] < lengths[:, None]).long(),  # (B, T)
    }


# The blocks the original `_is_chinese_char` isolates (the Rust BertNormalizer has U+2B920 where the original has
# U+2B820, so Extension E's first 256 characters are given here rather than left to it).
_ALL_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip
# The Basic Multilingual Plane ones (U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF): the table lookup's, and the CJK test
# of language detection, whole-word masking and CMRC scoring.
_CJK_RANGES = tuple(r for r in _ALL_CJK_RANGES if r[1] < 0x10000)
_UNIFIED_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF))  # the BMP ones without the compatibility block
_SPACES = frozenset(" \t\u3000")
_ASCII_PUNCTUATION = ((33, 47), (58, 64), (91, 96), (123, 126))  # not all 'P*' in Unicode, punctuation to BERT


def _is_bert_punctuation(c: str) -> bool:
    """BERT's punctuation test: ASCII symbols and every Unicode 'P*' category (each becomes its own word)."""
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _class(ranges: Iterable[tuple[int, int]]) -> str:
    """The body of an Oniguruma character class (no brackets) matching the (first, last) code point ranges."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in merged)


def _ranges_of(chars: Iterable[str]) -> list[tuple[int, int]]:
    """(first, last) code point ranges of characters given in code point order."""
    out: list[tuple[int, int]] = []
    for cp in map(ord, chars):
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


@dataclass(frozen=True)
class _CharClasses:
    """Regular expressions (Oniguruma syntax, for `tokenizers.Regex`) of the original algorithm's character tests."""

    removed: str  # what `_clean_text` drops: NUL, U+FFFD and every 'C*' category except tab, newline, return
    space: str  # what the white-space splits split on (str.split(): Zs, tab, newline, return, U+2028, ...)
    punctuation: str  # class body: ASCII symbols and 'P*'; each becomes a word of its own
    chinese: str  # class body: the CJK blocks the original puts spaces around
    nonspacing_mark: str  # 'Mn': what accent stripping drops after NFD
    final_sigma: str  # a capital sigma that Python's str.lower() makes 'ς' (Unicode's Final_Sigma context)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what is written to file descriptor 1 to standard error meanwhile: the Rust trainer's progress ends its
    lines there, and standard output is for a command's result."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no such descriptor: nothing to redirect
        saved = None
    if saved is None:
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@functools.cache
def _char_classes() -> _CharClasses:
    """The original algorithm's character classes from this Python's `unicodedata` (a pass over every code point,
    once a process).

    The Rust crate's own character tests use older tables (recent characters are neither controls nor punctuation
    nor marks there, and U+166D is still punctuation), keep unassigned code points that the original drops, and
    lower-case a capital sigma without context; given these classes, the Rust side only does NFC, NFD and
    per-character lower-casing."""
    runs = []  # (first, last, general category), in code point order; C-level loops throughout
    first = 0
    for category, same in itertools.groupby(map(unicodedata.category, map(chr, range(0x110000)))):
        n = len(list(same))
        runs.append((first, first + n - 1, category))
        first += n
    removed, kept = [(0xFFFD, 0xFFFD)], []
    for a, b, category in runs:
        if category == "Cc":  # 65 code points; tab, newline and return are white space to the original
            for cp in range(a, b + 1):
                (kept if cp in (9, 10, 13) else removed).append((cp, cp))
        elif category != "Cs":  # surrogates cannot occur in a str that reaches Rust
            (removed if category.startswith("C") else kept).append((a, b))
    kept_chars = list(map(chr, itertools.chain.from_iterable(range(a, b + 1) for a, b in sorted(kept))))
    titlecase = {chr(cp) for a, b, category in runs if category == "Lt" for cp in range(a, b + 1)}
    lower, upper = map(str.islower, kept_chars), map(str.isupper, kept_chars)
    cased = [c for c, lo, up in zip(kept_chars, lower, upper, strict=True) if lo or up or c in titlecase]

    # Case_Ignorable is not exposed by Python, so it is read off str.lower() itself (NUL separates the probes and
    # is neither cased nor case-ignorable): a capital sigma after a cased letter and a non-cased x is final ('ς')
    # exactly when x is case-ignorable; after a cased x alone, exactly when x is not.
    def sigma_is_final(probes: str) -> list[bool]:
        return [p[-1] == "\u03c2" for p in probes.lower().split("\0")]

    cased_set = set(cased)
    others = [c for c in kept_chars if c not in cased_set]
    finals = sigma_is_final("A" + "\u03a3\0A".join(others) + "\u03a3")
    ignorable = {c for c, final in zip(others, finals, strict=True) if final}
    finals = sigma_is_final("\u03a3\0".join(cased) + "\u03a3")
    ignorable |= {c for c, final in zip(cased, finals, strict=True) if not final}
    stops = _class(_ranges_of(c for c in cased if c not in ignorable))  # cased and not case-ignorable
    skip = _class(_ranges_of(sorted(ignorable)))
    p_runs = [(a, b) for a, b, category in runs if category.startswith("P")]
    return _CharClasses(
        removed=f"[{_class(removed)}]",
        space=f"[{_class(_ranges_of(itertools.compress(kept_chars, map(str.isspace, kept_chars))))}]+",
        punctuation=_class([*_ASCII_PUNCTUATION, *p_runs]),
        chinese=_class(_ALL_CJK_RANGES),
        nonspacing_mark=f"[{_class((a, b) for a, b, category in runs if category == 'Mn')}]",
        # CPython's rule: preceded by a cased letter, skipping case-ignorable characters, and not followed by one.
        final_sigma=f"(?<=[{stops}][{skip}]*)\\x{{3A3}}(?![{skip}]*[{stops}])",
    )


class _CharTable:
    """Table lookup for text made only of characters that BERT always makes one word of one character (CJK
    ideographs, punctuation) and spaces: most Chinese sentences. Each character's id is computed once by the Rust
    tokenizer itself; a text with any other character (letters, digits, marks, controls) is not handled here.
    Tokenizing such a text character by character gives the same ids as tokenizing it whole, because the
    pre-tokenizer splits around every one of these characters (tests check this over the whole corpus)."""

    def __init__(self, rust: RustTokenizer, chinese: bool):
        chars = [chr(c) for c in range(0x21, 0x10000) if _is_bert_punctuation(chr(c))]
        if chinese:
            chars += [chr(c) for lo, hi in _CJK_RANGES for c in range(lo, hi + 1)]
        encs = rust.encode_batch(chars, add_special_tokens=False)
        ids = {c: e.ids[0] for c, e in zip(chars, encs, strict=True) if len(e.ids) == 1}
        self.lut = np.full(0x10000, -1, dtype=np.int32)  # code point -> id; -1 for spaces (no token)
        self.lut[[ord(c) for c in ids]] = list(ids.values())
        # code point -> whether a covered text may hold it (the table's characters and the spaces)
        self.allowed = np.zeros(0x10000, dtype=bool)
        self.allowed[[ord(c) for c in [*ids, *_SPACES]]] = True
        # code point -> whether it cuts any text into parts that tokenize independently: the table's CJK
        # ideographs outside the compatibility block. Each is its own word, unchanged by every normalisation step,
        # a part of no canonical composition, and neither cased nor case-ignorable (so it ends the final-sigma
        # context), so what precedes it normalises and splits the same without what follows, and the reverse.
        self.separator = np.zeros(0x10000, dtype=bool)
        for lo, hi in _UNIFIED_CJK_RANGES:
            self.separator[lo : hi + 1] = self.lut[lo : hi + 1] >= 0
        allowed = "".join(re.escape(c) for c in sorted(ids)) + "".join(re.escape(c) for c in _SPACES)
        self._pattern = re.compile(f"[{allowed}]*")

    def covers(self, text: str) -> bool:
        return self._pattern.fullmatch(text) is not None

    def encode_many(self, texts: Sequence[str], offsets: bool = True) -> list[tuple[list[int], list[int]]]:
        """(ids, character positions) of each covered text, vectorised over all of them at once."""
        ids = self.lut[np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)]  # one per character
        text_lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        text_starts = np.cumsum(text_lengths) - text_lengths
        keep = ids >= 0  # spaces give no token
        owner = np.repeat(np.arange(len(texts)), text_lengths)[keep]  # text of each kept character
        counts = np.bincount(owner, minlength=len(texts)).tolist()
        flat_ids = ids[keep].tolist()
        flat_pos = (np.flatnonzero(keep) - text_starts[owner]).tolist() if offsets else []
        out, start = [], 0
        for n in counts:
            out.append((flat_ids[start : start + n], flat_pos[start : start + n]))
            start += n
        return out


@dataclass
class _Piece:
    """The ids and character positions of one segment, read like a Rust encoding by `Encoding`."""

    ids: list[int]
    positions: list[int]

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return [(p, p + 1) for p in self.positions]


@dataclass(frozen=True)
class TokenSpans:
    """One text's tokens, without special tokens or truncation: their ids and each one's (start, end) character
    span in the text (what answer spans and word boundaries are mapped through)."""

    ids: list[int]
    offsets: list[tuple[int, int]]


_OWN_KEY = "bertkit"  # bertkit's own section of tokenizer_config.json; other readers ignore it


def _read_tokenizer_config(path: Path, fallback: dict | None = None) -> dict:
    """Tokenizer settings from a tokenizer_config.json, checked field by field; where it is missing or leaves a
    setting out, the setting comes from `fallback` (tokenizer.json's normalizer), else the default.

    Returns the keyword arguments of `Tokenizer` plus `vocab_size`: the size bertkit recorded, or None."""
    cfg = read_json_object(path, "fix it, or save the tokenizer again") if path.is_file() else {}
    cfg = {**(fallback or {}), **cfg}

    def field(name: str, default, ok, expected: str):
        value = cfg.get(name, default)
        if not ok(value):
            raise BertkitError(f"{path}: field {name} is {json.dumps(value)}; it must be {expected}")
        return value

    def is_bool(v: object) -> bool:
        return isinstance(v, bool)

    def is_count(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    def is_length(v: object) -> bool:  # Hugging Face writes 1e30 for "no limit", as an integer or a float
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1

    own = field(_OWN_KEY, {}, lambda v: isinstance(v, dict), 'an object such as {"vocab_size": 21128}')
    recorded = own.get("vocab_size")
    if recorded is not None and not is_count(recorded):
        raise BertkitError(
            f"{path}: field {_OWN_KEY}.vocab_size is {json.dumps(recorded)}; it must be a positive integer"
        )
    max_length = field("model_max_length", MODEL_MAX_LENGTH, is_length, "a positive integer")
    return {
        "lowercase": field("do_lower_case", True, is_bool, "true or false (a JSON boolean, without quotes)"),
        "strip_accents": field("strip_accents", None, lambda v: v is None or is_bool(v), "true, false or null"),
        "tokenize_chinese_chars": field("tokenize_chinese_chars", True, is_bool, "true or false (without quotes)"),
        "model_max_length": int(max_length) if max_length < 1_000_000 else MODEL_MAX_LENGTH,
        "vocab_size": recorded,
    }


# Hugging Face models may pad their embedding table past the tokenizer's size (to a multiple of 8 to 128, for
# faster matrix products); a larger gap is more likely a vocab.txt that lost lines.
_MAX_PADDING = 128


def _read_fast_tokenizer(path: Path) -> dict:
    """What a `tokenizer.json` says of a BERT tokenizer: "vocab", its WordPiece tokens in id order, and "settings",
    its BertNormalizer's options under tokenizer_config.json's names; either is left out where the file (absent, not
    JSON, another model or normalizer) does not say it."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        model, normalizer = doc.get("model") or {}, doc.get("normalizer") or {}
        table = model.get("vocab") if model.get("type", "WordPiece") == "WordPiece" else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        return {}  # not ours to judge: bertkit reads vocab.txt
    out: dict = {}
    if isinstance(table, dict):
        ids = sorted(table.values()) if all(isinstance(i, int) for i in table.values()) else None
        if ids != list(range(len(table))):
            raise BertkitError(f"{path}: the WordPiece ids are not 0 to {len(table) - 1}, each once")
        out["vocab"] = sorted(table, key=table.__getitem__)
    if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
        names = {"lowercase": "do_lower_case", "strip_accents": "strip_accents",
                 "handle_chinese_chars": "tokenize_chinese_chars"}  # fmt: skip
        out["settings"] = {ours: normalizer[theirs] for theirs, ours in names.items() if theirs in normalizer}
    return out


def _model_vocab_size(path: Path) -> int | None:
    """`vocab_size` of the model config.json beside a vocabulary, or None where there is none to read (a broken
    config.json is reported by the model's loader, which reads it next)."""
    try:
        size = json.loads(path.read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _python_class(rust_class: str) -> str:
    """A character class written for the Rust regex engine (`\\x{HEX}` escapes) in Python's `re` syntax."""
    return re.sub(r"\\x\{([0-9A-Fa-f]+)\}", lambda m: f"\\U{int(m.group(1), 16):08x}", rust_class)


def cjk_class(bmp_only: bool = False) -> str:
    """The CJK ideographs that `is_cjk` tests, as the inside of a Python regular-expression class (`[...]`)."""
    return _python_class(_class(_CJK_RANGES if bmp_only else _ALL_CJK_RANGES))


@functools.cache
def _cjk_pattern(bmp_only: bool) -> re.Pattern[str]:
    return re.compile(f"[{cjk_class(bmp_only)}]")


def is_cjk(char: str, bmp_only: bool = False) -> bool:
    """Whether `char` is one CJK ideograph: in a block that the original `_is_chinese_char` isolates (the
    tokenizer makes each such character a word of its own), or with `bmp_only` in one of those blocks that lie in
    the Basic Multilingual Plane (U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF; Extensions B to F and the compatibility
    supplement left out), the set that language detection, whole-word masking and CMRC scoring test. An empty or
    longer string is not one."""
    return _cjk_pattern(bmp_only).fullmatch(char) is not None


def contains_cjk(text: str, bmp_only: bool = False) -> bool:
    """Whether any character of `text` is CJK as `is_cjk` tests it (one regular-expression search, in C)."""
    return _cjk_pattern(bmp_only).search(text) is not None


# The files `Tokenizer.save_pretrained` writes (so commands that write a tokenizer know which entries are theirs).
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class Tokenizer:
    """BERT WordPiece tokenizer: `encode`, `encode_batch`, `batch`, `train`, `from_pretrained`, `save_pretrained`."""

    def __init__(
        self,
        vocab: Sequence[str],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = MODEL_MAX_LENGTH,
    ):
        """A tokenizer over `vocab` (token i has id i; it must hold the special tokens). `lowercase` lower-cases
        text; `strip_accents` removes accents, by default (None) when lower-casing, as the original BERT does;
        `tokenize_chinese_chars` makes every CJK ideograph a word of its own; `model_max_length` is where `encode`
        cuts by default (the model's positions)."""
        check_switches(lowercase=lowercase, tokenize_chinese_chars=tokenize_chinese_chars)
        if strip_accents is not None:  # None: as lowercase says
            check_switches(strip_accents=strip_accents)
        model_max_length = as_whole_number(model_max_length, "model_max_length")
        self.vocab: list[str] = list(vocab)
        self.token_to_id: dict[str, int] = {}
        for i, t in enumerate(self.vocab):
            self.token_to_id.setdefault(t, i)  # first occurrence wins, as in the original load_vocab
        missing = [t for t in SPECIAL_TOKENS if t not in self.token_to_id]
        if missing:
            raise BertkitError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.token_to_id[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset(self.token_to_id[t] for t in SPECIAL_TOKENS)
        # Both built on first use (each a pass over the code points): the Rust pipeline needs `_char_classes`.
        self._rust_tokenizer: RustTokenizer | None = None
        self._char_table: _CharTable | None = None
        self._special_tokens_in_text = True

    @property
    def special_tokens_in_text(self) -> bool:
        """Whether "[MASK]", "[SEP]", ... typed in a text are read as those special tokens (True, the default: as
        Hugging Face's tokenizers read them, and what fill-mask needs) or as the text "[", "mask", "]" (False: as
        the original BERT tokenizer read them, and what a pre-training corpus needs)."""
        return self._special_tokens_in_text

    @special_tokens_in_text.setter
    def special_tokens_in_text(self, value: bool) -> None:
        self._special_tokens_in_text = value
        if self._rust_tokenizer is not None:
            self._rust_tokenizer.encode_special_tokens = not value

    @property
    def _rust(self) -> RustTokenizer:
        if self._rust_tokenizer is None:
            self._rust_tokenizer = self._build_rust()
        return self._rust_tokenizer

    def _build_rust(self) -> RustTokenizer:
        tk = RustTokenizer(
            WordPiece(self.token_to_id, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
        )
        tk.normalizer = self._normalizer()
        tk.pre_tokenizer = self._pre_tokenizer()
        tk.decoder = decoders.WordPiece(prefix="##")
        tk.add_special_tokens(SPECIAL_TOKENS)  # "[MASK]" typed in a text stays one token ...
        tk.encode_special_tokens = not self._special_tokens_in_text  # ... unless they are read as text
        # Used only by other readers of tokenizer.json (e.g. transformers); bertkit adds specials itself.
        tk.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}",
            pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
            special_tokens=[(CLS, self.cls_id), (SEP, self.sep_id)],
        )
        return tk

    def _normalizer(self) -> normalizers.Normalizer:
        """The original's steps in its order: clean, NFC, lower-case, then NFD and drop 'Mn' if stripping accents.

        No NFC after stripping: the original leaves the decomposed text (Hangul '가' stays 'ᄀ' + 'ᅡ'), and the
        CJK spaces are put in by the pre-tokenizer instead (NFC composes nothing across a CJK ideograph)."""
        cc = _char_classes()
        steps = [normalizers.Replace(Regex(cc.removed), ""), normalizers.NFC()]
        if self.lowercase:
            steps += [normalizers.Replace(Regex(cc.final_sigma), "\u03c2"), normalizers.Lowercase()]
        strip = self.strip_accents is not False if self.lowercase else bool(self.strip_accents)
        if strip:
            steps += [normalizers.NFD(), normalizers.Replace(Regex(cc.nonspacing_mark), "")]
        return normalizers.Sequence(steps)

    def _pre_tokenizer(self) -> pre_tokenizers.PreTokenizer:
        """Split on white space, then make each punctuation character (and CJK ideograph) a word of its own."""
        cc = _char_classes()
        isolated = cc.punctuation + (cc.chinese if self.tokenize_chinese_chars else "")
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(cc.space), behavior="removed"),
                pre_tokenizers.Split(Regex(f"[{isolated}]"), behavior="isolated"),
            ]
        )

    def _continuation_pieces(self, lines: Iterable[str], limit_alphabet: int) -> list[str]:
        """The `##c` piece of every character that occurs inside a word (not at its start), in a fixed order (by
        character): the pieces the WordPiece trainer creates on its own, in hash-map order. Text goes through the
        same normaliser; words are cut where the pre-tokenizer cuts them (white space, punctuation, CJK); only the
        `limit_alphabet` most frequent characters (ties by character) can have a piece, as only they enter the
        trainer's alphabet."""
        cc = _char_classes()
        spaces = cc.space.removeprefix("[").removesuffix("+").removesuffix("]")  # the class's members
        cuts = _python_class(spaces + cc.punctuation + (cc.chinese if self.tokenize_chinese_chars else ""))
        inside_word = re.compile(f"(?<=[^{cuts}])[^{cuts}]")
        space = re.compile(_python_class(cc.space))
        normalize = self._rust.normalizer.normalize_str
        counts: Counter[str] = Counter()
        inside: set[str] = set()
        lines = iter(lines)
        # In chunks of lines (a line break is white space: no word spans two), in C: one pass over a large corpus
        # costs seconds, where splitting it into Python word objects cost minutes.
        while chunk := list(itertools.islice(lines, 2000)):
            text = normalize("\n".join(chunk))
            counts.update(text)
            inside.update(inside_word.findall(text))
        letters = [c for c in counts if not space.fullmatch(c)]
        alphabet = set(sorted(letters, key=lambda c: (-counts[c], c))[:limit_alphabet])
        return ["##" + c for c in sorted(inside & alphabet)]

    # ---------------------------------------------------------------- basics
    @property
    def vocab_size(self) -> int:
        """How many tokens the vocabulary has (ids 0 to vocab_size - 1)."""
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of `text`, without special tokens."""
        return self._rust.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Ids of the tokens; one not in the vocabulary gets the [UNK] id."""
        if isinstance(tokens, str):
            raise BertkitError(f"tokens must be a list of tokens, got the string {shown(tokens)}: tokenize it first")
        return [self.token_to_id.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Vocabulary entries of the ids, `##` pieces and special tokens as they are."""
        return [self.vocab[i] for i in self._checked_ids(ids)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text from ids, joining `##` continuations (lower-cased/normalised text, as tokenized)."""
        ids = [i for i in self._checked_ids(ids) if not (skip_special_tokens and i in self.special_ids)]
        return self._rust.decode(ids, skip_special_tokens=False)

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` as ints, each an id of this vocabulary (a negative one counted from the end, or one past it, was
        read as another token or dropped)."""
        out = [int(i) for i in ids]
        for i in out:
            if not 0 <= i < len(self.vocab):
                raise BertkitError(f"id {i} is not in this vocabulary of {len(self.vocab)} tokens (ids 0 to "
                                   f"{len(self.vocab) - 1})")  # fmt: skip
        return out

    # ---------------------------------------------------------------- encoding
    def encode(
        self,
        text: str,
        pair: str | None = None,
        max_length: int | None = None,
        truncation: bool = True,
    ) -> Encoding:
        """Encode `[CLS] text [SEP] (pair [SEP])`; with truncation, fit `max_length` (default: model maximum)."""
        for name, value in (("text", text), ("pair", pair)):
            if not isinstance(value, str) and (name == "text" or value is not None):
                raise BertkitError(f"{name} must be a string, got {type(value).__name__}")
        return self.encode_batch([text], None if pair is None else [pair], max_length, truncation)[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int | None = None,
        truncation: bool = True,
    ) -> list[Encoding]:
        """Encode many texts (and optional pair texts) at once; the Rust side runs in parallel."""
        check_texts(texts, "texts")
        if pairs is not None:
            check_texts(pairs, "pairs")
            if len(pairs) != len(texts):
                raise BertkitError(f"{len(texts)} texts but {len(pairs)} pair texts")
        max_length = self.model_max_length if max_length is None else as_whole_number(max_length, "max_length", 0)
        enc_a = self._encode_segments(texts)
        enc_b = self._encode_segments(pairs) if pairs is not None else None
        out = []
        for i, a in enumerate(enc_a):
            b = enc_b[i] if enc_b is not None else None
            out.append(self._assemble(a, b, max_length, truncation))
        return out

    @property
    def _chars(self) -> _CharTable:
        if self._char_table is None:
            self._char_table = _CharTable(self._rust, self.tokenize_chinese_chars)
        return self._char_table

    def _encode_segments(self, texts: Sequence[str], offsets: bool = True) -> list:
        """Ids (and offsets) of each text without special tokens: vectorised table lookup where `_CharTable`
        covers the text, the Rust tokenizer (one parallel batch) for the rest. The public callers check `texts`."""
        chars = self._chars
        covered = [i for i, t in enumerate(texts) if chars.covers(t)]
        out: list = [None] * len(texts)
        for i, (ids, pos) in zip(covered, chars.encode_many([texts[i] for i in covered], offsets), strict=True):
            out[i] = _Piece(ids, pos)
        rest = [i for i, e in enumerate(out) if e is None]
        if rest:
            encs = self._rust.encode_batch([texts[i] for i in rest], add_special_tokens=False)
            for i, enc in zip(rest, encs, strict=True):
                out[i] = enc
        return out

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens, no truncation (the fast path of `bertkit prepare`)."""
        check_texts(texts, "texts")
        return [e.ids for e in self._encode_segments(texts, offsets=False)]

    def ids_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of `ids_batch` as one int64 array, all texts one after another, and each text's number of
        tokens: no Python list per text or per token (the fast path of `bertkit prepare`).

        Each text is cut at its CJK ideographs (`_CharTable.separator`) into runs of other characters. The
        ideographs, and the runs that `_CharTable` covers, are looked up in the table; only the other runs (letters,
        digits, ...) go to the Rust tokenizer, so a Chinese sentence with a Latin word sends that word alone."""
        check_texts(texts, "texts", each=False)  # a hot path: each text is checked by the join below
        chars = self._chars
        joined = "".join(texts)
        code_points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        text_lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        text_starts = np.cumsum(text_lengths) - text_lengths
        bmp = np.minimum(code_points, 0xFFFF)  # the table covers the BMP only
        in_bmp = code_points <= 0xFFFF
        separator = chars.separator[bmp] & in_bmp
        allowed = chars.allowed[bmp] & in_bmp
        char_ids = chars.lut[bmp]
        del bmp, code_points  # arrays of a whole block: peak memory
        # Runs: the longest stretches of non-separators inside one text.
        inside = ~separator
        run_start = np.ones(len(separator), dtype=bool)
        run_start[1:] = separator[:-1]
        run_start[text_starts[text_lengths > 0]] = True
        run_start &= inside
        run_of = (np.cumsum(run_start) - 1)[inside]  # each character inside a run: the run's number
        n_runs = int(run_start.sum())
        run_lengths = np.bincount(run_of, minlength=n_runs)
        to_rust = np.bincount(run_of[~allowed[inside]], minlength=n_runs) > 0  # runs the table does not cover
        looked_up = ~inside  # characters the table gives the token of (or no token, for spaces)
        looked_up[inside] = ~to_rust[run_of]
        del run_of
        table_token = looked_up & (char_ids >= 0)
        # Tokens per character: 1 where the table gives one, the whole run's count at a Rust run's first character.
        per_char = table_token.astype(np.int32)
        rust_starts = np.flatnonzero(run_start)[to_rust]
        rust_ids: list[int] = []
        if len(rust_starts):
            bounds = zip(rust_starts.tolist(), (rust_starts + run_lengths[to_rust]).tolist(), strict=True)
            encs = self._rust.encode_batch([joined[a:b] for a, b in bounds], add_special_tokens=False)
            rust_counts = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
            per_char[rust_starts] = rust_counts
            rust_ids = list(itertools.chain.from_iterable(e.ids for e in encs))
        done = np.cumsum(per_char, dtype=np.int64)  # tokens up to and including each character

        def before(positions: np.ndarray) -> np.ndarray:  # the number of tokens before each position
            return np.where(positions > 0, done[np.maximum(positions - 1, 0)], 0) if len(done) else positions * 0

        ids = np.empty(len(rust_ids) + int(table_token.sum()), dtype=np.int64)
        ids[done[table_token] - 1] = char_ids[table_token]
        if rust_ids:
            first = before(rust_starts) - (np.cumsum(rust_counts) - rust_counts)
            ids[np.repeat(first, rust_counts) + np.arange(len(rust_ids))] = rust_ids
        return ids, before(text_starts + text_lengths) - before(text_starts)

    def encode_with_offsets(self, texts: Sequence[str]) -> list[TokenSpans]:
        """Token ids and character spans of each text, no special tokens, no truncation: a segment as `encode_batch`
        encodes it (`Encoding.offsets` are these spans, bracketed by special tokens)."""
        check_texts(texts, "texts")
        return [TokenSpans(e.ids, list(e.offsets)) for e in self._encode_segments(texts)]

    def encode_words(self, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Token ids of each word of each sentence given as words (no special tokens, no truncation), one list per
        word: `out[s][w]` are the pieces of word w of sentence s. A word is tokenized on its own, as if white space
        surrounded it (it may still split at punctuation); one that gives no token (only white space or control
        characters) has an empty list. Grouped by word because token labelling puts a word's label on its first
        piece and never cuts a word between chunks."""
        if isinstance(sentences, str | bytes):
            raise BertkitError(f"sentences must be a list of sentences (each a list of words), got the string "
                               f"{shown(sentences)}")  # fmt: skip
        for n, words in enumerate(sentences):
            if isinstance(words, str | bytes):
                raise BertkitError(f"sentences[{n}] must be a list of words, got the string {shown(words)}")
            check_texts(words, f"sentences[{n}]")
        encs = self._rust.encode_batch([list(s) for s in sentences], is_pretokenized=True, add_special_tokens=False)
        out = []
        for words, enc in zip(sentences, encs, strict=True):
            per_word: list[list[int]] = [[] for _ in words]
            for token_id, w in zip(enc.ids, enc.word_ids, strict=True):
                if w is not None:  # None only for special tokens, which are not added here
                    per_word[w].append(token_id)
            out.append(per_word)
        return out

    def _assemble(self, a, b, max_length: int, truncation: bool) -> Encoding:
        ids_a = a.ids
        ids_b = b.ids if b is not None else []
        la, lb = len(ids_a), len(ids_b)
        if truncation:
            n_special = 3 if b is not None else 2
            if max_length < n_special + 1:
                raise BertkitError(f"max_length {max_length} leaves no room for text next to the special tokens")
            if b is None:
                la = min(la, max_length - 2)
            else:
                la, lb = truncate_pair_lengths(la, lb, max_length - 3)
        input_ids = [self.cls_id, *ids_a[:la], self.sep_id]
        if b is not None:
            input_ids += [*ids_b[:lb], self.sep_id]
        return Encoding(input_ids, a, b, la, lb)

    def truncate(self, encoding: Encoding, max_length: int) -> Encoding:
        """`encoding` (made with truncation=False) cut to `max_length` tokens as `encode` would cut it: without
        tokenizing its text again."""
        return self._assemble(encoding._a, encoding._b, max_length, truncation=True)

    def pad(self, encodings: Sequence[Encoding], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        """Stack encodings into (B, T) LongTensors padded to the longest (optionally to a multiple of N)."""
        for n, e in enumerate(encodings):
            if not isinstance(e, Encoding):
                raise BertkitError(f"encodings[{n}] is a {type(e).__name__}, not an Encoding (encode_batch makes them)")
        if pad_to_multiple_of is not None:
            pad_to_multiple_of = as_whole_number(pad_to_multiple_of, "pad_to_multiple_of")
        T = max((len(e) for e in encodings), default=0)  # no encodings: a (0, 0) batch
        if pad_to_multiple_of:
            T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
        ids, types = [e.input_ids for e in encodings], [e.token_type_ids for e in encodings]
        return encoder_inputs(ids, types, self.pad_id, T)

    def batch(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode and pad in one call: a model-ready batch."""
        return self.pad(self.encode_batch(texts, pairs, max_length))

    # ---------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        files: Sequence[str | Path],
        vocab_size: int = VOCAB_SIZE,
        lowercase: bool = True,
        min_frequency: int = MIN_PAIR_FREQUENCY,
        limit_alphabet: int = 10000,
        show_progress: bool = True,
    ) -> Tokenizer:
        """Learn a WordPiece vocabulary from UTF-8 corpus files; special tokens come first, in BERT order.

        `vocab_size` is a target: the trainer keeps every character of the corpus (at most `limit_alphabet`
        distinct ones) and the `##` form of those seen inside a word whatever the size, so a small target on a
        corpus of many characters (Chinese) gives more tokens; and it learns only pieces that occur at least
        `min_frequency` times, so a small corpus can give fewer. `lowercase` also strips accents, as the uncased
        BERT models do.

        The same corpus and settings give the same vocabulary in every run. The `tokenizers` trainer on its own does
        not: it numbers the `##c` pieces of single characters in hash-map order, and breaks ties between equally
        frequent merges by those numbers, so runs differed in their ids and in a few rare pieces
        (huggingface/tokenizers#1794). Here those pieces are counted first and handed to the trainer in a fixed
        order (as tokens that exist from the start, which they do anyway), which leaves it nothing to order by
        chance.

        With `show_progress`, the progress goes to standard error; the Rust trainer writes part of it to file
        descriptor 1, which points at standard error while it runs, for every thread of the process (a program
        that writes its own output from other threads meanwhile should pass `show_progress=False`)."""
        if isinstance(files, str | Path):
            raise BertkitError(f"files must be a list of corpus files, got the single path {str(files)!r}: "
                               "put it in a list")  # fmt: skip
        if not files:
            raise BertkitError("no corpus files given to learn a vocabulary from")
        vocab_size = as_whole_number(vocab_size, "vocab_size", 0)
        min_frequency = as_whole_number(min_frequency, "min_frequency", 0)
        limit_alphabet = as_whole_number(limit_alphabet, "limit_alphabet", 0)
        check_switches(lowercase=lowercase, show_progress=show_progress)  # before the pass over the corpus
        if vocab_size <= len(SPECIAL_TOKENS):
            raise BertkitError(f"vocab_size {vocab_size} is too small: the special tokens alone take 5")
        for f in map(Path, files):  # before the trainer starts, in the words of `read_lines`
            if f.is_dir():
                raise BertkitError(f"{f} is a directory: give its files, e.g. {f / '*.txt'}")
            if not f.is_file():
                raise BertkitError(no_such_path(f))
        n_text_lines = 0

        def first_pass() -> Iterator[str]:  # streamed; UTF-8 errors name the file and byte offset
            # It counts the lines of text, so that the trainer's pass over them can show how far it has come; its
            # own bar (against the files' size) is the one progress shown for this pass.
            nonlocal n_text_lines
            read, size = BytesRead(), sum(Path(f).stat().st_size for f in files if Path(f).is_file())
            kind = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
            with progress_bar(show_progress, total=size, desc="vocab: characters", **kind) as bar:
                for n, line in enumerate(read_corpus_lines(files, read)):
                    n_text_lines += bool(line.strip())
                    if bar is not None and n % 4096 == 0:
                        bar.update(read.n - bar.n)
                    yield line
                if bar is not None:
                    bar.update(read.n - bar.n)

        proto = cls(SPECIAL_TOKENS, lowercase=lowercase)  # same normalisation and splitting as encoding
        pieces = proto._continuation_pieces(first_pass(), limit_alphabet)
        if n_text_lines == 0:
            raise BertkitError(f"corpus {', '.join(map(str, files))} has no text to learn a vocabulary from")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS + pieces,
            limit_alphabet=limit_alphabet,
            continuing_subword_prefix="##",
            show_progress=show_progress,
        )
        text_lines = (line for line in read_corpus_lines(files) if line.strip())
        with _stdout_to_stderr() if show_progress else contextlib.nullcontext():
            proto._rust.train_from_iterator(text_lines, trainer=trainer, length=n_text_lines)
        learned = proto._rust.get_vocab()
        vocab = sorted(learned, key=learned.__getitem__)
        if vocab[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise BertkitError("internal: trained vocabulary does not start with the special tokens")
        return cls(vocab, lowercase=lowercase)

    # ---------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Read `vocab.txt` and `tokenizer_config.json` (bertkit's or Hugging Face's) from a directory or vocab file.
        A directory without vocab.txt (transformers 5 saves tokenizer.json alone) is read from its tokenizer.json's
        WordPiece vocabulary; settings that tokenizer_config.json leaves out come from tokenizer.json's normalizer.

        The vocabulary must fit the model beside it: more tokens than `config.json`'s `vocab_size` is an error (their
        ids have no embedding). Fewer is Hugging Face's padded embedding table and allowed, except where bertkit wrote
        the directory: it records the vocabulary's size, and a vocab.txt that lost or gained lines since is an error
        (each token after the change would silently get another token's embedding)."""
        path = Path(path)
        if not path.exists():
            raise BertkitError(no_such_path(path))
        vocab_file = path / "vocab.txt" if path.is_dir() else path
        fast_file = vocab_file.parent / "tokenizer.json"
        fast = _read_fast_tokenizer(fast_file)
        if vocab_file.is_file():
            try:
                vocab = vocab_file.read_text(encoding="utf-8").split("\n")
            except UnicodeDecodeError as e:
                raise BertkitError(f"{vocab_file}: not valid UTF-8 at byte {e.start}") from None
            if vocab and vocab[-1] == "":
                vocab.pop()
            vocab = [t.rstrip("\r") for t in vocab]
        elif path.is_dir() and fast.get("vocab") is not None:
            vocab, vocab_file = fast["vocab"], fast_file
        else:
            raise BertkitError(
                f"no vocab.txt in {path} (nor a tokenizer.json with a WordPiece vocabulary): is this a tokenizer or "
                "model directory?"
            )
        cfg_file = vocab_file.parent / "tokenizer_config.json"
        settings = _read_tokenizer_config(cfg_file, fast.get("settings", {}))
        recorded = settings.pop("vocab_size")
        if recorded is not None and recorded != len(vocab):
            raise BertkitError(
                f"{vocab_file} has {len(vocab)} tokens but {cfg_file} records {recorded} ({_OWN_KEY}.vocab_size): "
                "vocab.txt was changed after it was saved, so its ids no longer match the model or data made with "
                f"it; restore the saved vocab.txt (if the change is intended, delete {_OWN_KEY} from {cfg_file.name})"
            )
        model_config = vocab_file.parent / "config.json"
        model_size = _model_vocab_size(model_config)
        if model_size is not None and len(vocab) > model_size:
            raise BertkitError(
                f"{vocab_file} has {len(vocab)} tokens but {model_config} has vocab_size {model_size}: ids "
                f"{model_size} to {len(vocab) - 1} have no embedding; use the vocab.txt saved with this model"
            )
        fast_size = len(fast["vocab"]) if fast.get("vocab") is not None else None
        if fast_size is not None and fast_size != len(vocab):
            raise BertkitError(
                f"{vocab_file} has {len(vocab)} tokens but tokenizer.json beside it has {fast_size}: one of them was "
                "changed or comes from another model, and ids would map to the wrong tokens; restore both from the "
                "same source"
            )
        if model_size is not None and model_size - len(vocab) > _MAX_PADDING:
            print(
                f"warning: {vocab_file} has {len(vocab)} tokens, {model_size - len(vocab)} fewer than {model_config}'s "
                f"vocab_size {model_size}, more than a padded embedding table adds: if lines were lost from "
                "vocab.txt, every token after them gets another token's embedding",
                file=sys.stderr,
            )
        try:
            return cls(vocab, **settings)
        except BertkitError as e:
            raise BertkitError(f"{vocab_file}: {e}; is this a BERT vocab.txt?") from None

    def save_pretrained(self, path: str | Path) -> None:
        """Write `vocab.txt`, `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`, each whole
        or not at all (written beside, then renamed)."""
        path = make_model_directory(path)

        def text(name: str, content: str) -> None:
            atomic_write(path / name, lambda tmp: Path(tmp).write_text(content, encoding="utf-8"))

        text("vocab.txt", "".join(t + "\n" for t in self.vocab))
        atomic_write(path / "tokenizer.json", lambda tmp: self._rust.save(tmp))
        specials = {
            "unk_token": UNK,
            "sep_token": SEP,
            "pad_token": PAD,
            "cls_token": CLS,
            "mask_token": MASK,
        }
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            **specials,
            _OWN_KEY: {"vocab_size": self.vocab_size},  # checked on load: a vocab.txt that lost lines is an error
        }
        text("tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        text("special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
