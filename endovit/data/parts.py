"""One prepared dataset from parts that several machines prepared, each from its own share of the input (the
instances of a SageMaker Processing job; see ``scripts/launch_prepare.py``).

    <out>/parts/<job>/<host>.json     written first by each machine: its host, the job's hosts, its input files
    <out>/parts/<job>/<host>/         that machine's part: an ordinary prepared dataset (plan, shards, manifest)
    <out>/resume/<job>.json           a job that continues an earlier one: the complete parts it reuses, their files
    <out>/endovit_dataset.json        the merge: every part's shards in one manifest, written last

A part is made by ``prepare_frames`` itself, so it is resumable and verified like any prepared dataset. The merge
reads only JSON and object sizes (no shard is downloaded): it refuses a part that is missing or has no manifest,
and a shard whose size differs from what its part recorded; ``load_prepared`` checks each shard's sha256 and rows
when it fetches it. Merging again gives the same manifest (its id is derived from the parts'), so it is idempotent.

A job that failed or was stopped is continued by a new job (``resume_record``): the new job's machines leave out
the files that the earlier job's complete parts prepared, and its merge takes those parts in.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from endovit.data.prepare import PrepareResult, PrepareSettings, prepare_frames
from endovit.data.prepare_inputs import find_inputs
from endovit.data.store import (
    FORMAT,
    MANIFEST,
    PARTS_DIR,
    PLAN,
    SHARDS_DIR,
    filesystem,
    read_manifest,
    shard_records,
    write_manifest,
)
from endovit.data.video import is_video_file
from endovit.errors import DataError, counted
from endovit.io import atomic_write_json

__all__ = ["RESUME_DIR", "prepare_part", "resume_record", "merge_parts"]

RESUME_DIR = "resume"
_CONTINUE = "continue the job with scripts/launch_prepare.py --resume_from_job {job} (it keeps the complete parts)"


def prepare_part(input_dir: str | os.PathLike, parts_dir: str | os.PathLike, settings: PrepareSettings, *,
                 host: str, hosts: Sequence[str], resume: str | os.PathLike | None = None, num_proc: int = 1,
                 progress: bool = True, log: Callable[[str], None] = print) -> PrepareResult | None:
    """Prepare this machine's share (``input_dir``) into ``parts_dir/<host>``, after writing ``<host>.json``,
    leaving out the files a ``resume`` record says earlier parts prepared; a share without frames or videos left
    (more machines than files) is recorded as empty and prepares nothing."""
    if host not in hosts:
        raise DataError(f"host {host!r} is not among the job's hosts {list(hosts)}")
    if not settings.source:  # the share's folder is the machine's, not the dataset's: every part needs one name
        raise DataError("--source: a part needs the dataset's source name (the launcher passes it)")
    root = Path(input_dir)
    frames, videos, _ = find_inputs(root) if root.exists() else ([], [], 0)
    done = set(json.loads(Path(resume).read_text())["inputs"]) if resume else set()
    inputs = sorted(set(p.relative_to(root).as_posix() for p in frames + videos) - done)
    parts = Path(parts_dir)
    atomic_write_json(parts / f"{host}.json", {"host": host, "hosts": list(hosts), "empty": not inputs,
                                               "inputs": inputs})
    if not inputs:
        log(f"{host}: no frames or videos left in this machine's share of the input ({root}); its part is empty")
        return None
    return prepare_frames(root, parts / host, settings, num_proc=num_proc, progress=progress, exclude=done, log=log)


def _read(fs, path: str) -> dict:
    try:
        return json.loads(fs.cat_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); the part was changed after its job wrote it") from None


def _records(fs, root: str) -> dict[str, dict[str, dict]]:
    """job -> host -> the record ``<host>.json`` each machine wrote first."""
    infos: dict[str, dict[str, dict]] = {}
    for path in fs.glob(f"{root}/{PARTS_DIR}/*/*.json"):
        job_name, name = path[len(root) + len(PARTS_DIR) + 2:].split("/")
        infos.setdefault(job_name, {})[name.removesuffix(".json")] = _read(fs, path)
    return infos


def _continued(fs, root: str, job: str) -> list[str]:
    """The earlier jobs' parts that ``job`` continues (its resume record), or none."""
    path = f"{root}/{RESUME_DIR}/{job}.json"
    return _read(fs, path)["continues"] if fs.isfile(path) else []


def _job_parts(fs, root: str, out: str, job: str | None,
               infos: dict[str, dict[str, dict]]) -> tuple[str, list[dict]]:
    """The one job whose parts are under ``root/parts`` (``job``, when given; else the job no other continues) and
    its hosts' records, in its hosts' order; refuses several such jobs and hosts without a record."""
    if job is None and len(infos) > 1:  # a job and the earlier ones it continues are one dataset
        heads = set(infos) - {part.split("/")[0] for name in infos for part in _continued(fs, root, name)}
        job = next(iter(heads)) if len(heads) == 1 else None
    if job is not None and job not in infos:
        raise DataError(f"{out}: no parts of job {job} under {out}/{PARTS_DIR}/{job}/: the job wrote no output (see "
                        "its log: aws sagemaker describe-processing-job), or wrote it elsewhere")
    if not infos:
        raise DataError(f"{out}: no parts under {out}/{PARTS_DIR}/ (<job>/<host>.json); start the Processing job "
                        "with scripts/launch_prepare.py, and merge when it has completed")
    if len(infos) > 1 and job is None:
        raise DataError(f"{out}: parts of several jobs ({', '.join(sorted(infos))}) under {out}/{PARTS_DIR}/; one "
                        "dataset is one job's parts (and those it continues): delete the other jobs' folders, or "
                        "pass --job_name")
    job = job or next(iter(infos))
    hosts = next(iter(infos[job].values()))["hosts"]
    for host in hosts:
        if host not in infos[job]:
            raise DataError(f"{out}: part {job}/{host} is missing ({PARTS_DIR}/{job}/{host}.json): that instance did "
                            f"not finish or its output was not uploaded; {_CONTINUE.format(job=job)}")
    return job, [infos[job][host] for host in hosts]


def _part_manifest(fs, root: str, out: str, part: str) -> dict:
    """A part's manifest, its shards checked against the stored objects' sizes."""
    folder = f"{root}/{PARTS_DIR}/{part}"
    manifest = _read(fs, f"{folder}/{MANIFEST}") if fs.isfile(f"{folder}/{MANIFEST}") else None
    if manifest is None or manifest.get("format") != FORMAT:
        state = "has a plan but no manifest" if fs.isfile(f"{folder}/{PLAN}") else "holds no prepared dataset"
        raise DataError(f"{out}: part {part} is incomplete ({PARTS_DIR}/{part} {state}): that instance stopped "
                        f"before it finished; {_CONTINUE.format(job=part.split('/')[0])}")
    shard_records(manifest, f"{out}/{PARTS_DIR}/{part}")
    stored = {Path(info["name"]).name: info["size"] for info in fs.ls(f"{folder}/{SHARDS_DIR}", detail=True)
              } if fs.isdir(f"{folder}/{SHARDS_DIR}") else {}
    for shard in manifest["shards"]:
        size = stored.get(f"{shard['name']}.arrow")
        if size is None or size != shard.get("bytes", size):
            found = "missing" if size is None else f"{size} bytes, its part says {shard.get('bytes')}"
            raise DataError(f"{out}: shard {shard['name']} of part {part} is {found}; the part's upload is "
                            f"incomplete or was changed: {_CONTINUE.format(job=part.split('/')[0])}")
    return manifest


def merge_parts(out: str | os.PathLike, *, job: str | None = None, storage_options: dict | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Merge the parts under ``out/parts/<job>/`` into ``out``'s manifest (local folder or URL); returns it. The
    manifest is written only when it is new or differs, so merging twice changes nothing."""
    fs, root = filesystem(out, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache()  # listings an earlier call cached (before the job ran, in a launcher) would hide new parts
    records = _records(fs, root)
    job, infos = _job_parts(fs, root, str(out), job, records)
    names = _continued(fs, root, job) + [f"{job}/{info['host']}" for info in infos if not info.get("empty")]
    parts = [(name, _part_manifest(fs, root, str(out), name)) for name in names]
    owner: dict[str, str] = {}
    video_files: dict[str, str] = {}  # stem -> path: one instance sees only its share, so names clash only here
    for name in names:  # ShardedByS3Key shares are disjoint, and a continuing job leaves the kept files out
        for path in records.get(name.split("/")[0], {}).get(name.split("/")[1], {}).get("inputs", []):
            if owner.setdefault(path, name) != name:
                raise DataError(f"{out}: {path} was prepared by two parts ({owner[path]} and {name}); their frames "
                                "would be counted twice: was a job continued with another --input? Prepare into a "
                                "new --out")
            stem = PurePosixPath(path).stem
            if is_video_file(Path(path)) and video_files.setdefault(stem, path) != path:
                raise DataError(f"{out}: {video_files[stem]} and {path} would both be video {stem!r} (a video's rows "
                                "are named by its file name): rename one, or prepare their folders as separate "
                                "datasets")
    if not parts:
        raise DataError(f"{out}: every part of job {job} is empty: its input held no frames or videos")
    first = parts[0][1]
    # frame-only parts record no fps (see prepare_frames' plan), video parts do: compare the rest, and fps where set
    common = {k: v for k, v in first["settings"].items() if k != "fps"}
    fps = {m["settings"]["fps"] for _, m in parts if "fps" in m["settings"]}
    for part, manifest in parts:
        if ({k: v for k, v in manifest["settings"].items() if k != "fps"} != common or len(fps) > 1
                or manifest["source"] != first["source"]):
            raise DataError(f"{out}: part {part} was prepared with other settings or source than {parts[0][0]}; "
                            "the parts are not one job's: run the job again with a new --out")
    videos = Counter()
    for _, manifest in parts:
        videos.update(manifest["videos"])
    merged = {
        "format": FORMAT,
        "id": hashlib.sha256(json.dumps([job] + [m["id"] for _, m in parts]).encode()).hexdigest()[:32],
        "source": first["source"],
        "split": first["split"],
        "settings": {**common, **({"fps": fps.pop()} if fps else {})},
        "frames": sum(m["frames"] for _, m in parts),
        "videos": dict(sorted(videos.items())),
        "skipped": [s for _, m in parts for s in m["skipped"]],
        "shards": [{**shard, "part": part} for part, m in parts for shard in m["shards"]],
        "stats": None,
        "parts": [{"part": part, "id": m["id"], "frames": m["frames"], "shards": len(m["shards"])}
                  for part, m in parts],
    }
    if any("video_count" in m for _, m in parts):
        merged |= {key: sum(m.get(key, 0) for _, m in parts) if key == "video_count"
                   else [e for _, m in parts for e in m.get(key, [])]
                   for key in ("video_count", "video_errors", "not_videos")}
    existing = read_manifest(out, storage_options)
    same = existing is not None and {**existing, "stats": None} == merged  # stats computed later are kept
    if not same:
        write_manifest(out, merged, storage_options)
    empty = sum(1 for info in infos if info.get("empty"))
    earlier = len(parts) - (len(infos) - empty)
    log(f"{out}: {counted(merged['frames'], 'frame')} of {merged['source']} in "
        f"{counted(len(merged['shards']), 'shard')} from {counted(len(parts), 'part')} of job {job}"
        f"{f' ({empty} empty)' if empty else ''}"
        f"{f', {earlier} of them from the jobs it continues' if earlier else ''}; "
        f"{'already merged, nothing written' if same else f'{MANIFEST} written'}")
    return existing if same else merged


def resume_record(out: str | os.PathLike, job: str, *, storage_options: dict | None = None) -> dict:
    """What a new job continuing ``job`` (failed or stopped) reuses: its complete parts and those it continued
    itself (``continues``), and the input files they prepared (``inputs``, which the new job's machines leave out)."""
    fs, root = filesystem(out, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache()  # as in merge_parts
    infos = _records(fs, root)
    if job not in infos:
        raise DataError(f"--resume_from_job {job}: no parts of it under {out}/{PARTS_DIR}/{job}/; check the job name "
                        "and --out")
    continues, inputs = [], set()
    for name in _continued(fs, root, job) + [f"{job}/{host}" for host in sorted(infos[job])]:
        job_name, host = name.split("/")
        record = infos.get(job_name, {}).get(host)
        if record is None or record.get("empty"):
            continue
        try:
            _part_manifest(fs, root, str(out), name)
        except DataError:
            continue  # incomplete or changed: its files are prepared again
        continues.append(name)
        inputs.update(record.get("inputs", []))
    return {"job": job, "continues": continues, "inputs": sorted(inputs)}
