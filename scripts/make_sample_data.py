"""Write synthetic endoscopy-like frames in the Cholec80 layout, or the demo's videos (the embedded default data).

    python scripts/make_sample_data.py --out data/sample --videos 4 --frames 50
    python scripts/make_sample_data.py --out data/sample/probe --videos 8 --frames 16 --labels
    python scripts/make_sample_data.py --out data/sample --demo
    python scripts/make_sample_data.py --out data/sample/seg --cholecseg8k --frames 6

With ``--labels`` the frames show surgical phases and instruments, and their annotations are written in
Cholec80's format (``phase_annotations/``, ``tool_annotations/``) for ``scripts/evaluate.py``. With
``--cholecseg8k`` the frames and their masks are written in CholecSeg8k's layout and colour coding
(``videoNN/videoNN_SSSSS/frame_K_endo.png`` + ``_watershed_mask.png``, ``_color_mask.png``, ``_mask.png``) for its
17 video numbers, for ``scripts/evaluate.py --label_format cholecseg8k``. ``--demo`` writes what ``make demo``
starts from: labelled videos in Cholec80's release layout (``videos/videoNN.mp4`` at 25 fps + its annotation files;
prepare them with ``scripts/prepare_data.py``) and the CholecSeg8k frames.
"""
from __future__ import annotations

import argparse
import os
import time

from endovit.cli import OneLineParser, exit_script
from endovit.data.synthetic import DEMO_SIZE, write_sample_frames
from endovit.data.synthetic_seg import SEG_DEMO, write_demo_seg_frames, write_seg_frames
from endovit.data.synthetic_video import DEMO_VIDEOS, FPS, write_demo_videos
from endovit.errors import DataError


def main() -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    parser.add_argument("--out", required=True, help="folder to write frames/videoNN/*.png into")
    parser.add_argument("--videos", type=int, default=4, help="number of videos")
    parser.add_argument("--frames", type=int, default=50, help="frames per video")
    parser.add_argument("--first_video", type=int, default=1, help="number of the first video folder")
    parser.add_argument("--height", type=int, default=480, help="frame height (Cholec80: 480)")
    parser.add_argument("--width", type=int, default=854, help="frame width (Cholec80: 854)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same frames and labels")
    parser.add_argument("--labels", action="store_true", help="draw phases and instruments, write their annotations")
    parser.add_argument("--demo", action="store_true",
                        help="the demo's labelled videos under --out: " + ", ".join(
                            f"{name}/ ({videos} videos x {seconds} s from video {first})"
                            for name, (videos, seconds, first) in DEMO_VIDEOS.items())
                        + f" at {DEMO_SIZE[0]}x{DEMO_SIZE[1]}, {FPS} fps; seg/ (CholecSeg8k's frames, "
                        f"{len(SEG_DEMO['videos'])} videos x {SEG_DEMO['frames']} at "
                        f"{SEG_DEMO['size'][0]}x{SEG_DEMO['size'][1]})")
    parser.add_argument("--cholecseg8k", action="store_true",
                        help="frames with segmentation masks in CholecSeg8k's layout, for its 17 video numbers")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1, help="--demo: videos written at a time")
    args = parser.parse_args()
    layout = ["videos", "frames", "first_video", "height", "width", "labels", "cholecseg8k"]
    if args.demo and (given := [f"--{name}" for name in layout if getattr(args, name) != parser.get_default(name)]):
        parser.error(f"--demo sets the data's layout itself; drop {' '.join(given)}")
    if min(args.videos, args.frames, args.height, args.width) <= 0:
        parser.error("--videos, --frames, --height and --width must be positive")
    if args.num_proc <= 0:
        parser.error("--num_proc must be positive")
    start = time.perf_counter()
    if args.demo:
        try:
            folders = write_demo_videos(args.out, seed=args.seed, num_proc=args.num_proc)
        except DataError as err:  # no PyAV
            parser.exit(2, f"error: {err}\n")
        videos = ", ".join(f"{len(paths)} to {args.out}/{name}/videos" for name, paths in folders.items())
        seg = write_demo_seg_frames(f"{args.out}/seg", args.seed)
        print(f"wrote the demo's labelled videos and Cholec80 annotations: {videos}; {len(seg)} CholecSeg8k frames "
              f"to {args.out}/seg, in {time.perf_counter() - start:.1f}s")
        return
    if args.cholecseg8k:
        if args.labels or args.videos != parser.get_default("videos") or args.first_video != 1:
            parser.error("--cholecseg8k writes CholecSeg8k's 17 videos; drop --labels, --videos and --first_video")
        written = write_seg_frames(args.out, frames=args.frames, height=args.height, width=args.width, seed=args.seed)
        print(f"wrote {len(written)} frames with CholecSeg8k masks to {args.out}/videoNN/ in "
              f"{time.perf_counter() - start:.1f}s")
        return
    written = write_sample_frames(args.out, videos=args.videos, frames=args.frames, height=args.height,
                                  width=args.width, seed=args.seed,
                                  first_video=args.first_video, labelled=args.labels)
    labels = f" and Cholec80 annotations to {args.out}/phase_annotations, tool_annotations" if args.labels else ""
    print(f"wrote {len(written)} frames to {args.out}/frames{labels} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    exit_script(main())
