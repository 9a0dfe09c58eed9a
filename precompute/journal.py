"""The write journal: what this cache's own runs wrote, recorded as they wrote it.

`OUT/.journal/` (and `OUT/eval/.journal/`) holds small JSON files, each written atomically:

- `run.json`: the content (fingerprint, inputs) and layout of the run that owns the directory,
  written before anything else, so a resumed run can say what changed since;
- `shard-NNNNN.arrow.json`: fingerprint, layout, row count and sha256 of one shard, written
  *after* the shard's bytes are complete but *before* they are renamed into place, so every
  shard that appears in the directory was announced first;
- `tokenizer.json`: the sha256 of each file of `tokenizer/`, likewise written before the rename.

The journal is the proof of ownership and of integrity: a resumed run keeps a shard only when
its sha256 equals the one recorded when it was written (a shard corrupted since is rebuilt, not
re-hashed into a new manifest), the manifest takes its sha256s from here, and `--overwrite`
removes only what the journal or the manifest names.
"""

from __future__ import annotations

from pathlib import Path

from kto.formats.atomic import rename_into_place, temp_path_for, write_json_atomic
from kto.formats.errors import InputError
from kto.formats.files import read_json
from kto.formats.shards import sha256_file, tree_hashes, write_shard

JOURNAL_DIR = ".journal"
RUN = "run.json"
TOKENIZER = "tokenizer.json"


class Journal:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.dir = self.out / JOURNAL_DIR

    def _read(self, name: str) -> dict | None:
        try:
            obj = read_json(self.dir / name)
        except InputError:
            return None  # missing or unreadable (even nested too deeply): nothing is proven by it
        return obj if isinstance(obj, dict) else None

    def _write(self, name: str, obj: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / name, obj)

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> dict | None:
        return self._read(RUN)

    def start(self, fingerprint: str, layout: dict, content: dict) -> None:
        if self.run() != {"fingerprint": fingerprint, "layout": layout, "content": content}:
            self._write(RUN, {"fingerprint": fingerprint, "layout": layout, "content": content})

    # ---- shards ------------------------------------------------------------------------------

    def shard(self, name: str) -> dict | None:
        return self._read(f"{name}.json")

    def shard_names(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {p.name.removesuffix(".json") for p in self.dir.glob("shard-*.arrow.json")}

    def recorded_sha(self, name: str, fingerprint: str, layout: dict) -> str | None:
        """The sha256 this configuration recorded for shard `name`, or None."""
        entry = self.shard(name)
        if entry and entry.get("fingerprint") == fingerprint and entry.get("layout") == layout:
            return entry.get("sha256")
        return None

    def is_done(self, name: str, fingerprint: str, layout: dict) -> bool:
        """The shard on disk is byte for byte the one this configuration recorded."""
        path = self.out / name
        sha = self.recorded_sha(name, fingerprint, layout)
        return sha is not None and path.is_file() and sha256_file(path) == sha

    def write_shard(self, name: str, table, tags: dict, fingerprint: str, layout: dict) -> str:
        """Write a shard: complete bytes under a temp name, record them, then rename into place."""
        path = self.out / name
        staging = temp_path_for(path)
        try:
            sha = write_shard(staging, table, tags)
            self._write(f"{name}.json", {"fingerprint": fingerprint, "layout": layout, "rows": table.num_rows, "sha256": sha})
            rename_into_place(staging, path)
        finally:
            staging.unlink(missing_ok=True)
        return sha

    # ---- tokenizer/ --------------------------------------------------------------------------

    def record_tokenizer(self, folder: Path) -> None:
        self._write(TOKENIZER, {"files": tree_hashes(folder)})

    def owns_tokenizer(self, folder: Path) -> bool:
        """`folder` holds exactly the files, with exactly the bytes, that this cache wrote there."""
        entry = self._read(TOKENIZER)
        return bool(entry) and folder.is_dir() and not folder.is_symlink() and tree_hashes(folder) == entry.get("files")
