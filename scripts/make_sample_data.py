"""Write synthetic endoscopy-like frames in the Cholec80 layout (the embedded default data).

    python scripts/make_sample_data.py --out data/sample --videos 4 --frames 50
    python scripts/make_sample_data.py --out data/sample/probe --videos 8 --frames 16 --labels
    python scripts/make_sample_data.py --out data/sample --demo

With ``--labels`` the frames show surgical phases and instruments, and their annotations are written in
Cholec80's format (``phase_annotations/``, ``tool_annotations/``) for ``scripts/evaluate.py``.
"""
from __future__ import annotations

import argparse
import time

from endovit.cli import OneLineParser
from endovit.data.synthetic import DEMO_FRAMES, DEMO_SIZE, write_demo_frames, write_sample_frames


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
                        help="the demo's labelled frames under --out: " + ", ".join(
                            f"{name}/ ({videos} videos x {frames} from video {first})"
                            for name, (videos, frames, first) in DEMO_FRAMES.items())
                        + f" at {DEMO_SIZE[0]}x{DEMO_SIZE[1]}")
    args = parser.parse_args()
    layout = ["videos", "frames", "first_video", "height", "width", "labels"]
    if args.demo and (given := [f"--{name}" for name in layout if getattr(args, name) != parser.get_default(name)]):
        parser.error(f"--demo sets the frames' layout itself; drop {' '.join(given)}")
    if min(args.videos, args.frames, args.height, args.width) <= 0:
        parser.error("--videos, --frames, --height and --width must be positive")
    start = time.perf_counter()
    if args.demo:
        folders = write_demo_frames(args.out, args.seed)
        counts = ", ".join(f"{len(paths)} to {args.out}/{name}" for name, paths in folders.items())
        print(f"wrote the demo's labelled frames: {counts}, in {time.perf_counter() - start:.1f}s")
        return
    written = write_sample_frames(args.out, args.videos, args.frames, args.height, args.width, args.seed,
                                  args.first_video, args.labels)
    labels = f" and Cholec80 annotations to {args.out}/phase_annotations, tool_annotations" if args.labels else ""
    print(f"wrote {len(written)} frames to {args.out}/frames{labels} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
