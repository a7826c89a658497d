"""Device meshes with the axes (data, fsdp, tensor), built from a short spec string."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import jax
import numpy as np
from jax.experimental import mesh_utils

MESH_AXES = ("data", "fsdp", "tensor")


def parse_mesh_spec(spec: Union[str, Mapping[str, int]], num_devices: int) -> dict[str, int]:
    """Axis sizes from "data=2,fsdp=2,tensor=2"; one axis may be -1 ("the rest of the devices").

    Axes that are not named get size 1. The product of the sizes must equal `num_devices`.
    """
    if isinstance(spec, str):
        sizes = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"mesh spec {spec!r}: {part!r} is not of the form axis=size")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise ValueError(f"mesh spec {spec!r}: size {value!r} of axis {name!r} is not an "
                                 "integer") from None
    else:
        sizes = {k: int(v) for k, v in spec.items()}
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh spec {spec!r}: unknown axes {sorted(unknown)}; expected names "
                         f"from {MESH_AXES}")
    fill = [k for k, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise ValueError(f"mesh spec {spec!r}: only one axis may be -1, got {fill}")
    bad = [k for k, v in sizes.items() if v == 0 or v < -1]
    if bad:
        raise ValueError(f"mesh spec {spec!r}: axis sizes must be positive or -1 ({bad})")
    known = math.prod(v for v in sizes.values() if v != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"mesh spec {spec!r}: {num_devices} devices cannot be split into "
                             f"a multiple of {known}")
        sizes[fill[0]] = num_devices // known
    full = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
    if math.prod(full.values()) != num_devices:
        raise ValueError(f"mesh spec {spec!r} asks for {math.prod(full.values())} devices "
                         f"({full}) but {num_devices} are available")
    return full


def make_mesh(spec: Union[str, Mapping[str, int]] = "data=-1",
              devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
    """A `Mesh` with axes (data, fsdp, tensor) laid out for the device topology."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, NotImplementedError, ValueError):
        grid = np.asarray(devices, dtype=object).reshape(shape)  # topology-free fallback
    return jax.sharding.Mesh(grid, MESH_AXES)
