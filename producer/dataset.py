"""Scan a folder of angiography frames (and their ground truth) into frames to enqueue plus issues.

Nothing a user's data can do raises here: an unreadable image or unusable ground truth becomes a
`Frame.error` (the job is recorded as failed with that reason, so nothing is lost silently) and an
`Issue` for the table shown before anything is enqueued.

Ground truth per image, first hit wins; the others become one info issue "also found X, used Y":

1. what `gt` names, since it was asked for explicitly: a folder holding `<stem>_mask.png`,
   `<stem>.png` or LabelMe `<stem>.json` (in the image's relative folder, or flat), or one
   annotation file (training list, COCO or LabelMe; the flavour is read from the content);
2. `<stem>_mask.png` beside the image;
3. LabelMe `<stem>.json` beside the image;
4. `annotations.json` at the dataset root (training list or COCO).

The first source is used even when it turns out unusable (wrong size, bad polygons): the frame then
fails with the reason rather than quietly falling back to another file.

Polygons become masks only through `producer.rasterize.rasterize_polygons`. File names in issues,
errors and `gt_source` are relative to the dataset root where the file lies under it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from sa2va_queue.producer.annotations import ImageAnnotation, Issue, detect_flavour, fit_to_image, load_annotations, read_json
from sa2va_queue.producer.rasterize import rasterize_polygons
from sa2va_queue.producer.split import read_split
from sa2va_queue.producer.entries import entry_problem, resolves_under
from sa2va_queue.core.names import escape_unprintable, printable
from sa2va_queue.core.exceptions import GroundTruthMismatch, ImageDecodeError, ImageTooLarge, InputError
from sa2va_queue.core.imaging import (
    IMAGE_SUFFIXES,
    decode_image,
    decode_mask,
    encode_png,
    frame_count,
    probe_image,
    sha256,
)
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.producer.frame import DICOM_SUFFIXES, Frame, frame_name

MASK_SUFFIX = "_mask.png"
ROOT_ANNOTATIONS = "annotations.json"
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass
class ScanResult:
    frames: list[Frame]
    issues: list[Issue]


@dataclass
class _Source:
    """Ground truth found for one image: a mask file, polygons, or a file that is unusable."""

    kind: str  # where it was found, for "also found" messages
    shown: str  # the file, as shown to users
    mask_path: Path | None = None
    annotation: ImageAnnotation | None = None
    broken: str | None = None


# a candidate is (kind, shown file, resolve); resolve reads the file only if it is the one used
_Candidate = tuple[str, str, Callable[[], "_Source | None"]]


def scan_dataset(root: Path, *, gt: Path | None = None, split: Path | None = None) -> ScanResult:
    """Every frame under `root` at once (tests, small data); `DatasetScan` streams them."""
    scan = DatasetScan(root, gt=gt, split=split)
    frames = list(scan.frames())
    return ScanResult(frames=frames, issues=scan.issues)


class DatasetScan:
    """Frames under `root` (a folder, recursive, or one image file) in name order, read a window
    at a time by a few threads, so 20,000 frames never sit in memory together. `total` is known
    before any file is read; `issues` fills as frames are read and is complete once `finish()` ran
    (at the end of `frames()` unless told otherwise).

    Raises InputError only when `root`, `gt` or `split` themselves do not exist.
    """

    WINDOW = 64

    def __init__(self, root: Path, *, gt: Path | None = None, split: Path | None = None,
                 read_threads: int = 4, dicom_frames: str = "all", pseudonymizer: Pseudonymizer | None = None) -> None:
        root = Path(root)
        gt = Path(gt) if gt is not None else None
        for what, path in (("dataset", root), ("--gt", gt), ("--split", split)):
            if path is not None and not Path(path).exists():
                raise InputError(f"{path}: {what} path does not exist; check the path")
        self.root, self.read_threads, self.dicom_frames = root, read_threads, dicom_frames
        self._base = root.parent if root.is_file() else root
        base = root.parent if root.is_file() else root
        self._scan = _Scan(base, gt)
        self._finished = False
        self.issues = self._scan.issues
        self._all = {path.relative_to(base).as_posix(): path for path in _image_files(root, gt)}
        self._wanted = sorted(self._all)
        if split is not None:
            # a split lists raw names (the .PHI.txt files) or pseudonymised ones (the shareable files)
            by_pseudonym = {pseudonymizer.name(n): n for n in self._all} if pseudonymizer is not None else {}
            wanted = set()
            for name in read_split(Path(split)):
                raw = name if name in self._all else by_pseudonym.get(name)
                if raw is None:
                    self.issues.append(Issue("error", name, f"listed in {split} but not found under {base}",
                                             "restore the file, or re-create the split from the files at hand"))
                else:
                    wanted.add(raw)
            self._wanted = sorted(wanted)

    @property
    def total(self) -> int:
        return len(self._wanted)

    def frames(self, finish: bool = True) -> Iterator[Frame]:
        """The frames in name order. `finish=False`: the end-of-scan notes (`finish()`) are left
        to the caller, e.g. until the last frame has been sent, since they may parse a large root
        annotations.json (seconds under the interpreter lock) that no frame needed."""
        first_of: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=self.read_threads, thread_name_prefix="scan") as pool:
            for start in range(0, len(self._wanted), self.WINDOW):
                names = self._wanted[start:start + self.WINDOW]
                for frame, digest in (item for items in pool.map(self._load, names) for item in items):
                    if digest is not None:  # empty files are errors of their own, not duplicates
                        if digest in first_of:
                            self.issues.append(Issue("warning", frame.name, f"duplicate of {first_of[digest]}; "
                                                     "not enqueued twice", "delete one copy if they were meant to differ"))
                            continue
                        first_of[digest] = frame.name
                    yield frame
        if finish:
            self.finish()

    def finish(self) -> None:
        """The notes that need the whole scan: "also found", annotations naming no image, stray files."""
        if not self._finished:
            self._finished = True
            self._scan.report_leftovers(self.root, self._all)

    def _load(self, name: str) -> list[tuple[Frame, str | None]]:
        """The frames of one file: one, or one per frame of a DICOM cine or a multi-page TIFF."""
        path = self._all[name]
        if path.suffix.lower() in DICOM_SUFFIXES:
            from sa2va_queue.producer.dicom import scan_dicom_file  # pydicom only when there is DICOM

            frames = scan_dicom_file(path, self._base, self.dicom_frames)
            for f in frames:
                if f.error is not None:
                    self.issues.append(Issue("error", f.name, _strip_prefix(f.error, f.name),
                                             "replace it with an intact copy; the frame is recorded as failed"))
            return [(f, sha256(f.data) if f.data else None) for f in frames]
        frame = _read_frame(name, path, self.issues)
        if frame.error is None and frame.media_type == "image/tiff":
            pages = _pages(frame, self.issues)
            if pages is not None:
                return [(p, sha256(p.data) if p.data else None) for p in pages]
        if frame.error is None:
            try:
                self._scan.attach_ground_truth(frame)
            except Exception as exc:  # e.g. a folder of ground truth we may not list: this frame fails alone
                frame.error = f"{name}: cannot read its ground truth ({type(exc).__name__}: {exc})"
                self.issues.append(Issue("error", name, f"cannot read its ground truth ({type(exc).__name__})",
                                         "check the permissions of the ground-truth files"))
        return [(frame, sha256(frame.data) if frame.data else None)]


def _pages(frame: Frame, issues: list[Issue]) -> list[Frame] | None:
    """One frame per page of a multi-page TIFF (lossless PNG each), None for a single page. Never
    a silent cut: every page becomes a job. Ground truth beside a multi-page file is not used."""
    try:
        count = frame_count(frame.data, frame.name)
    except InputError as exc:
        frame.error = str(exc)
        issues.append(Issue("error", frame.name, _strip_prefix(str(exc), frame.name), "replace it with an intact copy"))
        return [frame]
    if count <= 1:
        return None
    issues.append(Issue("info", frame.name, f"{count} pages: one job per page", "nothing"))
    out = []
    for k in range(count):
        page = Frame(frame_name(frame.name, k + 1), frame.path, b"", None, None, None, None, None, None, None,
                     meta={"page": k + 1, "pages": count})
        try:
            rgb = decode_image(frame.data, frame.name, frame=k)
            grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all())
            pixels = rgb[..., 0] if grey else rgb
            page.data = encode_png(pixels)
            page.height, page.width = pixels.shape[:2]
            page.mode, page.media_type = ("L" if grey else "RGB"), "image/png"
        except InputError as exc:
            page.error = f"{page.name}: {_strip_prefix(str(exc), frame.name)}"
        out.append(page)
    return out


def list_images(root: Path, gt: Path | None = None) -> list[str]:
    """Sorted frame names (relative to `root`, POSIX) that `scan_dataset` would consider, files unread."""
    root = Path(root)
    base = root.parent if root.is_file() else root
    return sorted(path.relative_to(base).as_posix() for path in _image_files(root, Path(gt) if gt else None))


def issues_table(issues: list[Issue]) -> Table:
    """Rich table (severity, file, problem, what to do): errors first, then warnings, then info."""
    table = Table(title=f"{len(issues)} issue(s) found")
    table.add_column("severity", no_wrap=True)
    table.add_column("file", overflow="fold")
    table.add_column("problem", overflow="fold")
    table.add_column("what to do", overflow="fold")
    style = {"error": "bold red", "warning": "yellow", "info": "dim"}
    for issue in sorted(issues, key=lambda i: _SEVERITY_ORDER.get(i.severity, 3)):
        severity = f"[{style[issue.severity]}]{issue.severity}[/]" if issue.severity in style else printable(issue.severity)
        # every cell is text from the user's files: `[/` in a path must not be read as markup
        table.add_row(severity, printable(issue.file), printable(issue.message), printable(issue.action))
    return table


class _Scan:
    """One scan's state: annotation files read once, which source won where, the issues."""

    def __init__(self, base: Path, gt: Path | None) -> None:
        self.base, self.gt = base, gt
        self.issues: list[Issue] = []
        self._loaded: dict[Path, tuple[str | None, list[ImageAnnotation], str | None]] = {}
        self._also: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        self._json_for_images: set[Path] = set()
        self.gt_list = self._annotation_list(gt, "the --gt file") if gt is not None and gt.is_file() else None
        root_file = base / ROOT_ANNOTATIONS
        self._root_file = root_file if root_file.is_file() and root_file != gt else None
        self._root_list: _AnnotationList | None = None
        # frames whose ground truth came from a source before the root file: (name, kind, shown used)
        self._root_pending: list[tuple[str, str, str]] = []

    @property
    def root_list(self) -> _AnnotationList | None:
        """The root annotations.json, parsed when first needed: a frame without a mask or LabelMe
        file of its own, or the leftovers report. A large training list takes seconds to parse under
        the interpreter lock; when every frame has its own mask that happens after the last frame."""
        if self._root_file is not None and self._root_list is None:
            self._root_list = self._annotation_list(self._root_file, f"{ROOT_ANNOTATIONS} at the dataset root")
        return self._root_list

    def show(self, path: Path | str) -> str:
        try:
            return Path(path).relative_to(self.base).as_posix()
        except ValueError:
            return str(path)

    def attach_ground_truth(self, frame: Frame) -> None:
        used: _Source | None = None
        for kind, shown, resolve in self._candidates(frame):
            if used is None:
                used = resolve()  # None: not a LabelMe file after all; the next candidate may serve
            elif shown != used.shown:
                self._also[(used.kind, kind)].append((shown, used.shown))
        if used is None and self.root_list is not None:
            for kind, shown, resolve in self.root_list.lookup(frame.name, self):
                used = used or resolve()
        elif used is not None and self._root_file is not None:
            self._root_pending.append((frame.name, used.kind, used.shown))  # "also found" at the end
        if used is None:
            return
        frame.gt_source = used.shown
        if used.broken:
            frame.error = (f"{used.shown}: ground truth of {frame.name} is unusable ({used.broken}); fix that file, "
                           "or move it away to segment the frame without ground truth")
        elif used.mask_path is not None:
            try:
                data = used.mask_path.read_bytes()
                frame.gt_mask = decode_mask(data, used.shown, shape=(frame.height, frame.width))
                frame.gt_mask_png = data if data[:8] == b"\x89PNG\r\n\x1a\n" else None
            except (GroundTruthMismatch, ImageDecodeError, OSError) as exc:
                frame.error = str(exc)
                self.issues.append(Issue("error", used.shown, _strip_prefix(str(exc), used.shown),
                                         "give a mask of the image's size; the frame is recorded as failed"))
        else:
            self._rasterize(frame, used)

    def _rasterize(self, frame: Frame, used: _Source) -> None:
        ann = used.annotation
        assert ann is not None and frame.width is not None and frame.height is not None
        if ann.errors:
            frame.error = (f"{used.shown}: ground truth of {frame.name} is unusable ({'; '.join(ann.errors)}); "
                           "fix the annotation, or move it away to segment the frame without ground truth")
            return
        polygons, fit_issues = fit_to_image(ann, frame.width, frame.height)
        self._record(fit_issues)
        errors = [i.message for i in fit_issues if i.severity == "error"]
        if errors:
            frame.error = (f"{used.shown}: {errors[0]}; fix the annotation, or move it away to segment the frame "
                           "without ground truth")
            return
        if not polygons:
            self.issues.append(Issue("warning", used.shown, f"{ann.image}: no usable polygon, so the ground truth "
                                     "is an empty mask", "add the vessel polygons or remove the annotation"))
        frame.gt_mask = rasterize_polygons(polygons, (frame.height, frame.width))

    def report_leftovers(self, root: Path, all_images: dict[str, Path]) -> None:
        """'Also found' summaries, annotations naming images that do not exist, stray masks/JSON."""
        # in name order: frames attach their ground truth in the read threads, in any order
        for name, used_kind, used_shown in sorted(self._root_pending) if self.root_list is not None else []:
            for kind, shown, _ in self.root_list.lookup(name, self):
                if shown != used_shown:
                    self._also[(used_kind, kind)].append((shown, used_shown))
        self._root_pending = []
        for (used_kind, other_kind), pairs in self._also.items():
            other, used = pairs[0]
            more = f" (and the same for {len(pairs) - 1} more frame(s))" if len(pairs) > 1 else ""
            self.issues.append(Issue("info", other, f"also found {other}, used {used}{more}",
                                     f"nothing: {used_kind} comes before {other_kind}; remove one to silence this"))
        basenames = {Path(n).name for n in all_images}
        for ann_list in (self.gt_list, self.root_list):
            for ann in ann_list.unmatched(all_images, basenames) if ann_list else []:
                self.issues.append(Issue("warning", self.show(ann.source), f"annotation for {ann.image}, but no "
                                         "such image in the dataset; ignored", "fix the image path or add the image"))
        if not root.is_dir():
            return
        stems = {(p.parent, p.stem) for p in all_images.values()}
        masks = _gt_subfolder(root, self.gt)
        for path in sorted(root.rglob("*")):
            if _hidden(path, root) or (masks is not None and resolves_under(path, masks)):
                continue
            image_stem = path.name[: -len(MASK_SUFFIX)]
            if path.name.lower().endswith(MASK_SUFFIX) and (path.parent, image_stem) not in stems:
                self.issues.append(Issue("warning", self.show(path), "mask without an image of the same stem; "
                                         "ignored", "add the image or remove the mask"))
            elif (path.suffix.lower() == ".json" and path not in (self.base / ROOT_ANNOTATIONS, self.gt)
                  and (path.parent, path.stem) not in stems and path not in self._json_for_images):
                self._report_stray_json(path)

    # -- where ground truth may be ----------------------------------------------------------------

    def _candidates(self, frame: Frame) -> list[_Candidate]:
        found: list[_Candidate] = []
        stem = frame.path.stem
        if self.gt is not None and self.gt.is_dir():
            for folder in dict.fromkeys([self.gt / Path(frame.name).parent, self.gt]):
                for mask in (folder / f"{stem}{MASK_SUFFIX}", folder / f"{stem}.png"):
                    if mask.is_file() and mask != frame.path:
                        found.append(self._mask(mask, "a mask in the --gt folder"))
                if (folder / f"{stem}.json").is_file():
                    found.append(self._labelme(folder / f"{stem}.json", "LabelMe JSON in the --gt folder"))
        if self.gt_list is not None:
            found.extend(self.gt_list.lookup(frame.name, self))
        beside = frame.path.parent / f"{stem}{MASK_SUFFIX}"
        if beside.is_file() and beside != frame.path:
            found.append(self._mask(beside, "<stem>_mask.png beside the image"))
        if (frame.path.parent / f"{stem}.json").is_file():
            found.append(self._labelme(frame.path.parent / f"{stem}.json", "LabelMe <stem>.json beside the image"))
        return found  # the root annotations.json last: attach_ground_truth asks it when needed

    def _mask(self, path: Path, kind: str) -> _Candidate:
        shown = self.show(path)
        return kind, shown, lambda: _Source(kind, shown, mask_path=path)

    def _labelme(self, path: Path, kind: str) -> _Candidate:
        self._json_for_images.add(path)
        shown = self.show(path)

        def resolve() -> _Source | None:
            flavour, anns, broken = self._load(path)
            if broken:
                return _Source(kind, shown, broken=broken)
            if flavour != "labelme":
                self.issues.append(Issue("info", shown, "has an image's name but is not a LabelMe file; not used "
                                         "as ground truth", "nothing, unless it was meant as the annotation"))
                return None
            return _Source(kind, shown, annotation=anns[0])

        return kind, shown, resolve

    def _annotation_list(self, path: Path, kind: str) -> _AnnotationList:
        flavour, anns, broken = self._load(path)
        if flavour == "labelme" and anns:  # one LabelMe file as --gt annotates the image of its stem
            anns[0].image = path.stem + (Path(anns[0].image).suffix or ".png")
        return _AnnotationList(path, kind, anns, broken, explicit=path == self.gt)

    def _load(self, path: Path) -> tuple[str | None, list[ImageAnnotation], str | None]:
        """(flavour, annotations, why unusable) of a JSON file, read once; its issues recorded once."""
        if path not in self._loaded:
            flavour, anns, issues = load_annotations(path)
            self._record(i for i in issues if flavour is not None or i.severity != "info")
            broken = next((i.message for i in issues if flavour is None and i.severity == "error"), None)
            self._loaded[path] = (flavour, anns, broken)
        return self._loaded[path]

    def _record(self, issues: Iterable[Issue]) -> None:
        for issue in issues:
            self.issues.append(Issue(issue.severity, self.show(issue.file), issue.message, issue.action))

    def _report_stray_json(self, path: Path) -> None:
        obj, issues = read_json(path)
        if obj is None:
            self._record(issues)
            return
        flavour = detect_flavour(obj)
        if flavour == "labelme":
            self.issues.append(Issue("warning", self.show(path), f"LabelMe annotation for {obj.get('imagePath')}, "
                                     f"but no image {path.stem}.* beside it; ignored",
                                     "add the image or rename the file"))
        elif flavour is not None:
            self.issues.append(Issue("info", self.show(path), f"{flavour} annotation file not used (only "
                                     f"{ROOT_ANNOTATIONS} at the root is read)", "pass it with --gt to use it"))


class _AnnotationList:
    """A multi-image annotation file indexed by image path, with a unique-basename fallback."""

    def __init__(self, path: Path, kind: str, anns: list[ImageAnnotation], broken: str | None,
                 explicit: bool) -> None:
        self.path, self.kind, self.broken, self.explicit = path, kind, broken, explicit
        self.exact = {_strip_dot(ann.image): ann for ann in anns}
        by_base: dict[str, list[ImageAnnotation]] = defaultdict(list)
        for ann in anns:
            by_base[Path(ann.image).name].append(ann)
        self.by_base = {name: found[0] for name, found in by_base.items() if len(found) == 1}
        self.matched: set[int] = set()

    def lookup(self, name: str, scan: _Scan) -> list[_Candidate]:
        shown = scan.show(self.path)
        if self.broken:
            # a --gt file that cannot be read fails the frames (ground truth was asked for); a broken
            # root annotations.json is only the error issue already recorded
            source = _Source(self.kind, shown, broken=self.broken)
            return [(self.kind, shown, lambda: source)] if self.explicit else []
        ann = self.exact.get(name) or self.by_base.get(Path(name).name)
        if ann is None:
            return []
        self.matched.add(id(ann))
        source = _Source(self.kind, shown, annotation=ann)
        return [(self.kind, shown, lambda: source)]

    def unmatched(self, all_images: dict[str, Path], basenames: set[str]) -> list[ImageAnnotation]:
        return [ann for key, ann in self.exact.items() if id(ann) not in self.matched
                and key not in all_images and Path(key).name not in basenames]


def _read_frame(name: str, path: Path, issues: list[Issue]) -> Frame:
    """The frame's bytes and header, or the frame with `error` set and an error issue; never raises."""
    frame = Frame(escape_unprintable(name), path, b"", None, None, None, None, None, None, None)
    refused = entry_problem(name, path)  # not UTF-8, name too long, links, FIFOs: before any read
    if refused is not None:
        return _refuse(frame, issues, *refused)
    try:
        frame.data = path.read_bytes()
    except OSError as exc:
        return _refuse(frame, issues, f"cannot read the file ({exc.strerror or exc})", "check its permissions")
    try:
        frame.width, frame.height, frame.mode, frame.media_type = probe_image(frame.data, name)
    except ImageTooLarge as exc:  # "too large: N px, limit M; downscale ..."
        problem, _, action = _strip_prefix(str(exc), name).partition("; ")
        return _refuse(frame, issues, problem, action)
    except ImageDecodeError as exc:
        return _refuse(frame, issues, _strip_prefix(str(exc), name), "replace it with an intact copy")
    except Exception as exc:  # noqa: BLE001 -- a safety net: never let one file stop the scan
        return _refuse(frame, issues, f"cannot read the image ({type(exc).__name__}: {exc})",
                       "replace it with an intact copy")
    return frame


def _refuse(frame: Frame, issues: list[Issue], problem: str, action: str) -> Frame:
    issue = Issue("error", frame.name, problem, action)  # the Issue escapes control characters
    issues.append(issue)
    frame.error = f"{issue.file}: {issue.message}; {issue.action}"
    return frame


def _image_files(root: Path, gt: Path | None) -> list[Path]:
    if root.is_file():
        return [root]
    masks = _gt_subfolder(root, gt)
    # not only regular files: FIFOs, dangling links and symlink loops with an image's name are kept
    # so that `_read_frame` names them (it reads nothing before checking what they are)
    return [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
            and not p.name.lower().endswith(MASK_SUFFIX) and not _hidden(p, root) and not p.is_dir()
            and not (masks is not None and resolves_under(p, masks))]


def _gt_subfolder(root: Path, gt: Path | None) -> Path | None:
    """The --gt folder when it lies inside the dataset folder: its PNGs are masks, not frames."""
    if gt is None or not gt.is_dir() or not root.is_dir():
        return None
    gt_abs, root_abs = gt.resolve(), root.resolve()
    return gt_abs if gt_abs != root_abs and gt_abs.is_relative_to(root_abs) else None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _strip_dot(image: str) -> str:
    while image.startswith("./"):
        image = image[2:]
    return image


def _strip_prefix(message: str, name: str) -> str:
    return message[len(name) + 2:] if message.startswith(f"{name}: ") else message
