"""The power-cut model and campaign: unsynced writes are lost, commits survive."""

import pytest

from flashbench.campaigns.powercut import JournalingStorage, durable_view, run


def test_rename_without_directory_fsync_is_lost(tmp_path):
    ops = [("write", "a.tmp", b"data"), ("fsync", "a.tmp"), ("rename", "a.tmp", "a")]
    durable_view(ops, tmp_path / "view", seed=0)
    assert list((tmp_path / "view").iterdir()) == []


def test_rename_with_directory_fsync_survives(tmp_path):
    ops = [("write", "a.tmp", b"data"), ("fsync", "a.tmp"), ("rename", "a.tmp", "a"), ("fsync_dir", "")]
    durable_view(ops, tmp_path / "view", seed=0)
    assert (tmp_path / "view" / "a").read_bytes() == b"data"
    assert not (tmp_path / "view" / "a.tmp").exists()


def test_write_without_fsync_is_torn(tmp_path):
    data = bytes(range(200))
    ops = [("write", "a", data), ("fsync_dir", "")]
    durable_view(ops, tmp_path / "view", seed=3)
    survived = (tmp_path / "view" / "a").read_bytes()
    assert data.startswith(survived)
    assert len(survived) < len(data)


def test_campaign_short_run(tmp_path):
    rows, summary = run(40, seed=1, scratch=tmp_path)
    assert summary == "no partial checkpoint chosen: 40/40"
    assert all(row["ok"] for row in rows)
    assert {row["strategy"].split("_")[0] for row in rows} == {"sync", "async"}


class NoDirectorySync(JournalingStorage):
    """Skips every directory fsync, so renames and new files may vanish in a power cut."""

    def fsync_dir(self, path):
        pass


class NoFileSync(JournalingStorage):
    """Journals writes but never their fsync, so file contents may be torn."""

    def _write_and_sync(self, target, chunks):
        data = b"".join(bytes(chunk) for chunk in chunks)
        self._record("write", self._relative(target), data)
        target.write_bytes(data)
        return len(data)


@pytest.mark.parametrize("careless", [NoDirectorySync, NoFileSync])
def test_campaign_catches_careless_storage(careless, tmp_path):
    rows, summary = run(40, seed=1, scratch=tmp_path, storage_type=careless)
    assert sum(not row["ok"] for row in rows) > 0, summary
