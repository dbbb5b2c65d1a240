"""Invalid options, state, metadata and calls raise library errors that name the value."""

import threading

import numpy as np
import pytest

from strategies import (
    BackgroundSaveError,
    CheckpointError,
    Checkpointer,
    CheckpointOptions,
    ConfigError,
    NoCheckpointError,
    StorageError,
)


def state_for(step: int) -> dict:
    return {"w": np.full((4, 4), float(step), dtype=np.float32)}


def test_unknown_strategy_suggests_name():
    with pytest.raises(ConfigError) as raised:
        CheckpointOptions.from_name("async_zstdd")

    assert "'async_zstdd'" in str(raised.value)
    assert "did you mean 'async_zstd'?" in str(raised.value)


def test_unknown_strategy_lists_names():
    with pytest.raises(ConfigError) as raised:
        CheckpointOptions.from_name("parallel")

    assert "'parallel'" in str(raised.value)
    assert "sync_raw, sync_zstd, sync_bytegroup_zstd, sync_delta_zstd, async_raw" in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"keep_last": 0}, "keep_last 0"),
        ({"keep_last": -3}, "keep_last -3"),
        ({"max_in_flight": 0}, "max_in_flight 0"),
        ({"zstd_level": 99}, "zstd_level 99"),
        ({"zstd_level": 0}, "zstd_level 0"),
        ({"zstd_threads": -2}, "zstd_threads -2"),
        ({"codec": "lz4"}, "codec 'lz4'"),
        ({"writer": "later"}, "writer 'later'"),
        ({"layout": "ring"}, "layout 'ring'"),
    ],
    ids=lambda value: str(value),
)
def test_invalid_option_named(settings, expected):
    with pytest.raises(ConfigError) as raised:
        CheckpointOptions(**settings)

    assert expected in str(raised.value)


def test_invalid_option_via_name():
    with pytest.raises(ConfigError) as raised:
        CheckpointOptions.from_name("async_zstd", keep_last=0)

    assert "keep_last 0" in str(raised.value)


@pytest.mark.parametrize(
    "settings",
    [{"keep_last": "2"}, {"zstd_level": 3.5}, {"zstd_level": "high"}],
    ids=["keep_last_str", "zstd_level_float", "zstd_level_word"],
)
def test_option_wrong_type_rejected(settings):
    with pytest.raises(ConfigError):
        CheckpointOptions(codec="zstd", **settings)


@pytest.fixture
def checkpointer(tmp_path):
    with Checkpointer(tmp_path / "ckpt") as opened:
        yield opened


@pytest.mark.parametrize("step", [-1, 1.0, "3", True, None, np.int64(-2)], ids=repr)
def test_invalid_step_named(checkpointer, step):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save(state_for(1), step=step)

    assert f"invalid step {step!r}" in str(raised.value)
    assert checkpointer.steps() == []


def test_python_int_leaf_named(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save({"model": {"count": 5}}, step=1)

    assert "'model/count'" in str(raised.value)
    assert "int" in str(raised.value)


def test_object_array_leaf_named(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save({"names": np.array(["a", None], dtype=object)}, step=1)

    assert "'names'" in str(raised.value)
    assert "object" in str(raised.value)


@pytest.mark.parametrize("array", [np.array(["ab", "c"]), np.array([b"ab"]), np.zeros(2, dtype="V4")], ids=["str", "bytes", "void"])
def test_text_array_rejected_on_save(checkpointer, array):
    with pytest.raises(ConfigError):
        checkpointer.save({"a": array}, step=1)


def test_slash_key_named(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save({"model": {"layer/0": np.zeros(2)}}, step=1)

    assert "'layer/0'" in str(raised.value)
    assert "model" in str(raised.value)


def test_non_string_key_named(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save({"layers": {0: np.zeros(2)}}, step=1)

    assert "invalid state key 0" in str(raised.value)


def test_reserved_key_named(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save({"model": {"__tuple__": np.zeros(2)}}, step=1)

    assert "'__tuple__'" in str(raised.value)


def test_non_json_metadata_named(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save(state_for(1), step=1, metadata={"loss": np.float32(0.5)})

    assert "float32" in str(raised.value)
    assert checkpointer.steps() == []


def test_metadata_not_dict(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.save(state_for(1), step=1, metadata=[1, 2])

    assert "got list" in str(raised.value)


def test_directory_under_file(tmp_path):
    parent = tmp_path / "file"
    parent.write_text("a regular file")
    directory = parent / "ckpt"

    with pytest.raises(StorageError) as raised:
        Checkpointer(directory)

    assert isinstance(raised.value, CheckpointError)
    assert str(directory) in str(raised.value)


def test_directory_is_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("a regular file")

    with pytest.raises(StorageError) as raised:
        Checkpointer(path)

    assert str(path) in str(raised.value)


def test_committed_step_not_overwritten(checkpointer):
    checkpointer.save(state_for(1), step=1)

    with pytest.raises(CheckpointError) as raised:
        checkpointer.save(state_for(2), step=1)

    assert "step 1 is already committed" in str(raised.value)
    assert checkpointer.restore().state["w"].tobytes() == state_for(1)["w"].tobytes()


def test_committed_step_other_instance(tmp_path):
    Checkpointer(tmp_path / "ckpt").save(state_for(1), step=1)
    other = Checkpointer(tmp_path / "ckpt")

    with pytest.raises(CheckpointError) as raised:
        other.save(state_for(2), step=1)

    assert "step 1 is already committed" in str(raised.value)


def test_committed_step_async(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name("async_raw"))
    checkpointer.save(state_for(1), step=1).wait()

    with pytest.raises(CheckpointError) as raised:
        checkpointer.save(state_for(2), step=1)

    assert "step 1 is already committed" in str(raised.value)
    checkpointer.close()
    assert Checkpointer(tmp_path / "ckpt").restore().state["w"].tobytes() == state_for(1)["w"].tobytes()


def test_restore_missing_step_named(checkpointer):
    checkpointer.save(state_for(1), step=1)
    checkpointer.save(state_for(3), step=3)

    with pytest.raises(NoCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert "step 2" in str(raised.value)
    assert "[1, 3]" in str(raised.value)


def test_restore_empty_directory(tmp_path):
    directory = tmp_path / "ckpt"
    checkpointer = Checkpointer(directory)

    with pytest.raises(NoCheckpointError) as raised:
        checkpointer.restore()

    assert str(directory) in str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)


def test_restore_invalid_target(checkpointer):
    checkpointer.save(state_for(1), step=1)

    with pytest.raises(ConfigError) as raised:
        checkpointer.restore(target="torch")

    assert "'torch'" in str(raised.value)


def test_restore_negative_step(checkpointer):
    with pytest.raises(ConfigError) as raised:
        checkpointer.restore(step=-5)

    assert "-5" in str(raised.value)


def test_save_after_close(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.close()

    with pytest.raises(CheckpointError) as raised:
        checkpointer.save(state_for(1), step=1)

    assert "closed" in str(raised.value)
    assert checkpointer.steps() == []


def test_restore_after_close(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(state_for(1), step=1)
    checkpointer.close()

    with pytest.raises(CheckpointError) as raised:
        checkpointer.restore()

    assert "closed" in str(raised.value)


def test_close_twice(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name("async_raw"))
    checkpointer.save(state_for(1), step=1)

    checkpointer.close()
    checkpointer.close()

    assert checkpointer.steps() == [1]


def test_bad_leaf_releases_slot(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name("async_raw", max_in_flight=1))
    with pytest.raises(ConfigError):
        checkpointer.save({"w": 1.5}, step=1)

    # A leaked slot would block this save forever, so it runs on a thread with a deadline.
    saver = threading.Thread(target=checkpointer.save, args=(state_for(2), 2), daemon=True)
    saver.start()
    saver.join(timeout=10)

    assert not saver.is_alive()
    checkpointer.close()
    assert checkpointer.steps() == [2]
