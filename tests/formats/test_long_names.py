"""formats.atomic: a legal name near the filesystem's limit, a name past it, and a symbolic link
as the file to write.

The temp name adds ~30 characters (`.NAME.tmp-PID-THREAD`): a 245-character file name, legal,
failed with an ENAMETOOLONG traceback. A link was replaced by a regular file beside it, leaving
its target stale."""

from __future__ import annotations

import os

import pytest

from kto.formats.atomic import (
    aside_path,
    atomic_dir,
    check_can_create,
    is_temp_name,
    parse_temp_name,
    remove_stale_temps,
    temp_path_for,
    temp_stem,
    write_bytes_atomic,
    write_target,
)
from kto.formats.errors import InputError

LONG = "s" * 245 + ".parquet"  # 253 characters: legal where names may be 255 bytes


def _limit(folder) -> int:
    return os.pathconf(folder, "PC_NAME_MAX")


def test_a_long_legal_name_is_written_and_leaves_no_temp(tmp_path):
    check_can_create(tmp_path / LONG)
    write_bytes_atomic(tmp_path / LONG, b"one")
    write_bytes_atomic(tmp_path / LONG, b"two")  # and replaced
    assert [p.name for p in tmp_path.iterdir()] == [LONG]
    assert (tmp_path / LONG).read_bytes() == b"two"


@pytest.mark.parametrize("name", [LONG, "日本" * 40 + ".parquet", "s" * 255])
def test_temp_and_aside_names_fit_the_limit_and_are_recognised(tmp_path, name):
    """Shortened by bytes (a Japanese character is 3), recognised as ours with the same stem
    for every kind, so `owns` can compare it with temp_stem(NAME)."""
    path = tmp_path / name
    for made, kind in ((temp_path_for(path), "tmp"), (aside_path(path, "old"), "old"), (aside_path(path, "deleted"), "deleted")):
        assert len(os.fsencode(made.name)) <= _limit(tmp_path)
        assert is_temp_name(made.name)
        assert parse_temp_name(made.name) == (temp_stem(name, tmp_path), kind)


def test_short_names_keep_their_temp_names(tmp_path):
    assert temp_stem("shard-00001.arrow", tmp_path) == "shard-00001.arrow"
    assert parse_temp_name(temp_path_for(tmp_path / "m.json").name) == ("m.json", "tmp")


def test_a_stale_shortened_temp_is_cleared_by_its_owner(tmp_path):
    stale = temp_path_for(tmp_path / LONG)
    stale.write_bytes(b"half")
    mine = temp_stem(LONG, tmp_path)
    assert [t.path for t in remove_stale_temps(tmp_path, lambda name, kind: name == mine)] == [stale]
    assert not stale.exists()


def test_a_long_folder_is_replaced(tmp_path):
    for text in ("one", "two"):
        with atomic_dir(tmp_path / LONG) as d:
            (d / "f").write_text(text)
    assert [p.name for p in tmp_path.iterdir()] == [LONG]
    assert (tmp_path / LONG / "f").read_text() == "two"


@pytest.mark.parametrize("check", [True, False])
def test_a_name_past_the_limit_is_one_line_naming_it(tmp_path, check):
    path = tmp_path / ("s" * 300 + ".parquet")
    with pytest.raises(InputError) as err:
        check_can_create(path) if check else write_bytes_atomic(path, b"x")
    assert str(path) in str(err.value) and "name too long" in str(err.value).lower() and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_link_the_user_named_is_written_through_and_stays_a_link(tmp_path):
    """write_target (what kto-inspect score does with --out): the temp file sits beside the
    target and the rename replaces it, not the link."""
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "s.parquet"
    target.write_bytes(b"old")
    link = tmp_path / "link.parquet"
    link.symlink_to(target)
    check_can_create(write_target(link))
    write_bytes_atomic(write_target(link), b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link.parquet"]
    assert [p.name for p in target.parent.iterdir()] == ["s.parquet"]


def test_a_link_kto_did_not_make_is_replaced_not_followed(tmp_path):
    """Seen in a review: with every atomic write following links, a `.verified.json` planted in a
    shared cache as a link to the user's file had kto-train overwrite that file. The files kto
    names itself are replaced where they are: the link goes, its target is untouched."""
    victim = tmp_path / "victim.sh"
    victim.write_text("export IMPORTANT=1\n")
    (tmp_path / "cache").mkdir()
    planted = tmp_path / "cache" / ".verified.json"
    planted.symlink_to(victim)
    check_can_create(planted)
    write_bytes_atomic(planted, b"{}")
    assert victim.read_text() == "export IMPORTANT=1\n"
    assert not planted.is_symlink() and planted.read_bytes() == b"{}"


def test_a_link_loop_is_refused_as_a_loop(tmp_path):
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    with pytest.raises(InputError, match=r"a: a symbolic link loop; give another path"):
        write_target(tmp_path / "a")


def test_a_dangling_link_is_refused_in_one_line(tmp_path):
    link = tmp_path / "link.parquet"
    link.symlink_to(tmp_path / "x" / "s.parquet")
    with pytest.raises(InputError, match=r"link\.parquet: a symbolic link to .*s\.parquet, which does not exist; create") as err:
        write_target(link)
    assert "\n" not in str(err.value)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["link.parquet"]
