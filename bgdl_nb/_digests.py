"""Expected digests in pooch's ``alg:hex`` form: ``md5:…``, ``sha1:…``, ``sha256:…``,
``sha512:…``, ``blake2b:…``; bare hex is sha256 (as ``sha256=`` has always been).

A sha256 is checked as the bytes arrive (the engine hashes the contiguous prefix as it
grows, and its marks use sha256 too), so a verified download ends with its last byte.
Any other algorithm is checked once the last byte is on disk, by reading the partial
file before it is renamed into place: a mismatch keeps nothing at the destination, as
for sha256. That costs one read of the file at the end (md5 and sha1 read faster than the
disk on this kind of machine; sha512 and blake2b about as fast as sha256).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._exceptions import InvalidInput

__all__ = ["ALGORITHMS", "Digest", "expected_digests"]

ALGORITHMS: dict[str, int] = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128, "blake2b": 128}
"""The algorithms a digest may name, with the number of hex digits of each."""

_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class Digest:
    """An expected digest: an algorithm of :data:`ALGORITHMS` and its lower-case hex."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, value: object, what: str = "digest") -> Digest:
        """``"alg:hex"`` or bare hex (sha256); :class:`InvalidInput` saying what is wrong."""
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str):
            raise InvalidInput(f"{what} must be a string like 'sha256:<hex>' or 'md5:<hex>', not "
                               f"{type(value).__name__}")
        algorithm, sep, hexdigest = value.strip().rpartition(":")
        algorithm = algorithm.lower() if sep else "sha256"
        if algorithm not in ALGORITHMS:
            raise InvalidInput(f"{what} {value!r} names {algorithm!r}; use one of "
                               f"{', '.join(f'{a}:<hex>' for a in ALGORITHMS)} (bare hex means sha256)")
        if not _HEX.fullmatch(hexdigest) or len(hexdigest) != ALGORITHMS[algorithm]:
            raise InvalidInput(f"{what} {value!r}: {algorithm} digests are {ALGORITHMS[algorithm]} hex digits, "
                               f"got {len(hexdigest)} characters{'' if _HEX.fullmatch(hexdigest) else ' (not all hex)'}")
        return cls(algorithm, hexdigest.lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    @property
    def sha256(self) -> str | None:
        """The hex when this is a sha256 (the engine checks those as the bytes arrive)."""
        return self.hexdigest if self.algorithm == "sha256" else None

    def of_file(self, path: str | os.PathLike[str]) -> str:
        """The hex digest of ``path`` with this digest's algorithm (blocking: call it from a thread)."""
        hasher = hashlib.new(self.algorithm)
        with open(path, "rb", buffering=0) as f:
            block = bytearray(1 << 20)
            view = memoryview(block)
            while n := f.readinto(block):
                hasher.update(view[:n])
        return hasher.hexdigest()


def expected_digests(urls: Sequence[str], sha256: object = None, hashes: object = None) -> list[Digest | None]:
    """One expected digest (or None) per URL, from ``sha256=`` and ``hashes=``, each a
    string (one URL), a ``{url: digest}`` mapping or a list in URL order."""
    picked: list[Digest | None] = [None] * len(urls)
    for name, given in (("sha256", sha256), ("hashes", hashes)):
        if given is None:
            continue
        if isinstance(given, (str, Digest)):
            if len(urls) != 1:
                raise InvalidInput(f"a single {name} string needs a single URL; pass a dict {{url: digest}} for several")
            values: list[object] = [given]
        elif isinstance(given, Mapping):
            unknown = sorted(set(given) - set(urls))
            if unknown:
                raise InvalidInput(f"{name} is given for {len(unknown)} URL(s) that are not being fetched (first: "
                                   f"{unknown[0]}); check the keys of the mapping: a digest that matches no URL "
                                   "would verify nothing")
            values = [given.get(u) for u in urls]
        elif isinstance(given, Sequence):
            values = list(given)
            if len(values) != len(urls):
                raise InvalidInput(f"got {len(values)} {name} values for {len(urls)} URLs")
        else:
            raise InvalidInput(f"{name} must be a string, a {{url: digest}} dict or a list, not {type(given).__name__}")
        for i, value in enumerate(values):
            if value is None:
                continue
            digest = Digest.parse(value, "sha256" if name == "sha256" else "digest")
            if name == "sha256" and digest.algorithm != "sha256":
                raise InvalidInput(f"sha256= takes sha256 digests; pass {digest} in hashes= instead")
            if picked[i] is not None and picked[i] != digest:
                raise InvalidInput(f"{urls[i]} is given two different digests ({picked[i]} and {digest})")
            picked[i] = digest
    return picked
