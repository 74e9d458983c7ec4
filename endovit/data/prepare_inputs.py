"""What a prepare reads: the frame files and video files under an input folder (or one file), and a Cholec80
split's share of them."""
from __future__ import annotations

from pathlib import Path, PurePath

from endovit.data.frames import is_image_file, list_files, video_name
from endovit.data.splits import split_videos, video_number
from endovit.data.video import VIDEO_EXTENSIONS, is_video_file
from endovit.errors import DataError

__all__ = ["find_inputs", "select_files", "input_name"]


def input_name(root: PurePath, *, is_file: bool = False) -> str:
    """The source name an input gets when none is given: ``Cholec80/frames`` and ``Cholec80/videos`` are named by
    their parent, a video file by its stem, any other folder (or an S3 prefix) by itself."""
    return root.parent.name if root.name in ("frames", "videos") else (root.stem if is_file else root.name)


def find_inputs(root: Path) -> tuple[list[Path], list[Path], int]:
    """Frame files and video files under ``root`` (any nesting, hidden ones skipped; a file: itself), and how
    many other files were passed over (annotations, notes, ...)."""
    if root.is_file():
        return ([], [root], 0) if is_video_file(root) else ([root], [], 0)
    names = list_files(root)  # one walk for both kinds
    videos = [p for p in names if is_video_file(p)]
    frames = [p for p in names if is_image_file(p)]
    return frames, videos, len(names) - len(videos) - len(frames)


def select_files(root: Path, split: str, files: list[Path], videos: list[Path]) -> tuple[list[Path], list[Path]]:
    if not files and not videos:
        raise DataError(f"no image or video files found under {root}; expected frames such as "
                        "frames/videoNN/videoNN_NNNNNN.png (Cholec80), any folder of .png/.jpg files, or video "
                        f"files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    if not split:
        return _one_name_each(root, files, videos)
    base = root if root.is_dir() else root.parent
    names = {f: video_name(f, base) for f in files} | {v: v.stem for v in videos}
    if not any(video_number(v) is not None for v in names.values()):
        found = sorted(set(names.values()))[:5]
        raise DataError(f"{root} is not in the Cholec80 layout needed by --split {split}: expected "
                        f"frames/videoNN/videoNN_NNNNNN.png or videos/videoNN.mp4, found videos {found}")
    wanted = split_videos(split)
    chosen = ([f for f in files if video_number(names[f]) in wanted],
              [v for v in videos if video_number(v.stem) in wanted])
    if not any(chosen):
        present = sorted({n for v in names.values() if (n := video_number(v)) is not None})
        raise DataError(f"Cholec80 split {split} is empty under {root}: it takes videos {sorted(wanted)}, "
                        f"found videos {present}")
    return _one_name_each(root, *chosen)


def _one_name_each(root: Path, files: list[Path], videos: list[Path]) -> tuple[list[Path], list[Path]]:
    """``(files, videos)`` once no two videos share a name: rows are named by a video file's stem and a frame's
    folder, and the probes label and split by that name, so a clash would merge two videos (or the same one, as
    frames and as a file) into one."""
    by_name: dict[str, Path] = {}
    for video in videos:
        if (first := by_name.setdefault(video.stem, video)) is not video:
            raise DataError(f"{first} and {video} would both be video {video.stem!r} (a video's rows are named by its "
                            "file name): rename one, or prepare their folders as separate datasets")
    base = root if root.is_dir() else root.parent
    folders: dict[str, Path] = {}
    for file in files:
        if (first := folders.setdefault(video_name(file, base), file.parent)) != file.parent:
            raise DataError(f"frame folders {first} and {file.parent} would both be video {first.name!r} (frames are "
                            "named by their folder): rename one, or prepare them as separate datasets")
    if clash := sorted(set(folders) & set(by_name)):
        name = clash[0]
        raise DataError(f"video {name!r} is under {root} twice, as frames ({folders[name]}) and as a video file "
                        f"({by_name[name]}): give --input {folders[name].parent} or --input {by_name[name].parent}")
    return files, videos
