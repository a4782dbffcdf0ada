"""Streaming readers for BuboGPT's training sets, with strict record validation.

Every reader iterates its files record by record (tar members with `tarfile` in stream mode, JSON
annotation arrays with `training.jsonstream`), never loading a whole set, and turns each record into
a `Sample`. Media stay undecoded (bytes from a tar, or a checked path); decoding happens when batches
are built.

| reader                 | files                                                        | yields                          |
| ---------------------- | ------------------------------------------------------------ | ------------------------------- |
| `CaptionShards`        | webdataset tars: `key.jpg` + `key.txt`/`key.json{"caption"}` (CC3M/CC12M/SBU/LAION), or `key.flac` + `key.json` (WavCaps as the official stage 1 packs it) | caption samples (stage 1) |
| `WavCapsJSON`          | WavCaps `{"data": [{"id", "caption", "audio"/"wav_path", ...}]}` + audio folder (`<id>.flac`) | audio caption samples |
| `ClothoDetail`         | `{"annotations": [{"audio_id", "caption"}]}` + `<audio_id>.wav` | audio instruction samples   |
| `VGGSSInstruct`        | `{"annotations": [{"audio_id", "image_id", "caption"}]}` + `<audio_id>.wav`, `<image_id>.jpg` | image+audio instruction samples |
| `MiniGPT4Aligned`      | `filter_cap.json`: `{"annotations": [{"image_id", "caption"}]}` + `<image_id>.jpg` | image instruction samples |
| `LLaVAInstruct`        | `[{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}]` | one sample per question/answer pair |

A broken record raises `DatasetFormatError` naming the file, the record (index and/or key) and the
field. With `skip_bad=True` the record is logged and skipped instead; damage that ends a file (a JSON
syntax error, a truncated tar) skips the rest of that file. Readers count what they skipped in
`skipped`.

Resumable reading: `read_unit(unit, start)` yields `(position, sample)`; a position handed back as
`start` resumes exactly there (a byte offset that is seeked to, plus the record index and the sample
number within the record).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from bubogpt.prompt import RESERVED, Turn
from training.jsonstream import JSONStreamError, iter_json_array

log = logging.getLogger(__name__)

Media = bytes | Path
# (byte offset of the record, record index in its file, sample number within the record)
Position = tuple[int, int, int]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg")
# WavCaps records say `"audio": "wav_path"`: a placeholder, not a path.
WAVCAPS_PLACEHOLDERS = frozenset({"wav_path", ""})


class DatasetFormatError(ValueError):
    """A record (or file) that does not match its format; names file, record and field."""

    def __init__(self, path: str | os.PathLike, problem: str, *, record: str | None = None, field: str | None = None):
        where = [str(path)]
        if record is not None:
            where.append(record)
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join(where) + ": " + problem)
        self.path = str(path)
        self.record = record
        self.field = field
        self.problem = problem


class _UnitError(Exception):
    """Damage after which the rest of a file cannot be read (wraps the DatasetFormatError)."""

    def __init__(self, error: DatasetFormatError):
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Sample:
    """One training example, modality data still encoded.

    `instruction` is the user's text without modality tags; None means "draw one from the default pool
    for this sample's modalities" (stage 2) and is ignored in stage 1, where the caption follows the
    modality embeddings directly. `history` holds earlier turns of a conversation (user, assistant, ...).
    """

    source: str
    key: str
    answer: str
    image: Media | None = None
    audio: Media | None = None
    instruction: str | None = None
    history: tuple[Turn, ...] = ()
    kind: str = "caption"  # caption | instruction | negative

    @property
    def modalities(self) -> frozenset[str]:
        present = set()
        if self.image is not None:
            present.add("image")
        if self.audio is not None:
            present.add("audio")
        return frozenset(present)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def expand_paths(patterns: Sequence[str] | str) -> list[str]:
    """Shard lists: brace ranges as webdataset writes them (`cc3m/{00000..00331}.tar`), lists `{a,b}`, globs."""
    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[str] = []
    for pattern in patterns:
        for expanded in _expand_braces(pattern):
            if any(ch in expanded for ch in "*?["):
                matches = sorted(glob.glob(expanded))
                if not matches:
                    raise FileNotFoundError(f"no files match {expanded!r}")
                paths.extend(matches)
            else:
                paths.append(expanded)
    return paths


_BRACE = re.compile(r"\{([^{}]*)\}")


def _expand_braces(pattern: str) -> list[str]:
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if ".." in body:
        lo, hi = body.split("..", 1)
        if not (lo.isdigit() and hi.isdigit()):
            raise ValueError(f"bad brace range {{{body}}} in {pattern!r}")
        width = len(lo)
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in _expand_braces(head + option + tail)]


def _text(record: dict, name: str, path: str, where: str, *, allow_empty: bool = False) -> str:
    if name not in record:
        raise DatasetFormatError(path, "missing", record=where, field=name)
    value = record[name]
    if not isinstance(value, str):
        raise DatasetFormatError(path, f"expected a string, got {type(value).__name__}", record=where, field=name)
    value = value.strip()
    if not value and not allow_empty:
        raise DatasetFormatError(path, "is empty", record=where, field=name)
    for reserved in RESERVED:
        if reserved in value:
            raise DatasetFormatError(path, f"contains the reserved sequence {reserved!r} of the prompt template", record=where, field=name)
    return value


def _ident(record: dict, name: str, path: str, where: str) -> str:
    if name not in record:
        raise DatasetFormatError(path, "missing", record=where, field=name)
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetFormatError(path, f"expected a string or integer id, got {type(value).__name__}", record=where, field=name)
    value = str(value).strip()
    if not value:
        raise DatasetFormatError(path, "is empty", record=where, field=name)
    if "/" in value or "\\" in value or value in (".", ".."):
        raise DatasetFormatError(path, f"is not a plain file name: {value!r}", record=where, field=name)
    return value


def _existing(file: Path, path: str, where: str, name: str) -> Path:
    if not file.is_file():
        raise DatasetFormatError(path, f"file not found: {file}", record=where, field=name)
    return file


# --------------------------------------------------------------------------------------------------
# Base reader
# --------------------------------------------------------------------------------------------------


class Reader:
    """A dataset made of files ("units"), each read as a stream of records."""

    kind = "reader"

    def __init__(self, name: str, units: Sequence[str | os.PathLike], skip_bad: bool = False):
        self.name = name
        self.units = [str(u) for u in units]
        if not self.units:
            raise ValueError(f"dataset {name!r}: no files given")
        self.skip_bad = skip_bad
        self.skipped = 0

    # subclasses: yield (offset, index, raw record) and turn a raw record into samples
    def _records(self, unit: str, start: tuple[int, int] | None) -> Iterator[tuple[int, int, Any]]:
        raise NotImplementedError

    def _samples(self, unit: str, index: int, raw: Any) -> list[Sample]:
        raise NotImplementedError

    def read_unit(self, unit_index: int, start: Position | None = None) -> Iterator[tuple[Position, Sample]]:
        unit = self.units[unit_index]
        start = None if start is None else (int(start[0]), int(start[1]), int(start[2]))
        records = self._records(unit, None if start is None else start[:2])
        try:
            for offset, index, raw in records:
                try:
                    samples = self._samples(unit, index, raw)
                except DatasetFormatError as exc:
                    self._bad(exc)
                    continue
                for sub, sample in enumerate(samples):
                    if start is not None and (offset, index) == start[:2] and sub < start[2]:
                        continue  # resuming inside a record that holds several samples
                    yield (offset, index, sub), sample
        except _UnitError as exc:
            if not self.skip_bad:
                raise exc.error from None
            self.skipped += 1
            log.warning("%s: skipping the rest of the file (skip_bad): %s", self.name, exc.error)

    def _bad(self, exc: DatasetFormatError) -> None:
        if not self.skip_bad:
            raise exc
        self.skipped += 1
        log.warning("%s: skipping bad record (skip_bad): %s", self.name, exc)

    def __iter__(self) -> Iterator[Sample]:
        for unit_index in range(len(self.units)):
            for _, sample in self.read_unit(unit_index):
                yield sample


# --------------------------------------------------------------------------------------------------
# webdataset tar shards
# --------------------------------------------------------------------------------------------------


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's key/extension split: the extension starts at the first '.' of the base name."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")


def iter_tar_records(path: str, start: tuple[int, int] | None = None) -> Iterator[tuple[int, int, tuple[str, dict[str, bytes]]]]:
    """Streams a tar shard: yields (byte offset, record index, (key, {extension: bytes})).

    Consecutive members sharing a key form a record (webdataset's rule). The offset is that of the
    record's first member header; `start` = (offset, index) resumes there (seek for plain tars, a
    forward skip for compressed ones). Truncation or a corrupt header raises `_UnitError`.
    """
    with open(path, "rb") as handle:
        compressed = handle.read(6).startswith(_COMPRESSED_MAGIC)
        base, index, skip_to = 0, 0, 0
        if start is not None and not compressed:
            base, index = start
        elif start is not None:
            skip_to, index = start
        handle.seek(base)
        key: str | None = None
        members: dict[str, bytes] = {}
        first_offset = 0
        try:
            archive = tarfile.open(fileobj=handle, mode="r|*")
        except tarfile.TarError as exc:
            raise _UnitError(DatasetFormatError(path, f"not a readable tar archive: {exc}")) from None
        with archive:
            while True:
                where = f"record {index}" + (f" (key {key!r})" if key is not None else "")
                try:
                    info = archive.next()
                except tarfile.TarError as exc:
                    raise _UnitError(DatasetFormatError(path, f"corrupt or truncated tar after this record: {exc}", record=where)) from None
                if info is None:
                    # tarfile ends quietly at a missing or garbled header; a complete archive ends with
                    # a zero block there. (Compressed shards: the decompressor reports truncation.)
                    if not compressed and not _zero_block_at(handle, base + archive.offset):
                        raise _UnitError(DatasetFormatError(
                            path, f"truncated or corrupt tar: no valid member header or end-of-archive block at byte {base + archive.offset}",
                            record=where))
                    break
                if base + info.offset < skip_to or not info.isfile():
                    continue
                member_key, ext = split_member_name(info.name)
                if member_key != key:
                    if key is not None:
                        yield first_offset, index, (key, members)
                        index += 1
                    key, members, first_offset = member_key, {}, base + info.offset
                where = f"record {index} (key {key!r})"
                try:
                    stream = archive.extractfile(info)
                    data = stream.read() if stream is not None else b""
                except (tarfile.TarError, OSError, EOFError) as exc:
                    raise _UnitError(DatasetFormatError(path, f"member {info.name!r} is truncated or unreadable: {exc}", record=where, field=ext)) from None
                if len(data) != info.size:
                    raise _UnitError(DatasetFormatError(path, f"member {info.name!r} is truncated: {len(data)} of {info.size} bytes", record=where, field=ext))
                if ext in members:
                    raise _UnitError(DatasetFormatError(path, f"member {info.name!r} repeats extension {ext!r} in one record", record=where, field=ext))
                members[ext] = data
            if key is not None:
                yield first_offset, index, (key, members)


def _zero_block_at(handle, offset: int) -> bool:
    position = handle.tell()
    try:
        handle.seek(offset)
        block = handle.read(tarfile.BLOCKSIZE)
    finally:
        handle.seek(position)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


class CaptionShards(Reader):
    """webdataset-style caption shards for stage 1.

    Image sets (CC3M/CC12M/SBU/LAION): `key.jpg` (or png/webp) + `key.txt` or `key.json` with "caption".
    Audio sets (WavCaps as the official stage 1 packs it): `key.flac` (or wav) + `key.json` with "caption".
    """

    kind = "caption_shards"

    def __init__(self, name: str, shards: Sequence[str] | str, modality: str = "image", skip_bad: bool = False, caption_field: str = "caption"):
        if modality not in ("image", "audio"):
            raise ValueError(f"dataset {name!r}: modality must be 'image' or 'audio', got {modality!r}")
        super().__init__(name, expand_paths(shards), skip_bad)
        self.modality = modality
        self.extensions = IMAGE_EXTENSIONS if modality == "image" else AUDIO_EXTENSIONS
        self.caption_field = caption_field

    def _records(self, unit, start):
        return iter_tar_records(unit, start)

    def _samples(self, unit, index, raw):
        key, members = raw
        where = f"record {index} (key {key!r})"
        media_ext = next((e for e in self.extensions if e in members), None)
        if media_ext is None:
            raise DatasetFormatError(unit, f"no {self.modality} member (expected one of {', '.join(self.extensions)}; found {sorted(members) or 'none'})", record=where, field=self.extensions[0])
        media = members[media_ext]
        if not media:
            raise DatasetFormatError(unit, "is empty (0 bytes)", record=where, field=media_ext)
        if "txt" in members:
            try:
                caption = members["txt"].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetFormatError(unit, f"not UTF-8 text: {exc.reason}", record=where, field="txt") from None
            caption = _text({"txt": caption}, "txt", unit, where)
        elif "json" in members:
            import json

            try:
                meta = json.loads(members["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DatasetFormatError(unit, f"invalid JSON: {exc}", record=where, field="json") from None
            if not isinstance(meta, dict):
                raise DatasetFormatError(unit, f"expected a JSON object, got {type(meta).__name__}", record=where, field="json")
            caption = _text(meta, self.caption_field, unit, where)
        else:
            raise DatasetFormatError(unit, f"no caption member (key.txt or key.json with {self.caption_field!r})", record=where, field="txt")
        return [Sample(source=self.name, key=key, answer=caption, kind="caption", **{self.modality: media})]


# --------------------------------------------------------------------------------------------------
# JSON annotation sets
# --------------------------------------------------------------------------------------------------


class AnnotationReader(Reader):
    """Records from JSON arrays (`list_key` None: the document is the array)."""

    list_key: str | None = "annotations"

    def __init__(self, name: str, annotations: Sequence[str] | str, skip_bad: bool = False):
        super().__init__(name, expand_paths(annotations), skip_bad)

    def _records(self, unit, start):
        try:
            handle = open(unit, "rb")
        except OSError as exc:
            raise _UnitError(DatasetFormatError(unit, f"cannot open annotation file: {exc.strerror}")) from None
        with handle:
            try:
                for index, offset, value in iter_json_array(handle, self.list_key, start):
                    yield offset, index, value
            except JSONStreamError as exc:
                record = f"record {exc.index}" if exc.index is not None else None
                raise _UnitError(DatasetFormatError(unit, str(exc), record=record)) from None

    def _object(self, unit: str, index: int, raw: Any) -> tuple[dict, str]:
        where = f"record {index}"
        if not isinstance(raw, dict):
            raise DatasetFormatError(unit, f"expected a JSON object, got {type(raw).__name__}", record=where)
        return raw, where


class WavCapsJSON(AnnotationReader):
    """WavCaps metadata (`{"data": [{"id", "caption", "audio": "wav_path", "duration", ...}]}`) + audio folder.

    The audio file is `audio_dir/<id without extension><audio_ext>` as the official `dataset/process.py`
    lays it out; a record whose "audio" or "wav_path" field holds an actual relative path uses that.
    """

    kind = "wavcaps"
    list_key = "data"

    def __init__(self, name: str, annotations, audio_dir: str | os.PathLike, audio_ext: str = ".flac", skip_bad: bool = False):
        super().__init__(name, annotations, skip_bad)
        self.audio_dir = Path(audio_dir)
        self.audio_ext = audio_ext if audio_ext.startswith(".") else "." + audio_ext

    def _samples(self, unit, index, raw):
        record, where = self._object(unit, index, raw)
        ident = _ident(record, "id", unit, where)
        where = f"record {index} (id {ident!r})"
        caption = _text(record, "caption", unit, where)
        for name in ("wav_path", "audio"):
            value = record.get(name)
            if isinstance(value, str) and value.strip() not in WAVCAPS_PLACEHOLDERS:
                file = _existing(self.audio_dir / value.strip(), unit, where, name)
                break
        else:
            file = _existing(self.audio_dir / (ident.split(".")[0] + self.audio_ext), unit, where, "id")
        return [Sample(source=self.name, key=ident, answer=caption, audio=file, kind="caption")]


class ClothoDetail(AnnotationReader):
    """Clotho-Detail (BuboGPT's audio instruction set): `{"annotations": [{"audio_id", "caption"}]}`, `<audio_id>.wav`."""

    kind = "clotho_detail"

    def __init__(self, name: str, annotations, audio_dir: str | os.PathLike, audio_ext: str = ".wav", skip_bad: bool = False):
        super().__init__(name, annotations, skip_bad)
        self.audio_dir = Path(audio_dir)
        self.audio_ext = audio_ext

    def _samples(self, unit, index, raw):
        record, where = self._object(unit, index, raw)
        audio_id = _ident(record, "audio_id", unit, where)
        where = f"record {index} (audio_id {audio_id!r})"
        caption = _text(record, "caption", unit, where)
        file = _existing(self.audio_dir / (audio_id + self.audio_ext), unit, where, "audio_id")
        return [Sample(source=self.name, key=audio_id, answer=caption, audio=file, kind="instruction")]


class VGGSSInstruct(AnnotationReader):
    """VGGSS-Instruction (aligned audio-image-text): `{"annotations": [{"audio_id", "image_id", "caption"}]}`.

    An optional "instruction" string per record becomes the sample's question (e.g. the synthetic
    world's unrelated pairs carry their own); without it one is drawn from the default pool.
    """

    kind = "vggss"

    def __init__(self, name: str, annotations, audio_dir, image_dir, audio_ext: str = ".wav", image_ext: str = ".jpg", skip_bad: bool = False):
        super().__init__(name, annotations, skip_bad)
        self.audio_dir, self.image_dir = Path(audio_dir), Path(image_dir)
        self.audio_ext, self.image_ext = audio_ext, image_ext

    def _samples(self, unit, index, raw):
        record, where = self._object(unit, index, raw)
        audio_id = _ident(record, "audio_id", unit, where)
        image_id = _ident(record, "image_id", unit, where)
        where = f"record {index} (audio_id {audio_id!r})"
        caption = _text(record, "caption", unit, where)
        audio = _existing(self.audio_dir / (audio_id + self.audio_ext), unit, where, "audio_id")
        image = _existing(self.image_dir / (image_id + self.image_ext), unit, where, "image_id")
        instruction = _text(record, "instruction", unit, where) if "instruction" in record else None
        return [Sample(source=self.name, key=audio_id, answer=caption, audio=audio, image=image, instruction=instruction,
                       kind="instruction")]


class MiniGPT4Aligned(AnnotationReader):
    """MiniGPT-4's aligned image-text set (cc_sbu_align): `filter_cap.json` + `image/<image_id>.jpg`."""

    kind = "minigpt4_aligned"

    def __init__(self, name: str, annotations, image_dir, image_ext: str = ".jpg", skip_bad: bool = False):
        super().__init__(name, annotations, skip_bad)
        self.image_dir = Path(image_dir)
        self.image_ext = image_ext

    def _samples(self, unit, index, raw):
        record, where = self._object(unit, index, raw)
        image_id = _ident(record, "image_id", unit, where)
        where = f"record {index} (image_id {image_id!r})"
        caption = _text(record, "caption", unit, where)
        image = _existing(self.image_dir / (image_id + self.image_ext), unit, where, "image_id")
        return [Sample(source=self.name, key=image_id, answer=caption, image=image, kind="instruction")]


_IMAGE_TAG = re.compile(r"\s*<image>\s*")
HUMAN_ROLES = ("human", "user")
GPT_ROLES = ("gpt", "assistant")


class LLaVAInstruct(AnnotationReader):
    """LLaVA-Instruct-150K: `[{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}]`.

    One sample per (question, answer) pair, as the official dataset does; `<image>` is removed from the
    question (the image embeddings take its place). With `with_history` each pair keeps the earlier
    turns as history. The image is `image_dir/<image>`, or `image_pattern.format(id=...)` without "image".
    """

    kind = "llava"
    list_key = None

    def __init__(self, name: str, annotations, image_dir, image_pattern: str = "COCO_train2014_{id:0>12}.jpg", with_history: bool = False, skip_bad: bool = False):
        super().__init__(name, annotations, skip_bad)
        self.image_dir = Path(image_dir)
        self.image_pattern = image_pattern
        self.with_history = with_history

    def _samples(self, unit, index, raw):
        record, where = self._object(unit, index, raw)
        ident = _ident(record, "id", unit, where)
        where = f"record {index} (id {ident!r})"
        if "image" in record:
            image_name = record["image"]
            if not isinstance(image_name, str) or not image_name.strip():
                raise DatasetFormatError(unit, "expected a non-empty file name", record=where, field="image")
            image = _existing(self.image_dir / image_name.strip(), unit, where, "image")
        else:
            image = _existing(self.image_dir / self.image_pattern.format(id=ident), unit, where, "id")
        conversations = record.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            problem = "missing" if conversations is None else "expected a non-empty list of turns"
            raise DatasetFormatError(unit, problem, record=where, field="conversations")
        if len(conversations) % 2:
            raise DatasetFormatError(unit, f"has {len(conversations)} turns; expected human/gpt pairs", record=where, field="conversations")
        turns: list[Turn] = []
        for i, turn in enumerate(conversations):
            name = f"conversations[{i}]"
            if not isinstance(turn, dict):
                raise DatasetFormatError(unit, f"expected an object, got {type(turn).__name__}", record=where, field=name)
            roles = HUMAN_ROLES if i % 2 == 0 else GPT_ROLES
            role = turn.get("from")
            if role not in roles:
                raise DatasetFormatError(unit, f"expected 'from' in {list(roles)} (turns alternate, human first), got {role!r}", record=where, field=f"{name}.from")
            text = _text({f"{name}.value": turn["value"]} if "value" in turn else {}, f"{name}.value", unit, where)
            if i % 2 == 0:
                text = _IMAGE_TAG.sub(" ", text).strip()
                if not text:
                    raise DatasetFormatError(unit, "has no question besides <image>", record=where, field=f"{name}.value")
            turns.append(Turn("user" if i % 2 == 0 else "assistant", text))
        samples = []
        for pair in range(len(turns) // 2):
            question, answer = turns[2 * pair], turns[2 * pair + 1]
            history = tuple(turns[: 2 * pair]) if self.with_history else ()
            samples.append(
                Sample(source=self.name, key=f"{ident}#{pair}", answer=answer.text, image=image,
                       instruction=question.text, history=history, kind="instruction")
            )
        return samples


READERS = {cls.kind: cls for cls in (CaptionShards, WavCapsJSON, ClothoDetail, VGGSSInstruct, MiniGPT4Aligned, LLaVAInstruct)}
