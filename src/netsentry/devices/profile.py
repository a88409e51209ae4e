"""A device's behaviour profile, learned after it connects, stored integrity-protected.

:func:`learn_profile` turns the packets and the closed windows of a learning phase into
a :class:`DeviceProfile`:

``iat``       inter-arrival times (s): mean, std, quantiles (:data:`QUANTILES`) and a
              histogram over log-spaced edges (:data:`IAT_EDGES`; values outside are
              counted in the first or last bin)
``size``      RTP packet sizes (bytes): mean, std, min, max
``rate``      transmission rate (bit/s): the mean of the windows' rates and the
              largest peak rate of any window; packets per second likewise
``encoding``  from the RTP headers: payload types and SSRCs seen (with counts), the
              media clock (least-squares slope of RTP timestamps against arrival, per
              SSRC, and the standard rate it is within 5 % of), the frame rate and the
              frame pattern (frames end at a marker bit or a new timestamp; an I-frame
              is a frame over :data:`IFRAME_FACTOR` times the median frame size; GOP
              length = median distance between I-frames, in frames; I-frame size ratio
              = mean I-frame / mean other frame)
``baseline``  per window feature: count, mean and std of the learning windows
``windows``   the learning windows' feature vectors (what the detectors are fitted on)

All standard deviations are population ones (ddof 0). Arrivals are clamped to be
non-decreasing, as in :mod:`netsentry.devices.windows`.

Storage: the profile is JSON (msgspec: decoding checks every field and names the one
that is wrong) in table ``device_profiles``, with an HMAC-SHA256 from
:meth:`netsentry.rotation.vault.Vault.mac` over the device id and the JSON, so an edited
profile, or one copied to another device, fails :func:`load_profile` with
:class:`~netsentry.rotation.vault.IntegrityError`. :func:`export_profile` writes the same
to a file with mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np
import numpy.typing as npt

from netsentry.devices.packets import PacketRecords
from netsentry.devices.windows import FEATURES, WindowSpec, WindowStats
from netsentry.rotation.vault import IntegrityError, Vault
from netsentry.store.sqlite import Store

__all__ = [
    "DeviceProfile",
    "ProfileError",
    "export_profile",
    "import_profile",
    "learn_profile",
    "load_profile",
    "save_profile",
]

QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
#: Histogram edges of inter-arrival times: 1 us to 10 s, 4 bins per decade.
IAT_EDGES: tuple[float, ...] = tuple(float(x) for x in np.logspace(-6, 1, 29))
IFRAME_FACTOR = 3.0
STANDARD_CLOCKS: tuple[int, ...] = (8_000, 16_000, 32_000, 44_100, 48_000, 90_000)
MAC_PURPOSE = "device-profile"
FORMAT = 1

Finite = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class ProfileError(ValueError):
    """A profile that cannot be learned or read (the message says why)."""


class Distribution(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mean: Finite
    std: Finite
    min: Finite
    max: Finite


class InterArrival(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mean: Finite
    std: Finite
    quantiles: dict[str, Finite]
    edges: list[Finite]
    counts: list[Count]


class Rate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mean_bps: Finite
    peak_bps: Finite
    mean_pps: Finite
    peak_pps: Finite


class Encoding(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload_types: dict[int, Count]
    ssrcs: dict[int, Count]
    clock_rate_hz: Finite | None
    nominal_clock_rate_hz: int | None
    frame_rate: Finite
    frames: Count
    gop_length: Finite
    iframe_size_ratio: Finite


class Moments(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    n: Count
    mean: Finite
    std: Finite


class DeviceProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What is normal for one device (see the module documentation)."""

    device_id: str
    learned_ns: int
    packets: Count
    duration_s: Finite
    window: dict[str, int]
    iat: InterArrival
    size: Distribution
    rate: Rate
    encoding: Encoding
    baseline: dict[str, Moments]
    features: list[str]
    windows: list[list[Finite]]
    format: int = FORMAT

    @property
    def spec(self) -> WindowSpec:
        return WindowSpec(**self.window)

    @property
    def known_payload_types(self) -> frozenset[int]:
        return frozenset(self.encoding.payload_types)

    @property
    def known_ssrcs(self) -> frozenset[int]:
        return frozenset(self.encoding.ssrcs)

    def matrix(self) -> npt.NDArray[np.float64]:
        """The learning windows, one row per window, columns in ``features`` order."""
        return np.asarray(self.windows, dtype=np.float64).reshape(-1, len(self.features))

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> DeviceProfile:
        """Decode and check a profile; :class:`ProfileError` names the field at fault."""
        try:
            profile = msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ProfileError(f"device profile is not valid: {exc}") from None
        if profile.format != FORMAT:
            raise ProfileError(f"device profile format {profile.format}, expected {FORMAT}")
        return profile


def _clock(arrival_s: npt.NDArray[np.float64], stamps: npt.NDArray[np.int64]) -> float | None:
    """Least-squares slope of unwrapped RTP timestamps against arrival seconds."""
    if len(stamps) < 2 or np.ptp(arrival_s) <= 0:
        return None
    step = (np.diff(stamps) + 2**31) % 2**32 - 2**31  # signed 32-bit differences
    unwrapped = np.concatenate([[0], np.cumsum(step)]).astype(np.float64)
    t = arrival_s - arrival_s.mean()
    return float((t * (unwrapped - unwrapped.mean())).sum() / (t * t).sum())


def _encoding(records: PacketRecords, arrival: npt.NDArray[np.int64]) -> Encoding:
    pts, pt_counts = np.unique(records.payload_type, return_counts=True)
    ssrcs, ssrc_counts = np.unique(records.ssrc, return_counts=True)
    n = len(records)
    ts = records.rtp_timestamp.astype(np.int64)
    starts = np.ones(n, dtype=bool)
    if n > 1:
        starts[1:] = (
            (ts[1:] != ts[:-1]) | records.marker[:-1] | (records.ssrc[1:] != records.ssrc[:-1])
        )
    first = np.flatnonzero(starts)
    frame_bytes = np.add.reduceat(records.size.astype(np.int64), first) if n else np.zeros(0)
    clocks = []
    for ssrc in ssrcs:
        mine = records.ssrc[first] == ssrc
        slope = _clock(arrival[first][mine] / 1e9, ts[first][mine])
        if slope is not None:
            clocks.append((int(mine.sum()), slope))
    clock = max(clocks)[1] if clocks else None
    nominal = None
    if clock is not None:
        near = min(STANDARD_CLOCKS, key=lambda c: abs(clock - c))
        nominal = near if abs(clock - near) <= 0.05 * near else None
    duration = (arrival[-1] - arrival[0]) / 1e9 if n else 0.0
    frame_rate = float((len(first) - 1) / duration) if duration > 0 else 0.0
    gop, ratio = 0.0, 1.0
    if len(frame_bytes):
        big = frame_bytes > IFRAME_FACTOR * np.median(frame_bytes)
        if big.any() and (~big).any():
            ratio = float(frame_bytes[big].mean() / frame_bytes[~big].mean())
            where = np.flatnonzero(big)
            gop = float(np.median(np.diff(where))) if len(where) > 1 else 0.0
    return Encoding(
        payload_types={int(p): int(c) for p, c in zip(pts, pt_counts, strict=True)},
        ssrcs={int(s): int(c) for s, c in zip(ssrcs, ssrc_counts, strict=True)},
        clock_rate_hz=clock,
        nominal_clock_rate_hz=nominal,
        frame_rate=frame_rate,
        frames=len(first),
        gop_length=gop,
        iframe_size_ratio=ratio,
    )


def learn_profile(
    device_id: str,
    records: PacketRecords,
    windows: WindowStats,
    spec: WindowSpec,
    *,
    learned_ns: int | None = None,
) -> DeviceProfile:
    """The profile of a learning phase: its packets (in arrival order) and its closed
    windows (at least two of each, else :class:`ProfileError`)."""
    if len(records) < 2 or len(windows) < 2:
        raise ProfileError(
            f"device {device_id!r}: a profile needs at least 2 packets and 2 windows, "
            f"got {len(records)} and {len(windows)}"
        )
    arrival = np.maximum.accumulate(records.arrival_ns.astype(np.int64))
    iat = np.diff(arrival) / 1e9
    edges = np.asarray(IAT_EDGES)
    counts, _ = np.histogram(np.clip(iat, edges[0], edges[-1]), bins=edges)
    size = records.size.astype(np.float64)
    x = windows.matrix(FEATURES)
    frame = windows.frame
    return DeviceProfile(
        device_id=device_id,
        learned_ns=int(arrival[-1]) if learned_ns is None else learned_ns,
        packets=len(records),
        duration_s=float((arrival[-1] - arrival[0]) / 1e9),
        window=spec.to_dict(),
        iat=InterArrival(
            mean=float(iat.mean()),
            std=float(iat.std()),
            quantiles={
                f"{q:g}": float(v)
                for q, v in zip(QUANTILES, np.quantile(iat, QUANTILES), strict=True)
            },
            edges=list(IAT_EDGES),
            counts=[int(c) for c in counts],
        ),
        size=Distribution(
            mean=float(size.mean()),
            std=float(size.std()),
            min=float(size.min()),
            max=float(size.max()),
        ),
        rate=Rate(
            mean_bps=float(frame["rate"].mean()),  # type: ignore[arg-type]
            peak_bps=float(frame["peak_rate"].max()),  # type: ignore[arg-type]
            mean_pps=float(frame["packet_rate"].mean()),  # type: ignore[arg-type]
            peak_pps=float(frame["packet_rate"].max()),  # type: ignore[arg-type]
        ),
        encoding=_encoding(records, arrival),
        baseline={
            f: Moments(n=len(x), mean=float(x[:, j].mean()), std=float(x[:, j].std()))
            for j, f in enumerate(FEATURES)
        },
        features=list(FEATURES),
        windows=x.tolist(),
    )


# -- storage ------------------------------------------------------------------------------


def _signed(device_id: str, text: bytes) -> bytes:
    """What the MAC covers: the device id and the JSON, each length-prefixed."""
    name = device_id.encode()
    return len(name).to_bytes(4, "big") + name + len(text).to_bytes(8, "big") + text


def save_profile(store: Store, vault: Vault, profile: DeviceProfile) -> None:
    """Insert or replace the device's profile with its MAC (the device must be registered)."""
    text = profile.to_json()
    mac = vault.mac(MAC_PURPOSE, _signed(profile.device_id, text))
    with store.transaction() as tx:
        tx.db.execute(
            "INSERT INTO device_profiles (device, profile, mac, learned) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device) DO UPDATE SET profile = excluded.profile, mac = excluded.mac, "
            "learned = excluded.learned",
            (profile.device_id, text.decode(), mac, profile.learned_ns),
        )


def load_profile(store: Store, vault: Vault, device_id: str) -> DeviceProfile | None:
    """The device's stored profile, verified; None if it has none.

    Raises
    ------
    IntegrityError
        The profile or its MAC was changed, or belongs to another device.
    ProfileError
        The profile verifies but cannot be read (a newer format).
    """
    with store.read() as db:
        row = db.execute(
            "SELECT profile, mac FROM device_profiles WHERE device = ?", (device_id,)
        ).fetchone()
    if row is None:
        return None
    text, mac = str(row[0]).encode(), bytes(row[1])
    vault.verify(MAC_PURPOSE, _signed(device_id, text), mac)
    profile = DeviceProfile.from_json(text)
    if profile.device_id != device_id:  # only a MAC forgery could get here
        raise IntegrityError(f"profile stored for {device_id!r} names {profile.device_id!r}")
    return profile


def export_profile(path: str | os.PathLike[str], vault: Vault, profile: DeviceProfile) -> Path:
    """Write the profile and its MAC to ``path``, readable by its owner only (0600)."""
    text = profile.to_json()
    mac = vault.mac(MAC_PURPOSE, _signed(profile.device_id, text))
    body = msgspec.json.encode(
        {"device": profile.device_id, "mac": mac.hex(), "profile": msgspec.Raw(text)}
    )
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        os.write(fd, body)
    finally:
        os.close(fd)
    return target


class _Export(msgspec.Struct, forbid_unknown_fields=True):
    device: str
    mac: str
    profile: msgspec.Raw


def import_profile(path: str | os.PathLike[str], vault: Vault) -> DeviceProfile:
    """Read a file of :func:`export_profile`; :class:`IntegrityError` if it was changed."""
    try:
        export = msgspec.json.decode(Path(path).read_bytes(), type=_Export)
        mac = bytes.fromhex(export.mac)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ProfileError(f"{path}: not a profile export: {exc}") from None
    text = bytes(export.profile)
    vault.verify(MAC_PURPOSE, _signed(export.device, text), mac)
    profile = DeviceProfile.from_json(text)
    if profile.device_id != export.device:
        raise IntegrityError(
            f"{path}: profile of {profile.device_id!r} exported as {export.device!r}"
        )
    return profile
