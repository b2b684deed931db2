"""Data layer: records, pair datasets, readers and the benchmark registry."""

from twinnet.data.pairs import PairDataset, text_id
from twinnet.data.augment import RecordAugmenter
from twinnet.data.readers import (parse_label, read_any, read_deepmatcher, read_deepmatcher_splits, read_ditto,
                                  read_pairs, read_sts)
from twinnet.data.records import Record, RecordSerializer, clean_text, is_missing
from twinnet.data.registry import DATASETS, fetch, load_pairs, locate

__all__ = ["DATASETS", "PairDataset", "Record", "RecordAugmenter", "RecordSerializer", "clean_text", "fetch", "is_missing",
           "load_pairs", "locate", "parse_label", "read_any", "read_deepmatcher", "read_deepmatcher_splits",
           "read_ditto", "read_pairs", "read_sts", "text_id"]
