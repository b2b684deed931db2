"""Benchmark datasets found by name.

Where data is looked for, in order: ``$TWINNET_DATA_DIR``; ``../shared/data`` beside the current
directory or beside this checkout; the user cache (``$XDG_CACHE_HOME/twinnet/data``), where
``twinnet datasets fetch NAME`` puts verified downloads.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from twinnet.data.pairs import PairDataset
from twinnet.data.readers import read_deepmatcher_splits, read_ditto, read_sts
from twinnet.errors import TwinnetError

_LANGRES = ("https://raw.githubusercontent.com/fxd24/langres/94df55e3acb95bdc08590f4d45481327cde4f506/"
            "src/langres/data/datasets/{folder}/{file}")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    relative_path: str                       # below a data root
    layout: str                              # "deepmatcher", "ditto" (serialised pair lines) or "sts" (graded)
    task: str
    citation: str
    remote_folder: str | None = None         # folder in the pinned public copy, when fetchable
    sha256: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # ditto: the file of each split

    @property
    def marker(self) -> str:
        """The file whose presence marks the dataset's folder."""
        return self.files["train"] if self.layout == "ditto" else _MARKER[self.layout]

    @property
    def fetchable(self) -> bool:
        return self.remote_folder is not None


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo(
        "abt-buy", "Abt-Buy (ER-Magellan, textual products)", "er_deepmatcher_tables/Abt-Buy", "deepmatcher",
        "product matching", "Köpcke, Thor, Rahm, PVLDB 2010; Mudgal et al., SIGMOD 2018", "abt_buy", {
            "tableA.csv": "20b79995258c4ef80bb96b731762a6fe869650cc42dcb2c58994bda91b0d81aa",
            "tableB.csv": "e6ebe54c98fd69c5ad4b8364dde53c323ae872c49cf3c2ad5f7b9acd246e1eb6",
            "test.csv": "fd815442d37368cecc4cd3b5a0af33930ce5b7b353b222b810d8079211e81d9a",
            "train.csv": "efa7ee36e35915aa2e5c8218bb90a94ff11a6cc7a9c4a45cefff1bfc16d64061",
            "valid.csv": "25ac7b6035327c82a9e45c93e02e24dd2fffe7afff779ae9381e5c32f727c3c0"}),
    DatasetInfo(
        "amazon-google", "Amazon-Google (ER-Magellan, structured products)", "er_deepmatcher_tables/Amazon-Google",
        "deepmatcher", "product matching", "Köpcke, Thor, Rahm, PVLDB 2010; Mudgal et al., SIGMOD 2018",
        "amazon_google", {
            "tableA.csv": "04a797511d83af9e27469778081c50397857b199d49e2f83c119390f14301947",
            "tableB.csv": "00c0d19c0dcd014b00d6d341e15e2b3b3caa616b4f6d710d0c9cd2dfc3f4717f",
            "test.csv": "09e376c0c5391bd4a6c6d8efde148c994441b6043ef6b7f9eab2a8772a6fb362",
            "train.csv": "cdc5e88d714e77febc26a81a61c3295a0000baa51d6debf93043f0cbd5193b9f",
            "valid.csv": "4999067ea47fa2ae03e0c4a68fee60cf68728943208fcde46415cb895844dd22"}),
    DatasetInfo(
        "dblp-acm", "DBLP-ACM (ER-Magellan, citations)", "er_deepmatcher_tables/DBLP-ACM", "deepmatcher",
        "citation matching", "Köpcke, Thor, Rahm, PVLDB 2010; Mudgal et al., SIGMOD 2018", "dblp_acm", {
            "tableA.csv": "a83dfac196a4e263f3adac7aaf095c7198254a98fcaed0ec68d59130c74c43a7",
            "tableB.csv": "bd103ffdccdff4d8b9d04c18d90d04110b70b6fc87dec83c4e52e9616c58431a",
            "test.csv": "e49adc4590d24c18b1a9bbd96011d9c745e10432e10e93e050d856a206fac394",
            "train.csv": "ad94b36b178bbf76023d3cee689565fbda1fe01b19d9a3926a51db382f45f0a5",
            "valid.csv": "862f848ed3f3f005ae6c8997ecf571984bd575f6bbd319fc1a2170830a91132b"}),
    DatasetInfo(
        "dblp-scholar", "DBLP-Scholar (ER-Magellan, citations; Scholar table: referenced records only)",
        "er_deepmatcher_tables/DBLP-Scholar", "deepmatcher", "citation matching",
        "Köpcke, Thor, Rahm, PVLDB 2010; Mudgal et al., SIGMOD 2018"),
    DatasetInfo(
        "wdc-computers", "WDC LSPC v2 computers, small training set", "er_deepmatcher_tables/WDC-computers",
        "deepmatcher", "product matching", "Primpeli, Peeters, Bizer, WWW 2019", "wdc_computers", {
            "tableA.csv": "e050b7f6f047e1c53018117a0d259b24b79f04b3fb4673ffb46149dbde01c5da",
            "tableB.csv": "6d88d424c22ba3c823c268ad6d2d8564771fe7d8ccfbf598dec459a99b7661c7",
            "test.csv": "b725369e2ce35a51f21bc6be6ba6d4a2bea81e075529a2ab19aa6bb3fee8e623",
            "train.csv": "537a6245801cece532735890f4197e765221c6eecd7ca6d15abb839d30b25603",
            "valid.csv": "80dae5cff54dccd07f6f566945009bfb73bc39a3526b3c9e93d3baf85fcc1e34"}),
    DatasetInfo(
        "wdc-computers-medium", "WDC LSPC v2 computers, medium training set (Ditto's title-only lines; the same "
        "test pairs as small)", "wdc_lspc_ditto/computers", "ditto", "product matching",
        "Primpeli, Peeters, Bizer, WWW 2019; Li et al., PVLDB 2021 (Ditto)",
        files={"train": "train.txt.medium", "valid": "valid.txt.medium", "test": "test.txt"}),
    DatasetInfo(
        "stsb", "STS Benchmark (graded sentence similarity 0-5; valid = the dev split)", "stsbenchmark", "sts",
        "graded similarity", "Cer et al., SemEval-2017 Task 1"),
]}

# the file that marks a dataset folder as present, per layout; and each split's file
_MARKER = {"deepmatcher": "train.csv", "sts": "sts-train.csv"}
_STS_FILES = {"train": "sts-train.csv", "valid": "sts-dev.csv", "test": "sts-test.csv"}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "twinnet" / "data"


def data_roots() -> list[Path]:
    """Folders searched for benchmark data, most specific first."""
    roots: list[Path] = []
    if os.environ.get("TWINNET_DATA_DIR"):
        roots.append(Path(os.environ["TWINNET_DATA_DIR"]).expanduser())
    # ../shared/data beside the working directory, and beside the checkout (editable installs)
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base.parent / "shared" / "data"
        if candidate not in roots:
            roots.append(candidate)
    roots.append(cache_dir())
    return roots


def info(name: str) -> DatasetInfo:
    key = name.lower()
    if key not in DATASETS:
        raise TwinnetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (twinnet datasets list)")
    return DATASETS[key]


def locate(name: str) -> Path | None:
    """The folder holding dataset ``name``, or None."""
    dataset = info(name)
    for root in data_roots():
        folder = root / dataset.relative_path
        if (folder / dataset.marker).exists():
            return folder
    return None


def path(name: str) -> Path:
    """Like :func:`locate`, but a missing dataset is an error that says how to get it."""
    folder = locate(name)
    if folder is not None:
        return folder
    dataset = info(name)
    how = (f"run `twinnet datasets fetch {dataset.name}` (needs internet)" if dataset.fetchable
           else "download it from its public home")
    raise TwinnetError(
        f"dataset {dataset.name!r} not found; looked for {dataset.relative_path} under "
        f"{', '.join(str(r) for r in data_roots())}. Set TWINNET_DATA_DIR to the folder that holds "
        f"{dataset.relative_path.split('/')[0]}/, or {how}")


def load_pairs(name: str, **options) -> tuple[PairDataset, PairDataset, PairDataset]:
    """``train, valid, test`` of a registered benchmark dataset."""
    if info(name).layout == "sts":
        folder = path(name)
        splits = {split: read_sts(folder / file) for split, file in _STS_FILES.items()}
        for split_name, split in splits.items():
            split.name = f"{name}/{split_name}"
        return splits["train"], splits["valid"], splits["test"]
    if info(name).layout == "ditto":
        folder = path(name)
        splits = {split: read_ditto(folder / file) for split, file in info(name).files.items()}
        # record ids are hashes of the serialised text, so one title is one record across the splits
    else:
        splits = read_deepmatcher_splits(path(name), **options)
    for split_name, split in splits.items():
        split.name = f"{name}/{split_name}"
    return splits["train"], splits["valid"], splits["test"]


def fetch(name: str, *, progress=None) -> Path:
    """Download a dataset into the user cache and verify each file's SHA-256; returns its folder."""
    dataset = info(name)
    if not dataset.fetchable:
        raise TwinnetError(f"dataset {dataset.name!r} has no pinned public copy to fetch; "
                           "place it under TWINNET_DATA_DIR instead")
    target = cache_dir() / dataset.relative_path
    target.mkdir(parents=True, exist_ok=True)
    for file, digest in dataset.sha256.items():
        final = target / file
        if final.exists() and _sha256(final) == digest:
            continue
        url = _LANGRES.format(folder=dataset.remote_folder, file=file)
        tmp = final.with_suffix(final.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                out.write(response.read())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TwinnetError(f"could not download {url}: {exc}") from None
        if _sha256(tmp) != digest:
            tmp.unlink()
            raise TwinnetError(f"checksum mismatch for {url}; the download was discarded")
        os.replace(tmp, final)
        if progress:
            progress(file)
    return target


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()
