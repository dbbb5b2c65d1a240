"""FsspecStorage on a local S3 server (moto in server mode) and on fsspec's memory filesystem.

Every S3 test sends real S3 API requests over HTTP to a moto server on 127.0.0.1.
"""

import uuid

import numpy as np
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from strategies import BackgroundSaveError, Checkpointer, CheckpointOptions, ConfigError, StorageError, strategy_names
from strategies.objectstore import COMMITTED, FsspecStorage, open_storage
from strategies.storage import LocalStorage

BUCKET = "flashbench-test"
MiB = 2**20


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """Start a moto S3 server on a free port of 127.0.0.1, create the test bucket, stop it afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        # Credentials and region are set for this module's clients only. No profile, config
        # file or endpoint from the environment may redirect them.
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        missing = tmp_path_factory.mktemp("aws") / "missing"
        patch.setenv("AWS_CONFIG_FILE", str(missing))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            other_client(endpoint).call_s3("create_bucket", Bucket=BUCKET)
            yield endpoint
        finally:
            server.stop()


def storage_options(endpoint: str) -> dict:
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def other_client(endpoint: str) -> s3fs.S3FileSystem:
    """Return an s3fs client with its own listing cache, like another process would have."""
    return s3fs.S3FileSystem(skip_instance_cache=True, **storage_options(endpoint))


@pytest.fixture(scope="module")
def observer(s3_endpoint) -> s3fs.S3FileSystem:
    """An s3fs client that checks and tampers with objects from outside the storage under test."""
    return other_client(s3_endpoint)


@pytest.fixture
def s3_url(s3_endpoint) -> str:
    return f"s3://{BUCKET}/run-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_storage(s3_endpoint, s3_url) -> FsspecStorage:
    return FsspecStorage(s3_url, **storage_options(s3_endpoint))


def state_for(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "model": {"w": rng.standard_normal((64, 48)).astype(np.float32), "b": np.full(48, step, dtype=np.float16)},
        "optimizer": {"count": np.array(step, dtype=np.int64), "m": rng.integers(0, 255, 300, dtype=np.uint8)},
    }


def assert_state_equal(restored, expected) -> None:
    for group, arrays in expected.items():
        for name, array in arrays.items():
            got = np.asarray(restored[group][name])
            assert got.dtype == array.dtype, f"{group}/{name}"
            assert got.shape == array.shape, f"{group}/{name}"
            assert got.tobytes() == array.tobytes(), f"{group}/{name}"


def save_steps(storage, steps, name: str = "sync_raw", **settings) -> Checkpointer:
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name(name, **settings))
    for step in steps:
        checkpointer.save(state_for(step), step=step, metadata={"saved": step})
    checkpointer.wait()
    return checkpointer


def keys_under(observer: s3fs.S3FileSystem, url: str) -> list[str]:
    """Return every object key under ``url``, relative to it, listed fresh by ``observer``."""
    prefix = url.removeprefix("s3://")
    observer.invalidate_cache()
    return sorted(key.removeprefix(prefix + "/") for key in observer.find(prefix))


@pytest.mark.parametrize("name", strategy_names())
def test_roundtrip_every_strategy(s3_endpoint, s3_url, name):
    options = storage_options(s3_endpoint)
    checkpointer = Checkpointer(FsspecStorage(s3_url, **options), CheckpointOptions.from_name(name, keep_last=2))
    for step in (1, 2, 3):
        checkpointer.save(state_for(step), step=step, metadata={"saved": step})
    checkpointer.close()

    reopened = Checkpointer(FsspecStorage(s3_url, **options), CheckpointOptions.from_name(name), read_only=True)
    steps = reopened.steps()
    assert steps[-2:] == [2, 3]
    if "delta" not in name:
        assert steps == [2, 3]  # a delta step also keeps the base it was encoded against
    latest = reopened.restore()
    assert latest.step == 3
    assert latest.metadata == {"saved": 3}
    assert_state_equal(latest.state, state_for(3))
    previous = reopened.restore(2)
    assert_state_equal(previous.state, state_for(2))


def test_commit_writes_marker_object(s3_url, s3_storage, observer):
    save_steps(s3_storage, [1])

    keys = keys_under(observer, s3_url)

    assert "step_00000001/manifest.json" in keys
    assert f"step_00000001/{COMMITTED}" in keys
    assert any(key.startswith("step_00000001/shard_") for key in keys)
    assert observer.cat_file(f"{s3_url}/step_00000001/{COMMITTED}") == b""


@pytest.mark.parametrize("steps", [(9, 10), (10, 9)])
def test_latest_step_numeric(s3_storage, steps):
    checkpointer = save_steps(s3_storage, steps)

    assert checkpointer.steps() == [9, 10]
    assert checkpointer.latest_step() == 10
    assert checkpointer.restore().step == 10


class MarkerWriteFailed(ConnectionError):
    """A crash or a lost connection between the manifest and the marker, injected by a test."""


def fail_marker_writes(monkeypatch, storage: FsspecStorage) -> None:
    real_pipe_file = storage.fs.pipe_file

    def pipe_file(path, value, **kwargs):
        if path.endswith(f"/{COMMITTED}"):
            raise MarkerWriteFailed(f"injected failure writing {path}")
        return real_pipe_file(path, value, **kwargs)

    monkeypatch.setattr(storage.fs, "pipe_file", pipe_file)


def test_missing_marker_not_committed(monkeypatch, s3_endpoint, s3_url, s3_storage, observer):
    checkpointer = save_steps(s3_storage, [1])
    with monkeypatch.context() as patch:
        fail_marker_writes(patch, s3_storage)
        with pytest.raises(StorageError, match="step 2") as caught:
            checkpointer.save(state_for(2), step=2, metadata={"saved": 2})
    assert isinstance(caught.value.__cause__.__cause__, MarkerWriteFailed)

    keys = keys_under(observer, s3_url)
    assert f"step_00000002/{COMMITTED}" not in keys
    assert not any(key.startswith("step_00000002/") for key in keys)  # the failed save removed its objects

    reopened = Checkpointer(FsspecStorage(s3_url, **storage_options(s3_endpoint)))
    assert reopened.steps() == [1]
    assert reopened.latest_step() == 1
    restored = reopened.restore()
    assert restored.step == 1
    assert_state_equal(restored.state, state_for(1))


def test_missing_marker_async_then_resave(monkeypatch, s3_endpoint, s3_url, s3_storage, observer):
    checkpointer = save_steps(s3_storage, [1], name="async_zstd")
    with monkeypatch.context() as patch:
        fail_marker_writes(patch, s3_storage)
        checkpointer.save(state_for(2), step=2)
        with pytest.raises(BackgroundSaveError, match="step 2"):
            checkpointer.wait()
    assert checkpointer.latest_step() == 1

    checkpointer.save(state_for(2), step=2, metadata={"saved": 2})
    checkpointer.close()

    keys = keys_under(observer, s3_url)
    assert f"step_00000002/{COMMITTED}" in keys
    restored = Checkpointer(FsspecStorage(s3_url, **storage_options(s3_endpoint)), read_only=True).restore()
    assert restored.step == 2
    assert_state_equal(restored.state, state_for(2))


def test_retention_deletes_old_prefixes(s3_url, s3_storage, observer):
    checkpointer = save_steps(s3_storage, [1, 2, 3, 4], keep_last=2)

    assert checkpointer.steps() == [3, 4]
    keys = keys_under(observer, s3_url)
    assert {key.split("/")[0] for key in keys} == {"step_00000003", "step_00000004"}
    assert f"step_00000003/{COMMITTED}" in keys
    assert f"step_00000004/{COMMITTED}" in keys


def test_retention_keeps_prefix_sibling(s3_endpoint, s3_url, s3_storage, observer):
    # step_1 is a key prefix of step_10: deleting step_1 must not touch step_10.
    save_steps(s3_storage, [1, 10], run_id="run-a")
    for key in keys_under(observer, s3_url):
        padded, _, name = key.partition("/")
        observer.copy(f"{s3_url}/{key}", f"{s3_url}/step_{int(padded.removeprefix('step_'))}/{name}")
        observer.rm_file(f"{s3_url}/{key}")
    step_10_keys = [key for key in keys_under(observer, s3_url) if key.startswith("step_10/")]

    checkpointer = save_steps(FsspecStorage(s3_url, **storage_options(s3_endpoint)), [11], keep_last=2, run_id="run-a")

    assert checkpointer.steps() == [10, 11]
    keys = keys_under(observer, s3_url)
    assert not [key for key in keys if key.startswith("step_1/")]
    assert [key for key in keys if key.startswith("step_10/")] == step_10_keys
    assert checkpointer.restore(10).step == 10


def test_corrupt_shard_falls_back(s3_endpoint, s3_url, s3_storage, observer):
    save_steps(s3_storage, [1, 2])
    shard = next(key for key in keys_under(observer, s3_url) if key.startswith("step_00000002/shard_"))
    data = bytearray(observer.cat_file(f"{s3_url}/{shard}"))
    data[len(data) // 2] ^= 0xFF
    observer.pipe_file(f"{s3_url}/{shard}", bytes(data))

    restored = Checkpointer(FsspecStorage(s3_url, **storage_options(s3_endpoint)), read_only=True).restore()

    assert restored.step == 1
    assert restored.record.skipped_steps == (2,)
    assert_state_equal(restored.state, state_for(1))


def test_listing_sees_other_client_step(s3_endpoint, s3_url, s3_storage):
    writer = save_steps(s3_storage, [1])
    # A second FsspecStorage with its own s3fs instance, so its listing cache is its own.
    reader_storage = FsspecStorage(s3_url, skip_instance_cache=True, **storage_options(s3_endpoint))
    assert reader_storage.list_dir() == ["step_00000001"]

    writer.save(state_for(2), step=2)

    assert reader_storage.list_dir() == ["step_00000001", "step_00000002"]
    reader = Checkpointer(reader_storage, read_only=True)
    assert reader.steps() == [1, 2]

    writer.save(state_for(3), step=3)

    assert reader.steps() == [1, 2, 3]
    assert reader.restore().step == 3


def test_check_writable_missing_bucket(s3_endpoint):
    url = "s3://flashbench-no-such-bucket/prefix"
    storage = FsspecStorage(url, **storage_options(s3_endpoint))

    with pytest.raises(StorageError) as caught:
        storage.check_writable()
    assert url in str(caught.value)
    assert "bucket" in str(caught.value)
    with pytest.raises(StorageError, match=url):
        Checkpointer(storage)


def test_read_missing_object(s3_storage):
    with pytest.raises(FileNotFoundError):
        s3_storage.read_file("step_00000001/manifest.json")
    with pytest.raises(FileNotFoundError):
        s3_storage.size("step_00000001/manifest.json")
    assert s3_storage.list_dir() == []
    assert not s3_storage.exists("step_00000001")
    assert not s3_storage.is_committed("step_00000001")


def test_write_file_multipart(s3_endpoint, s3_url, observer):
    storage = FsspecStorage(s3_url, default_block_size=5 * MiB, **storage_options(s3_endpoint))
    chunks = [np.full(3 * MiB // 4, part, dtype=np.float32) for part in range(4)]

    written = storage.write_file("big.bin", (memoryview(chunk) for chunk in chunks))

    assert written == 12 * MiB
    assert storage.read_file("big.bin") == b"".join(chunk.tobytes() for chunk in chunks)
    # A multipart upload's ETag ends in "-<part count>", and the ETag of a single PUT has no dash.
    assert observer.info(f"{s3_url}/big.bin")["ETag"].strip('"').endswith("-2")


def test_write_file_failure_leaves_nothing(s3_endpoint, s3_url, observer):
    storage = FsspecStorage(s3_url, default_block_size=5 * MiB, **storage_options(s3_endpoint))

    def chunks():
        yield bytes(6 * MiB)  # past one block, so a part is already uploaded
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        storage.write_file("partial.bin", chunks())

    assert not storage.exists("partial.bin")
    uploads = observer.list_multipart_uploads(BUCKET)
    assert [upload["Key"] for upload in uploads if upload["Key"].endswith("partial.bin")] == []


def test_remove_tree_cut_short_uncommits(monkeypatch, s3_storage):
    checkpointer = save_steps(s3_storage, [1, 2])
    real_rm = s3_storage.fs.rm

    def rm(path, recursive=False, **kwargs):
        if recursive:
            raise ConnectionError(f"injected failure deleting {path}")
        return real_rm(path, recursive=recursive, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(s3_storage.fs, "rm", rm)
        with pytest.raises(StorageError, match="step_00000002"):
            s3_storage.remove_tree("step_00000002")

    assert s3_storage.exists("step_00000002/manifest.json")
    assert not s3_storage.is_committed("step_00000002")
    assert checkpointer.steps() == [1]


def test_remove_tree_missing_prefix(s3_storage):
    s3_storage.remove_tree("step_00000042")

    assert s3_storage.list_dir() == []


def test_memory_filesystem():
    url = f"memory://flashbench-{uuid.uuid4().hex[:12]}"
    storage = FsspecStorage(url)
    try:
        checkpointer = save_steps(storage, [1, 2, 3], name="async_zstd", keep_last=2)

        assert checkpointer.steps() == [2, 3]
        assert storage.is_committed("step_00000003")
        assert storage.exists(f"step_00000003/{COMMITTED}")
        restored = Checkpointer(FsspecStorage(url), read_only=True).restore()
        assert restored.step == 3
        assert_state_equal(restored.state, state_for(3))
    finally:
        storage.fs.rm(url, recursive=True)


def test_file_url(tmp_path):
    storage = FsspecStorage(f"file://{tmp_path}/ckpt")

    save_steps(storage, [1, 2], keep_last=1)

    assert sorted(path.name for path in (tmp_path / "ckpt").iterdir()) == ["step_00000002"]
    assert (tmp_path / "ckpt" / "step_00000002" / COMMITTED).is_file()
    assert Checkpointer(storage, read_only=True).restore().step == 2


def test_open_storage_kinds(tmp_path, s3_endpoint):
    assert isinstance(open_storage(tmp_path / "a"), LocalStorage)
    assert isinstance(open_storage(str(tmp_path / "b")), LocalStorage)
    assert open_storage(f"file://{tmp_path}/c").root == f"{tmp_path}/c"
    assert isinstance(open_storage(f"file://{tmp_path}/c"), LocalStorage)
    object_storage = open_storage(f"s3://{BUCKET}/kinds", **storage_options(s3_endpoint))
    assert isinstance(object_storage, FsspecStorage)
    assert object_storage.root == f"s3://{BUCKET}/kinds"
    assert open_storage(object_storage) is object_storage


def test_open_storage_rejects_options_for_path(tmp_path):
    with pytest.raises(ConfigError, match="storage options"):
        open_storage(tmp_path, key="testing")


def test_root_hides_password():
    storage = FsspecStorage("memory://user:secret@host/prefix")

    assert "secret" not in storage.root
    assert "secret" not in repr(storage)
