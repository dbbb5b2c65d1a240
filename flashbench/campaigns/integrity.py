"""Integrity campaign: damage the newest step on disk and check that a restore falls back past it.

Each trial copies a prepared checkpoint directory (one per strategy, layout and count
of saved steps, so delta chains of two and three steps occur), damages the newest step
at random and restores with a fresh Checkpointer. The damage is detected when the
restore returns the step before the newest, bit-exact. The damage kinds are bit flips
in a shard or in manifest.json, truncation or deletion of either, and a zero-filled byte
range. The manifest edits keep it valid JSON: a number or a string changed, two entries
swapped, or a key dropped. A deleted manifest leaves the step uncommitted, which also
counts as detected when the older step is restored.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from strategies import Checkpointer
from strategies.format import step_dir
from strategies.storage import MANIFEST

from flashbench.campaigns.states import LAYOUTS, STRATEGIES, same_state, save_steps, states_for_steps

DEFAULT_TRIALS = 1000
STEPS = (10, 20, 30)  # saved steps; a template contains the first two or all three
COLUMNS = (
    "trial", "strategy", "layout", "saved_steps", "corruption", "target_file", "detail", "expected_step",
    "restored_step", "detected",
)
MAX_FLIPS = 8


class Templates:
    """Saved checkpoint directories, one per strategy, layout and step count, built on first use."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.states = states_for_steps(list(STEPS), seed)
        self._built: dict[tuple[str, str, int], Path] = {}

    def get(self, strategy: str, layout: str, count: int) -> Path:
        key = (strategy, layout, count)
        if key not in self._built:
            directory = self.root / f"{strategy}-{layout}-{count}"
            save_steps(directory, strategy, layout, {step: self.states[step] for step in STEPS[:count]})
            self._built[key] = directory
        return self._built[key]


# Damage to one step directory. Each function changes at least one byte of its target,
# or deletes it, and returns (target file name, what was done).


def bitflip_shard(directory: Path, rng: random.Random) -> tuple[str, str]:
    return _flip_bits(_pick_shard(directory, rng), rng)


def bitflip_manifest(directory: Path, rng: random.Random) -> tuple[str, str]:
    return _flip_bits(directory / MANIFEST, rng)


def truncate_shard(directory: Path, rng: random.Random) -> tuple[str, str]:
    return _truncate(_pick_shard(directory, rng), rng)


def truncate_manifest(directory: Path, rng: random.Random) -> tuple[str, str]:
    return _truncate(directory / MANIFEST, rng)


def delete_shard(directory: Path, rng: random.Random) -> tuple[str, str]:
    path = _pick_shard(directory, rng)
    path.unlink()
    return path.name, "deleted"


def delete_manifest(directory: Path, rng: random.Random) -> tuple[str, str]:
    (directory / MANIFEST).unlink()
    return MANIFEST, "deleted"


def zero_range(directory: Path, rng: random.Random) -> tuple[str, str]:
    """Zero-fill a random byte range, with at least one non-zero byte, of a shard or of the manifest."""
    path = rng.choice(_shards(directory) + [directory / MANIFEST])
    data = bytearray(path.read_bytes())
    for _ in range(100):
        start = rng.randrange(len(data))
        stop = rng.randint(start + 1, min(len(data), start + max(1, len(data) // 4)))
        if any(data[start:stop]):
            break
    else:
        start, stop = 0, len(data)  # nearly all zeros: zero the whole file
    data[start:stop] = bytes(stop - start)
    path.write_bytes(data)
    return path.name, f"zeroed bytes {start}:{stop} of {len(data)}"


def json_number_changed(directory: Path, rng: random.Random) -> tuple[str, str]:
    def change(manifest):
        path = rng.choice(_leaf_paths(manifest, lambda value: isinstance(value, int) and not isinstance(value, bool)))
        old = _get(manifest, path)
        new = old + rng.choice((-1, 1, 8, 1 << 20))
        _set(manifest, path, new)
        return f"{_show(path)}: {old} -> {new}"

    return _edit_json(directory, change)


def json_string_changed(directory: Path, rng: random.Random) -> tuple[str, str]:
    def change(manifest):
        path = rng.choice(_leaf_paths(manifest, lambda value: isinstance(value, str)))
        old = _get(manifest, path)
        position = rng.randrange(len(old) + 1)
        new = old[:position] + rng.choice("0aZ_/") + old[position + 1 :]
        if new == old:
            new = old + "x"
        _set(manifest, path, new)
        return f"{_show(path)}: {old!r} -> {new!r}"

    return _edit_json(directory, change)


def json_entries_swapped(directory: Path, rng: random.Random) -> tuple[str, str]:
    """Swap two different entries of a list, or the values of two keys of an object."""

    def change(manifest):
        containers = [path for path in _container_paths(manifest) if _distinct_pair_exists(_get(manifest, path))]
        path = rng.choice(containers)
        container = _get(manifest, path)
        keys = list(range(len(container))) if isinstance(container, list) else list(container)
        while True:
            first, second = rng.sample(keys, 2)
            if container[first] != container[second]:
                break
        container[first], container[second] = container[second], container[first]
        return f"{_show(path)}: swapped entries {first!r} and {second!r}"

    return _edit_json(directory, change)


def json_key_dropped(directory: Path, rng: random.Random) -> tuple[str, str]:
    def change(manifest):
        objects = [path for path in _container_paths(manifest) if isinstance(_get(manifest, path), dict) and _get(manifest, path)]
        path = rng.choice(objects)
        container = _get(manifest, path)
        key = rng.choice(list(container))
        del container[key]
        return f"{_show(path + (key,))}: dropped"

    return _edit_json(directory, change)


CORRUPTIONS = {
    function.__name__: function
    for function in (
        bitflip_shard, bitflip_manifest, truncate_shard, truncate_manifest, delete_shard, delete_manifest, zero_range,
        json_number_changed, json_string_changed, json_entries_swapped, json_key_dropped,
    )
}


def _shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("shard_*.bin"))


def _pick_shard(directory: Path, rng: random.Random) -> Path:
    return rng.choice(_shards(directory))


def _flip_bits(path: Path, rng: random.Random) -> tuple[str, str]:
    """Flip one bit in each of 1 to 8 distinct bytes, drawing again while a manifest still parses to the same JSON."""
    original = path.read_bytes()
    while True:
        data = bytearray(original)
        flips = []
        for position in sorted(rng.sample(range(len(data)), min(len(data), rng.randint(1, MAX_FLIPS)))):
            bit = rng.randrange(8)
            data[position] ^= 1 << bit
            flips.append(f"{position}.{bit}")
        if path.name != MANIFEST or not _same_json(original, bytes(data)):
            break
    path.write_bytes(data)
    return path.name, f"flipped bits (byte.bit) {' '.join(flips)} of {len(data)} bytes"


def _same_json(original: bytes, changed: bytes) -> bool:
    try:
        return json.loads(changed) == json.loads(original)
    except ValueError:  # invalid JSON or invalid UTF-8
        return False


def _truncate(path: Path, rng: random.Random) -> tuple[str, str]:
    size = path.stat().st_size
    length = rng.randrange(size)
    with open(path, "r+b") as handle:
        handle.truncate(length)
    return path.name, f"truncated to {length} of {size} bytes"


def _edit_json(directory: Path, change) -> tuple[str, str]:
    """Apply ``change`` to the parsed manifest and write it back as valid JSON, without resealing its checksum."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_bytes())
    detail = change(manifest)
    path.write_text(json.dumps(manifest, indent=1))
    return MANIFEST, detail


def _leaf_paths(node, accept, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in _leaf_paths(value, accept, path + (key,))]
    if isinstance(node, list):
        return [found for index, value in enumerate(node) for found in _leaf_paths(value, accept, path + (index,))]
    return [path] if accept(node) else []


def _container_paths(node, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        children = node.items()
    elif isinstance(node, list):
        children = enumerate(node)
    else:
        return []
    return [path] + [found for key, value in children for found in _container_paths(value, path + (key,))]


def _distinct_pair_exists(container) -> bool:
    values = list(container.values()) if isinstance(container, dict) else container
    return any(value != values[0] for value in values[1:])


def _get(node, path: tuple):
    for key in path:
        node = node[key]
    return node


def _set(node, path: tuple, value) -> None:
    _get(node, path[:-1])[path[-1]] = value


def _show(path: tuple) -> str:
    return "/".join(str(key) for key in path) or "(top level)"


def check_fallback(directory: Path, expected_step: int, expected_state: dict) -> tuple[str, bool]:
    """Restore the newest usable step of ``directory``.

    Return the restored step (or the error) as text, and whether it is ``expected_step`` with bit-exact values.
    """
    try:
        restored = Checkpointer(directory).restore(target="numpy")
    except Exception as error:  # any failure to restore is a finding of this campaign, recorded in the row
        return f"error: {type(error).__name__}: {error}", False
    return str(restored.step), restored.step == expected_step and same_state(restored.state, expected_state)


def run_trial(trial: int, seed: int, templates: Templates, scratch: Path) -> dict:
    rng = random.Random(seed * 1_000_003 + trial)
    strategy = rng.choice(STRATEGIES)
    layout = rng.choice(list(LAYOUTS))
    count = rng.choice((2, 3))
    corruption = rng.choice(list(CORRUPTIONS))

    directory = scratch / f"trial{trial}"
    shutil.copytree(templates.get(strategy, layout, count), directory)
    target_file, detail = CORRUPTIONS[corruption](directory / step_dir(STEPS[count - 1]), rng)
    expected_step = STEPS[count - 2]
    restored_step, detected = check_fallback(directory, expected_step, templates.states[expected_step])
    shutil.rmtree(directory)
    return {
        "trial": trial, "strategy": strategy, "layout": layout, "saved_steps": count, "corruption": corruption,
        "target_file": target_file, "detail": detail, "expected_step": expected_step, "restored_step": restored_step,
        "detected": detected,
    }


def run(trials: int, seed: int, scratch: Path, progress=None) -> tuple[list[dict], str]:
    """Run ``trials`` corruption trials and return the rows and the summary line."""
    templates = Templates(scratch / "templates", seed)
    rows = []
    for trial in range(trials):
        try:
            rows.append(run_trial(trial, seed, templates, scratch))
        except Exception as error:  # a trial that cannot finish is a failed trial, recorded in its row
            rows.append({"trial": trial, "detected": False, "detail": f"{type(error).__name__}: {error}"})
        if progress:
            progress(trial + 1, f"{rows[-1].get('strategy')} {rows[-1].get('corruption')}")
    detected = sum(row["detected"] for row in rows)
    return rows, f"detected: {detected}/{trials}"
