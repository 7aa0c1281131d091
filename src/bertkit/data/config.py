"""The settings of `bertkit prepare`; light (no torch), so the CLI generates its flags from them at once."""

from __future__ import annotations

from dataclasses import dataclass

from bertkit.options import FRACTION, NON_NEGATIVE, POSITIVE, SEED, SEQ_LENGTH, check_values, option

MANIFEST_FILE = "manifest.json"  # a prepared data directory's description (moved in last: its presence means complete)
# The fewest documents a block holds (unless the split has fewer): its NotNext pairs draw their B from the others.
MIN_BLOCK_DOCUMENTS = 16


@dataclass
class PrepareConfig:
    """Settings of `bertkit prepare`: instance lengths, NSP, static/whole-word masking, eval share, shards."""

    max_seq_length: int = option(128, type=SEQ_LENGTH, help="tokens per instance, [CLS] A [SEP] B [SEP]")
    short_seq_prob: float = option(
        0.1, type=FRACTION,
        help="chance that a document's instances get a shorter target length (a random one from 2 tokens up), as "
        "fine-tuning inputs often are shorter; drawn once per document, as the original draws it",
    )  # fmt: skip
    dupe_factor: int = option(  # >1: that many copies, each with its own fixed mask (static masking, as the original)
        1, type=POSITIVE, help="K copies with fixed masks (static masking)"
    )
    static_masking: bool = option(False, help="one fixed mask per instance (default: dynamic)")
    whole_word_mask: bool = option(False, help="record word starts (jieba for Chinese)")
    nsp: bool = option(True, flag="--no-nsp", help="B is always the real continuation")
    eval_fraction: float = option(
        0.02, type=FRACTION,
        help="share of documents held out for evaluation, 0 to 1 (default %(default)s; 1: an evaluation-only "
        "directory)",
    )  # fmt: skip
    seed: int = option(
        12345,
        type=SEED,
        help="sentence pairing and random B sentences (masks, static ones too, come from pretrain's --seed)",
    )
    workers: int = option(1, type=NON_NEGATIVE, help="processes (0 or 1: this one)")
    block_chars: int = option(
        2_000_000, type=POSITIVE,
        help=f"documents are read in blocks of about this many characters (and at least {MIN_BLOCK_DOCUMENTS} "
        "documents), and a NotNext pair's random B comes from another document of the same block: a larger block "
        "draws B from more of the corpus and holds more in memory (per worker)",
    )  # fmt: skip
    shard_tokens: int = 64_000_000

    def __post_init__(self) -> None:
        check_values(self)
