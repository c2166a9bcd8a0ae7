"""Parameters of one synthetic abdominal CT phantom: plain frozen dataclasses that round-trip through JSON.

Coordinate conventions used by every parameter (the "patient frame", millimetres):

* ``x`` grows towards the patient's **left**, ``y`` towards the patient's **back** (posterior), ``z`` towards the
  **head** (superior). This is the DICOM/ITK LPS convention, so with an identity direction matrix an axial slice
  shown with ``imshow(image[k])`` appears in the usual radiological view (anterior up, patient left on the right).
* ``x = y = 0`` is the centre of the body outline; ``z = 0`` is roughly the level of the renal hila (L1/L2).
* The world (scanner) frame of the written NIfTI is ``world = patient + Grid.patient_offset``.

Array conventions: volumes are numpy arrays indexed ``[z, y, x]`` (SimpleITK's ``GetArrayFromImage`` order); spacings,
origins and directions are given in SimpleITK order ``(x, y, z)``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

Vec3 = tuple[float, float, float]

#: Version of the parameter format; bumped when a change would render old parameter files differently.
PARAMS_VERSION = 1

SIZES = ("small", "medium", "full")

#: Documented range (HU) of the **median** intensity inside each organ of a rendered phantom (portal-venous phase).
#: The sampler keeps organ means far enough inside these ranges that texture, noise and the bias field cannot push
#: the median out. The stomach's median is that of its contents (fluid/food 0-40 HU) between the wall (40-60 HU)
#: and the gas cap (-1000..-900 HU, at most about a quarter of the lumen).
ORGAN_HU_RANGES: dict[int, tuple[float, float]] = {
    1: (100.0, 130.0),   # liver
    2: (150.0, 200.0),   # right kidney
    3: (110.0, 130.0),   # spleen
    4: (90.0, 110.0),    # pancreas
    5: (150.0, 200.0),   # aorta
    6: (120.0, 160.0),   # inferior vena cava
    7: (30.0, 60.0),     # right adrenal gland
    8: (30.0, 60.0),     # left adrenal gland
    9: (0.0, 20.0),      # gallbladder
    10: (40.0, 60.0),    # esophagus
    11: (0.0, 60.0),     # stomach (contents; wall 40-60, gas cap -1000..-900)
    12: (40.0, 80.0),    # duodenum
    13: (150.0, 200.0),  # left kidney
}

REGIONS = ("below", "above", "any")
GAS_MODES = ("none", "level", "mottled")
PAINT_TARGETS = ("cavity", "muscle", "fat")


def _check_vec3(name: str, value: Any, positive: bool = False) -> None:
    if len(value) != 3 or not all(math.isfinite(float(v)) for v in value):
        raise ValueError(f"{name} must be three finite numbers, got {value!r}")
    if positive and not all(float(v) > 0 for v in value):
        raise ValueError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class Wave:
    """One smooth perturbation term ``amp * cos(k . u + phase)`` of a shape's surface.

    ``u`` is the shape's normalised coordinate (unitless: the blob's axes scaled to 1, or millimetres / 50 for
    tubes); ``amp`` is relative to the radius (0.1 moves the surface by 10 % of the radius).
    """

    k: Vec3
    phase: float
    amp: float


@dataclass(frozen=True)
class Blob:
    """A deformed ellipsoid (solid organs).

    Normalised coordinates ``u = R^T (p - centre) / radii`` with ``R = Rz @ Ry @ Rx`` from ``angles_deg``. Then
    ``u0 += bend * (u1**2 + u2**2)`` (cup shapes: the hilum of a kidney, the visceral face of the spleen),
    ``u1 /= 1 + taper * u0`` (wedge shapes), and the surface is ``|u| = 1 + sum(waves)``. ``radii`` are the
    semi-axes in mm.
    """

    centre: Vec3
    radii: Vec3
    angles_deg: Vec3 = (0.0, 0.0, 0.0)
    bend: float = 0.0
    taper: float = 0.0
    waves: tuple[Wave, ...] = ()
    kind: str = "blob"

    def __post_init__(self):
        _check_vec3("Blob.centre", self.centre)
        _check_vec3("Blob.radii", self.radii, positive=True)
        _check_vec3("Blob.angles_deg", self.angles_deg)


@dataclass(frozen=True)
class Tube:
    """A tube of varying radius along a polyline centre line (vessels, oesophagus, bowel, pancreas).

    ``points`` (mm) are the centre line, ``radii`` (mm) the radius at each point (linear in between). ``squash``
    scales the patient axes before distances are measured: (1, 1.4, 1) flattens the cross-section front-to-back.
    ``waves`` modulate the radius with ``u = p / 50 mm``.
    """

    points: tuple[Vec3, ...]
    radii: tuple[float, ...]
    squash: Vec3 = (1.0, 1.0, 1.0)
    waves: tuple[Wave, ...] = ()
    kind: str = "tube"

    def __post_init__(self):
        if len(self.points) < 2 or len(self.points) != len(self.radii):
            raise ValueError(f"Tube needs >= 2 points and one radius per point, got {len(self.points)} points and "
                             f"{len(self.radii)} radii")
        for p in self.points:
            _check_vec3("Tube.points[i]", p)
        if not all(r > 0 for r in self.radii):
            raise ValueError(f"Tube.radii must be positive, got {self.radii!r}")
        _check_vec3("Tube.squash", self.squash, positive=True)


Shape = Blob | Tube


@dataclass(frozen=True)
class Structure:
    """One anatomical structure painted into the phantom: an organ (``label`` 1..13) or an unlabelled one (0).

    Structures are painted in the order of ``CaseParams.structures``; a voxel keeps the first structure that claims
    it (labels are therefore exclusive). A structure only claims voxels whose current tissue is one of ``onto``
    (``cavity``: free abdominal/thoracic cavity; ``muscle``; ``fat``: subcutaneous fat) and, with ``region``
    ``below``/``above``, only voxels below/above the diaphragm.

    Intensities (HU): ``hu`` mean, ``texture_hu`` amplitude of a smooth texture. With ``wall_mm > 0`` voxels less
    than ``wall_mm`` deep are the wall (``wall_hu``). ``gas``: ``level`` puts gas in front of (at smaller ``y``
    than) ``gas_y``; ``mottled`` turns ``gas_fraction`` of the lumen into gas in blobs (colon contents).
    """

    name: str
    label: int
    shapes: tuple[Shape, ...]
    hu: float
    texture_hu: float
    present: bool = True
    region: str = "below"
    onto: tuple[str, ...] = ("cavity",)
    wall_mm: float = 0.0
    wall_hu: float = 0.0
    gas: str = "none"
    gas_y: float = 0.0
    gas_fraction: float = 0.0

    def __post_init__(self):
        if not 0 <= self.label <= 255:
            raise ValueError(f"Structure {self.name!r}: label must be 0..255, got {self.label}")
        if not self.shapes:
            raise ValueError(f"Structure {self.name!r}: needs at least one shape")
        if self.region not in REGIONS:
            raise ValueError(f"Structure {self.name!r}: region must be one of {REGIONS}, got {self.region!r}")
        if self.gas not in GAS_MODES:
            raise ValueError(f"Structure {self.name!r}: gas must be one of {GAS_MODES}, got {self.gas!r}")
        bad = [t for t in self.onto if t not in PAINT_TARGETS]
        if bad or not self.onto:
            raise ValueError(f"Structure {self.name!r}: onto must be a non-empty subset of {PAINT_TARGETS}, "
                             f"got {self.onto!r}")
        if self.wall_mm < 0 or not 0 <= self.gas_fraction <= 1:
            raise ValueError(f"Structure {self.name!r}: wall_mm must be >= 0 and gas_fraction in [0, 1]")


@dataclass(frozen=True)
class Grid:
    """The voxel grid of the scan.

    ``shape`` is ``(nz, ny, nx)`` (array order); ``spacing`` ``(sx, sy, sz)`` mm; the grid is rotated by ``yaw_deg``
    about the scanner z axis (this rotation is the NIfTI direction matrix); ``centre`` is the patient-frame position
    (mm) of the grid's centre; ``patient_offset`` moves the patient frame into the scanner (world) frame.
    """

    shape: tuple[int, int, int]
    spacing: Vec3
    centre: Vec3
    yaw_deg: float = 0.0
    patient_offset: Vec3 = (0.0, 0.0, 0.0)

    def __post_init__(self):
        if len(self.shape) != 3 or not all(int(n) >= 1 for n in self.shape):
            raise ValueError(f"Grid.shape must be three positive integers (nz, ny, nx), got {self.shape!r}")
        _check_vec3("Grid.spacing", self.spacing, positive=True)
        _check_vec3("Grid.centre", self.centre)
        _check_vec3("Grid.patient_offset", self.patient_offset)
        if not abs(self.yaw_deg) <= 45:
            raise ValueError(f"Grid.yaw_deg must be within [-45, 45] degrees, got {self.yaw_deg}")

    @property
    def direction(self) -> tuple[float, ...]:
        """Direction cosines (row-major 3x3, SimpleITK order): a rotation about z by ``yaw_deg``."""
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)

    @property
    def origin(self) -> Vec3:
        """World position (mm) of the centre of voxel ``[0, 0, 0]``."""
        nz, ny, nx = self.shape
        half = ((nx - 1) / 2 * self.spacing[0], (ny - 1) / 2 * self.spacing[1], (nz - 1) / 2 * self.spacing[2])
        d = self.direction
        rotated = [sum(d[3 * r + c] * half[c] for c in range(3)) for r in range(3)]
        return tuple(self.centre[i] + self.patient_offset[i] - rotated[i] for i in range(3))  # type: ignore[return-value]


@dataclass(frozen=True)
class Body:
    """Body outline and wall layers.

    The outline at height z is an ellipse in front (``y < 0``, semi-axes ``half_width`` x ``depth_front``) and a
    flatter super-ellipse (exponent 3) behind (``half_width`` x ``depth_back``); profiles are given at ``z_knots``
    (mm, increasing) and interpolated linearly. Layers inward from the surface: skin, subcutaneous fat, muscle
    wall (thicknesses in mm, per side: lateral, front, back), then the cavity.
    """

    z_knots: tuple[float, ...]
    half_width: tuple[float, ...]
    depth_front: tuple[float, ...]
    depth_back: tuple[float, ...]
    skin_mm: float
    fat_mm: Vec3
    muscle_mm: Vec3

    def __post_init__(self):
        n = len(self.z_knots)
        if n < 2 or any(len(v) != n for v in (self.half_width, self.depth_front, self.depth_back)):
            raise ValueError("Body profiles must have one value per z knot (at least two knots)")
        if any(b <= a for a, b in zip(self.z_knots, self.z_knots[1:])):
            raise ValueError(f"Body.z_knots must increase, got {self.z_knots!r}")


@dataclass(frozen=True)
class Spine:
    """Lumbar/thoracic spine: vertebral bodies (cortical shell, cancellous core), discs, canal, posterior elements.

    The vertebral body centre is at ``(0, y(z))`` with ``y(z) = y0 + lordosis_mm * ((z - z_lordosis) / 200)^2``;
    radii ``radii`` (x, y) at z = 0, growing ``growth`` per 100 mm downwards. Vertebrae repeat every ``period_mm``
    (disc fraction ``disc_fraction``) starting at ``phase_mm``.
    """

    y0: float
    lordosis_mm: float
    z_lordosis: float
    radii: tuple[float, float]
    growth: float
    period_mm: float
    phase_mm: float
    disc_fraction: float
    cortex_mm: float
    canal_radius: float
    paraspinal_radii: tuple[float, float]

    def __post_init__(self):
        if self.period_mm <= 0 or not 0 < self.disc_fraction < 0.5:
            raise ValueError("Spine.period_mm must be > 0 and disc_fraction in (0, 0.5)")


@dataclass(frozen=True)
class Rib:
    """One rib (one side): starts behind at height ``z_back`` (mm) and angle ``phi_start`` (rad from the posterior
    midline), runs forward around the body wall to ``phi_end`` while dropping ``drop_mm`` per radian; ``side``
    is +1 (left) or -1 (right); ``height_mm`` is its cranio-caudal thickness."""

    side: int
    z_back: float
    phi_start: float
    phi_end: float
    drop_mm: float
    height_mm: float


@dataclass(frozen=True)
class Diaphragm:
    """Diaphragm surface ``z_d(x, y)``: right/left dome heights (mm), lower towards the midline
    (``midline_drop_mm``) and towards the back (``back_slope`` mm per mm of y > 0)."""

    z_right: float
    z_left: float
    midline_drop_mm: float
    back_slope: float


@dataclass(frozen=True)
class SmallBowel:
    """Small-bowel loops filling the free cavity below ``z_top`` (mm): a smooth random field (``scale_mm``)
    above its ``1 - fraction`` quantile is bowel; loops have a wall, fluid contents and some gas."""

    z_top: float
    fraction: float
    scale_mm: float
    wall_hu: float
    content_hu: float
    gas_fraction: float


@dataclass(frozen=True)
class Acquisition:
    """Scanner effects: Gaussian noise (``noise_sd`` HU in 1.6 mm^3 voxels, scaled with the voxel volume by the
    renderer, slightly correlated in-plane), a smooth bias field
    (multiplicative ``1 + m . (u, v, w, u^2 + v^2)`` and additive ``a . (1, u, v, w)`` HU, with u, v, w the
    patient coordinates scaled to about [-1, 1] over the body), and the texture correlation length (mm)."""

    noise_sd: float
    bias_mult: tuple[float, float, float, float]
    bias_add: tuple[float, float, float, float]
    texture_mm: float

    def __post_init__(self):
        if self.noise_sd < 0 or self.texture_mm <= 0:
            raise ValueError("Acquisition.noise_sd must be >= 0 and texture_mm > 0")


@dataclass(frozen=True)
class CaseParams:
    """Everything needed to render one phantom; ``render_case(params)`` is a pure function of it.

    ``seed`` drives only rendering-time randomness (texture, noise, bowel pattern); the anatomy is fully described
    by the other fields. ``tissue_hu``/``tissue_texture_hu`` hold the HU of non-organ tissues (skin, fat, muscle,
    bone, lung, ...).
    """

    size: str
    seed: int
    grid: Grid
    body: Body
    spine: Spine
    ribs: tuple[Rib, ...]
    diaphragm: Diaphragm
    structures: tuple[Structure, ...]
    small_bowel: SmallBowel
    acquisition: Acquisition
    tissue_hu: dict[str, float]
    tissue_texture_hu: dict[str, float]
    version: int = PARAMS_VERSION
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"CaseParams.size must be one of {SIZES}, got {self.size!r}")
        if self.version != PARAMS_VERSION:
            raise ValueError(f"phantom parameters of version {self.version} cannot be rendered by this version of "
                             f"cps3d (expects {PARAMS_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``from_dict`` inverts it exactly)."""
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseParams:
        """Rebuild parameters from ``to_dict`` output (e.g. read from a ``phantom_params/CASE.json``)."""
        if not isinstance(data, dict):
            raise ValueError(f"phantom parameters must be a JSON object, got {type(data).__name__}")
        return _from_json(cls, data, "params")

    def structure(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"no structure named {name!r}; have {[s.name for s in self.structures]}")


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


_SHAPE_KINDS: dict[str, type] = {"blob": Blob, "tube": Tube}


def _from_json(tp: Any, data: Any, where: str) -> Any:
    """Convert JSON data to the annotated type ``tp`` (dataclasses, tuples, dicts, unions of shapes, scalars)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass type (not an instance)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object for {tp.__name__}, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} for {tp.__name__}")
        kwargs = {k: _from_json(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:  # missing required fields
            raise ValueError(f"{where}: {e}") from e
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if set(args) >= {Blob, Tube}:
            kind = data.get("kind") if isinstance(data, dict) else None
            if kind not in _SHAPE_KINDS:
                raise ValueError(f"{where}: shape 'kind' must be one of {sorted(_SHAPE_KINDS)}, got {kind!r}")
            return _from_json(_SHAPE_KINDS[kind], data, where)
        if data is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _from_json(non_none[0], data, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(data)}")
        return tuple(_from_json(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        return {_from_json(kt, k, where): _from_json(vt, v, f"{where}.{k}") for k, v in data.items()}
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ValueError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ValueError(f"{where}: expected an integer, got {data!r}")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise ValueError(f"{where}: expected a string, got {data!r}")
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise ValueError(f"{where}: expected true/false, got {data!r}")
        return data
    raise TypeError(f"{where}: unsupported annotation {tp!r}")
