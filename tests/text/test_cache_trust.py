"""The token cache trusts nothing: its key covers every file the data is read from, every file in it is
checked, a full disk is one line with nothing half-written left, and processes building one cache
at once all succeed. The compiled kernel's cache is checked before it is loaded."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from rnn_lightning.errors import InputError
from rnn_lightning.files import atomic_folder
from rnn_lightning.network import cpu_rnn
from rnn_lightning.text import identity, opening, sources, token_cache
from tests.helpers import ROOT, SUBPROCESS_ENV, make_dm, make_reviews, one_line_error, write_splits

WANTED = {"train": "train", "validation": "validation", "test": "test"}


def key(dataset, wanted=WANTED, **kwargs) -> str:
    return identity.fingerprint(str(dataset), wanted, **kwargs)


def hub_layout_gz(root: Path) -> tuple[Path, Path]:
    (root / "data").mkdir(parents=True)
    make_reviews(20, 1).to_csv(root / "data" / "train.csv.gz", index=False)
    make_reviews(10, 2).to_csv(root / "data" / "test.csv.gz", index=False)
    return root, root / "data" / "train.csv.gz"


def readme_mapping(root: Path) -> tuple[Path, Path]:
    root.mkdir()
    make_reviews(20, 1).to_csv(root / "a.csv", index=False)
    make_reviews(20, 2).to_csv(root / "b.csv", index=False)
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {}\n  - split: test\n    path: {}\n---\n"
    (root / "README.md").write_text(card.format("a.csv", "b.csv"))
    return root, root / "README.md"


def linked_file(root: Path) -> tuple[Path, Path]:
    root.mkdir()
    elsewhere = root.parent / "elsewhere"
    write_splits(elsewhere, make_reviews(20, 1), make_reviews(10, 2))
    (root / "train.parquet").symlink_to(elsewhere / "train.parquet")
    (root / "test.parquet").symlink_to(elsewhere / "test.parquet")
    return root, elsewhere / "train.parquet"


def aclimdb(root: Path, splits=("train", "test", "dev")) -> Path:
    for split in splits:
        for label in ("neg", "pos"):
            (root / split / label).mkdir(parents=True)
            (root / split / label / "0_1.txt").write_text(f"{split} {label} great film")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("an unlabelled review")
    return root


@pytest.mark.parametrize("layout", ["hub_layout_gz", "readme_mapping", "linked_file"])
def test_the_cache_key_changes_with_every_file_the_data_is_read_from(tmp_path, layout):
    folder, edited = globals()[layout](tmp_path / "data")
    before = key(folder)
    if edited.name == "README.md":  # the card maps the splits the other way round
        edited.write_text(edited.read_text().replace("a.csv", "X").replace("b.csv", "a.csv").replace("X", "b.csv"))
    elif edited.suffix == ".gz":
        make_reviews(20, 3).to_csv(edited, index=False)
    else:
        make_reviews(20, 3).to_parquet(edited)
    assert key(folder) != before


def test_the_cache_key_covers_every_aclimdb_split_used_and_only_those(tmp_path):
    folder = aclimdb(tmp_path / "aclImdb")
    dev = {**WANTED, "test": "dev"}
    with_unlabelled = sources.splits_wanted(WANTED, unlabelled=True)
    before = {
        name: key(folder, wanted) for name, wanted in (("dev", dev), ("plain", WANTED), ("unsup", with_unlabelled))
    }
    (folder / "dev" / "pos" / "0_1.txt").write_text("changed")
    (folder / "train" / "unsup" / "0_0.txt").write_text("changed too")
    assert key(folder, dev) != before["dev"]
    assert key(folder, with_unlabelled) != before["unsup"]
    assert key(folder, WANTED) == before["plain"]  # neither dev nor the unlabelled reviews are read


def test_a_dangling_link_is_ignored_where_unused_and_one_line_where_read(tmp_path, parquet_dir):
    folder = tmp_path / "data"
    shutil.copytree(parquet_dir, folder)
    (folder / "old.parquet").symlink_to(tmp_path / "gone.parquet")
    (folder / "notes.txt").symlink_to(tmp_path / "gone.txt")
    dm = make_dm(folder, tmp_path)
    dm.prepare_data()  # unused links: no part of the data
    assert token_cache.exists(dm.cache_path)
    (folder / "test.parquet").unlink()
    (folder / "test.parquet").symlink_to(tmp_path / "moved.parquet")
    with pytest.raises(InputError, match=r"^data.dataset: '.*test.parquet' is a link to '.*moved.parquet', which"):
        make_dm(folder, tmp_path).prepare_data()


def test_a_hub_dataset_is_keyed_by_its_revision(monkeypatch):
    import datasets

    revision = ["1111"]
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda *a, **k: types.SimpleNamespace(hash=revision[0]))
    first = key("someone/reviews", config_name="plain")
    revision[0] = "2222"
    second = key("someone/reviews", config_name="plain")
    assert "1111" in first and "2222" in second and "plain" in second


def test_an_altered_meta_json_is_rebuilt_with_a_notice(parquet_dir, tmp_path):
    dm = make_dm(parquet_dir, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    names, fit_ids = dm.class_names, dm.splits["fit"].token_ids().copy()
    meta_file = dm.cache_path / token_cache.META
    del dm
    meta = json.loads(meta_file.read_text())
    meta["class_names"] = meta["class_names"][::-1]  # valid JSON, the digests of the other files untouched
    meta_file.write_text(json.dumps(meta))
    again = make_dm(parquet_dir, tmp_path)
    assert token_cache.read_meta(again.cache_path) is None
    again.prepare_data()
    with pytest.warns(UserWarning, match=r"token cache .* is damaged \(meta.json changed since it was written\)"):
        again.setup("fit")
    assert again.class_names == names and np.array_equal(again.splits["fit"].token_ids(), fit_ids)
    assert json.loads(meta_file.read_text())["class_names"] == names


def no_temporaries(cache: Path) -> bool:
    return not [p for p in cache.rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]


def test_a_disk_too_small_for_the_token_cache_is_one_line_before_writing(cli, tiny_args, tmp_path, monkeypatch):
    real = shutil.disk_usage
    cache = tmp_path / "cache"
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000) if Path(p) == cache else real(p))
    line = one_line_error(cli("fit", *tiny_args, check=False))
    assert line.startswith("error: No space left on device (the token cache needs about ") and "MB free)" in line
    assert f"writing {tmp_path / 'cache'}" in line and "train.parquet" not in line
    assert no_temporaries(tmp_path / "cache") and not list((tmp_path / "cache").glob("*/meta.json"))


def test_a_disk_that_fills_while_writing_the_token_cache_is_one_line_and_leaves_nothing(
    cli, tiny_args, tmp_path, monkeypatch
):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(token_cache, "encode", full)
    line = one_line_error(cli("fit", *tiny_args, check=False))
    assert line.startswith("error: No space left on device (the token cache needs about ")
    assert f"writing {tmp_path / 'cache'}" in line and "train.parquet" not in line
    assert no_temporaries(tmp_path / "cache") and not list((tmp_path / "cache").glob("*/meta.json"))


def test_a_full_cache_folder_while_copying_the_data_blames_the_cache_not_the_data(
    cli, tiny_args, tmp_path, monkeypatch
):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
        yield

    monkeypatch.setattr(opening, "parquet_batches", full)
    line = one_line_error(cli("fit", *tiny_args, check=False))
    assert line.startswith(f"error: data.cache_dir: No space left on device writing {tmp_path / 'cache' / 'arrow'}")
    assert "train.parquet" not in line and no_temporaries(tmp_path / "cache")


def test_a_folder_written_meanwhile_by_another_process_is_kept(tmp_path):
    target = tmp_path / "cache" / "abc"
    with atomic_folder(target) as mine:
        (mine / "ids.npy").write_text("mine")
        with atomic_folder(target) as theirs:  # the other process finishes first
            (theirs / "ids.npy").write_text("theirs")
    assert (target / "ids.npy").read_text() == "theirs"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["abc"]  # no temporary folder left


def copy_of_the_built_kernel(tmp_path: Path) -> Path:
    """The session's compiled loop copied to a build folder of this test's own; its .so file."""
    if not cpu_rnn.available():
        pytest.skip("no C++ compiler")
    built = next(Path(os.environ[cpu_rnn.ENV_DIR]).glob("*/*.so"))
    shutil.copytree(built.parent, tmp_path / built.parent.name)
    return tmp_path / built.parent.name / built.name


def test_a_truncated_compiled_kernel_is_never_loaded(tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    so = copy_of_the_built_kernel(tmp_path)
    assert cpu_rnn._as_recorded(so)
    so.write_bytes(so.read_bytes()[: so.stat().st_size // 3])
    assert not cpu_rnn._as_recorded(so)
    seen = []

    def load(name, sources, build_directory, **kwargs):  # stands in for the compiler: records what it found
        seen.append(sorted(p.name for p in Path(build_directory).iterdir()))
        raise RuntimeError("no compiler in this test")

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setenv(cpu_rnn.ENV_DIR, str(tmp_path))
    cpu_rnn.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="compiled rnn loop is unavailable .*no compiler in this test"):
            assert cpu_rnn.library() is None
    finally:
        cpu_rnn.library.cache_clear()
    assert seen == [[]]  # the damaged build was cleared before load() could map it


@pytest.mark.slow
def test_a_truncated_compiled_kernel_is_rebuilt(tmp_path, monkeypatch):
    so = copy_of_the_built_kernel(tmp_path)
    so.write_bytes(so.read_bytes()[:4096])
    code = "from rnn_lightning.network import cpu_rnn; print('LOADED', cpu_rnn.library() is not None)"
    env = {**SUBPROCESS_ENV, cpu_rnn.ENV_DIR: str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "LOADED True" in proc.stdout, proc.stderr[-2000:]
    assert cpu_rnn._as_recorded(so)


PREPARE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tests.helpers import make_dm
    dm = make_dm(Path(sys.argv[1]), Path(sys.argv[2]), max_len=int(sys.argv[3]))
    {patch}
    dm.prepare_data()
    dm.setup("fit")
    print("CACHE", dm.cache_path, len(dm.splits["fit"]))
    """
)


@pytest.mark.slow
def test_processes_building_one_new_cache_at_once_all_succeed(parquet_dir, tmp_path):
    cmd = [sys.executable, "-c", PREPARE.format(patch=""), str(parquet_dir), str(tmp_path), "12"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert len({out.split("CACHE")[1] for out, _ in outs}) == 1  # the same cache, the same rows
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != "arrow"]
    assert len(caches) == 1 and token_cache.read_meta(caches[0]) is not None
    assert no_temporaries(tmp_path / "cache")


@pytest.mark.slow
def test_a_really_full_disk_while_writing_the_token_cache_is_one_line(parquet_dir, tmp_path):
    """A small tmpfs (root only; skipped elsewhere) fills while the ids are written: no SIGBUS."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        data = write_splits(tmp_path / "data", make_reviews(600, 1), make_reviews(10, 2))
        patch = "from rnn_lightning.text import token_cache; token_cache.bytes_needed = lambda *a: 0"
        code = PREPARE.format(patch=patch).replace('dm.setup("fit")', "").replace("print(", "0 and print(")
        code = "from rnn_lightning.training.failures import one_line\ntry:\n" + textwrap.indent(code, "    ")
        code += "\nexcept OSError as e:\n    print(one_line(e))\n"
        cmd = [sys.executable, "-c", code, str(data), str(mount), "200"]
        proc = subprocess.run(cmd, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]  # -7 is SIGBUS
        assert proc.stdout.startswith("error: No space left on device (the token cache needs about "), proc.stdout
        assert f"writing {mount / 'cache'}" in proc.stdout and no_temporaries(mount)
    finally:
        subprocess.run(["umount", str(mount)])
