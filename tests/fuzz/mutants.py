"""Seeded generator of hostile variants of real asset files (../shared/assets) for the fuzz regression suite.

`cases(assets, vxz_bytes, seed)` returns a deterministic list of `Case`s: each is a small folder's worth of files
(``files``: relative path -> bytes), the file to open (``entry``), the commands to run on it, and whether it
needs the subprocess + memory cap (``bomb``). Nothing generated is committed; only this code is.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

OUTSIDE_NAME = "secret.bin"  # lives in a sibling folder of the case folder; traversal mutants point at it


@dataclass
class Case:
    name: str
    files: Dict[str, bytes]
    entry: str
    commands: Tuple[str, ...]
    bomb: bool = False
    symlinks: Dict[str, str] = field(default_factory=dict)  # relative path -> target ("{outside}" expanded)


# ------------------------------------------------------------------------------------------- byte mutations
def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(0, max(1, len(data)))]


def bit_flips(data: bytes, rng: random.Random, count: int = 8) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def zero_range(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randrange(1, 256))
    return data[:start] + bytes(end - start) + data[end:]


BYTE_MUTATIONS = {"truncate": truncate, "bitflip": bit_flips, "zeros": zero_range}


# ------------------------------------------------------------------------------------------- glTF mutations
def _gltf_mutations(document: dict, rng: random.Random) -> List[Tuple[str, dict]]:
    def edited(edit) -> dict:
        copy = json.loads(json.dumps(document))
        edit(copy)
        return copy

    out = []
    accessor = rng.randrange(len(document["accessors"]))
    out.append(("huge_count", edited(lambda d: d["accessors"][accessor].update(count=2**31 - 1))))
    out.append(("negative_count", edited(lambda d: d["accessors"][accessor].update(count=-5))))
    out.append(("negative_offset", edited(lambda d: d["accessors"][accessor].update(byteOffset=-8))))
    out.append(("misaligned_offset", edited(lambda d: d["accessors"][accessor].update(byteOffset=3))))
    out.append(("huge_view_length", edited(lambda d: d["bufferViews"][0].update(byteLength=2**40))))
    out.append(("bad_stride", edited(lambda d: d["bufferViews"][0].update(byteStride=1))))
    out.append(("buffer_index", edited(lambda d: d["bufferViews"][0].update(buffer=99))))
    out.append(("accessor_index", edited(
        lambda d: d["meshes"][0]["primitives"][0]["attributes"].update(POSITION=12345))))
    out.append(("nan_factor", edited(lambda d: d.update(materials=[{"pbrMetallicRoughness": {
        "baseColorFactor": [float("nan"), 1, 1, 1]}}]) or d["meshes"][0]["primitives"][0].update(material=0))))
    out.append(("inf_matrix", edited(lambda d: d["nodes"][0].update(matrix=[float("inf")] * 16))))
    out.append(("cycle", edited(lambda d: d["nodes"][0].update(children=[0]))))
    out.append(("wrong_types", edited(lambda d: d.update(accessors={"a": 1}))))
    return out


def _deep_json(depth: int) -> bytes:
    return ('{"asset": {"version": "2.0"}, "extras": ' + "[" * depth + "]" * depth + "}").encode()


def _traversal_uris() -> List[Tuple[str, str]]:
    return [("dotdot", f"../outside/{OUTSIDE_NAME}"), ("percent", f"%2e%2e/outside/{OUTSIDE_NAME}"),
            ("percent_slash", f"..%2Foutside%2F{OUTSIDE_NAME}"), ("absolute", "{outside}/" + OUTSIDE_NAME),
            ("file_uri", "file://{outside}/" + OUTSIDE_NAME), ("remote", "http://127.0.0.1:9/a.bin"),
            ("symlink", "link.bin")]


# ------------------------------------------------------------------------------------------- the cases
def cases(assets: Path, vxz: bytes, seed: int = 17) -> List[Case]:
    rng = random.Random(seed)
    out: List[Case] = []
    convert = ("convert",)

    # glTF with an external buffer: byte mutations of both files, JSON mutations, traversal references.
    gltf_dir = assets / "gltf" / "MeshPrimitiveModes"
    gltf_text = (gltf_dir / "MeshPrimitiveModes.gltf").read_bytes()
    buffer = (gltf_dir / "buffer.bin").read_bytes()
    document = json.loads(gltf_text)
    for name, mutate in BYTE_MUTATIONS.items():
        for k in range(2):
            out.append(Case(f"gltf_json_{name}{k}", {"m.gltf": mutate(gltf_text, rng), "buffer.bin": buffer},
                            "m.gltf", convert))
            out.append(Case(f"gltf_bin_{name}{k}", {"m.gltf": gltf_text, "buffer.bin": mutate(buffer, rng)},
                            "m.gltf", convert))
    for name, mutated in _gltf_mutations(document, rng):
        out.append(Case(f"gltf_{name}", {"m.gltf": json.dumps(mutated).encode(), "buffer.bin": buffer},
                        "m.gltf", convert))
    out.append(Case("gltf_deep_json", {"m.gltf": _deep_json(50_000)}, "m.gltf", convert + ("render",)))
    for name, uri in _traversal_uris():
        mutated = json.loads(gltf_text)
        mutated["buffers"][0]["uri"] = uri
        symlinks = {"link.bin": "{outside}/" + OUTSIDE_NAME} if name == "symlink" else {}
        out.append(Case(f"gltf_traversal_{name}", {"m.gltf": json.dumps(mutated).encode()}, "m.gltf",
                        convert + ("render",), symlinks=symlinks))

    # GLB: byte mutations, a chunk length claiming 4 GiB, a wrong extension.
    glb = (assets / "gltf" / "VertexColorTest.glb").read_bytes()
    for name, mutate in BYTE_MUTATIONS.items():
        for k in range(2):
            out.append(Case(f"glb_{name}{k}", {"v.glb": mutate(glb, rng)}, "v.glb", convert))
    out.append(Case("glb_huge_chunk", {"v.glb": glb[:12] + struct.pack("<I", 2**32 - 1) + glb[16:]}, "v.glb",
                    convert))
    out.append(Case("glb_as_obj", {"v.obj": glb}, "v.obj", convert))
    out.append(Case("glb_as_stl", {"v.stl": glb}, "v.stl", convert))

    # OBJ (+ MTL): byte mutations, bad indices, NaN, Latin-1, traversal.
    obj = (assets / "mesh" / "joined_tetrahedra.obj").read_bytes()
    for name, mutate in BYTE_MUTATIONS.items():
        out.append(Case(f"obj_{name}", {"t.obj": mutate(obj, rng)}, "t.obj", convert))
    out.append(Case("obj_index", {"t.obj": obj + b"\nf 1 2 999999\n"}, "t.obj", convert))
    out.append(Case("obj_negative_index", {"t.obj": obj + b"\nf -1 -2 -999999\n"}, "t.obj", convert))
    out.append(Case("obj_nan", {"t.obj": obj.replace(b"v ", b"v nan ", 1)}, "t.obj", convert))
    out.append(Case("obj_inf", {"t.obj": b"v inf 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\n"}, "t.obj", convert))
    out.append(Case("obj_latin1", {"t.obj": b"# mod\xe8le\n" + obj}, "t.obj", convert))
    out.append(Case("obj_binary_garbage", {"t.obj": bytes(rng.randrange(256) for _ in range(2000))}, "t.obj",
                    convert))
    out.append(Case("obj_degenerate", {"t.obj": b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n"}, "t.obj", convert))
    for name, reference in [("mtllib_dotdot", "../outside/x.mtl"), ("mtllib_absolute", "{outside}/x.mtl")]:
        text = f"mtllib {reference}\n".encode() + obj
        out.append(Case(f"obj_{name}", {"t.obj": text}, "t.obj", convert))
    for name, reference in [("map_absolute", "/etc/hostname"), ("map_dotdot", f"../outside/{OUTSIDE_NAME}")]:
        out.append(Case(f"mtl_{name}", {"t.obj": b"mtllib t.mtl\nusemtl m\n" + obj,
                                        "t.mtl": f"newmtl m\nKd 1 0 0\nmap_Kd {reference}\n".encode()},
                        "t.obj", convert))
    out.append(Case("mtl_nan", {"t.obj": b"mtllib t.mtl\nusemtl m\n" + obj, "t.mtl": b"newmtl m\nKd nan 1 1\n"},
                    "t.obj", convert))

    # STL: byte mutations, a huge declared triangle count, NaN coordinates.
    stl = (assets / "mesh" / "large_block.STL").read_bytes()
    for name, mutate in BYTE_MUTATIONS.items():
        out.append(Case(f"stl_{name}", {"b.stl": mutate(stl, rng)}, "b.stl", convert))
    out.append(Case("stl_huge_count", {"b.stl": stl[:80] + struct.pack("<I", 2**32 - 1) + stl[84:]}, "b.stl",
                    convert))
    nan = bytearray(stl)
    struct.pack_into("<f", nan, 84 + 12, float("nan"))
    out.append(Case("stl_nan", {"b.stl": bytes(nan)}, "b.stl", convert))

    # PLY (written from a real STL by trimesh, with vertex colours): mutations and huge element counts.
    ply = _ply_from(assets / "mesh" / "soup.stl")
    header_end = ply.index(b"end_header")
    for name, mutate in BYTE_MUTATIONS.items():
        body = mutate(ply[header_end:], rng)
        out.append(Case(f"ply_{name}", {"s.ply": ply[:header_end] + body}, "s.ply", convert))
    out.append(Case("ply_huge_count", {"s.ply": ply.replace(b"element vertex ", b"element vertex 9999999999", 1)
                                       .replace(b"9999999999", b"99999999999 ", 1)}, "s.ply", convert))
    out.append(Case("ply_face_index", {"s.ply": _ply_bad_face(ply)}, "s.ply", convert))

    # PNG texture mutations through a glTF that uses it.
    png = (assets / "gltf" / "TwoSidedPlane" / "TwoSidedPlane_MetallicRoughness.png").read_bytes()
    textured = json.loads(gltf_text)
    textured.update(images=[{"uri": "t.png"}], textures=[{"source": 0}],
                    materials=[{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}])
    textured["meshes"][0]["primitives"][0]["material"] = 0
    textured["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"] = \
        textured["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
    for name, mutate in BYTE_MUTATIONS.items():
        out.append(Case(f"png_{name}", {"m.gltf": json.dumps(textured).encode(), "buffer.bin": buffer,
                                        "t.png": mutate(png, rng)}, "m.gltf", convert))
    out.append(Case("png_huge_side", {"m.gltf": json.dumps(textured).encode(), "buffer.bin": buffer,
                                      "t.png": png[:16] + struct.pack(">II", 2**20, 2**20) + png[24:]},
                    "m.gltf", convert))

    # .vxz (written by `omnivox convert`): byte mutations, header lies, an octree bomb, a wrong extension.
    vxz_commands = ("info", "export", "render_voxels")
    for name, mutate in BYTE_MUTATIONS.items():
        for k in range(2):
            out.append(Case(f"vxz_{name}{k}", {"o.vxz": mutate(vxz, rng)}, "o.vxz", vxz_commands))
    for name, edit in _vxz_header_edits():
        out.append(Case(f"vxz_{name}", {"o.vxz": _edit_vxz_header(vxz, edit)}, "o.vxz", vxz_commands))
    out.append(Case("vxz_deep_header", {"o.vxz": _vxz_with_header(vxz, _deep_json(50_000))}, "o.vxz",
                    vxz_commands))
    out.append(Case("vxz_as_glb", {"o.glb": vxz}, "o.glb", convert))
    out.append(Case("glb_as_vxz", {"o.vxz": glb}, "o.vxz", vxz_commands))
    # Bombs: run in a subprocess under a memory cap.
    out.append(Case("vxz_octree_bomb", {"o.vxz": _edit_vxz_header(vxz, _claim(2**30))}, "o.vxz",
                    ("export", "render_voxels"), bomb=True))
    out.append(Case("vxz_ratio_bomb", {"o.vxz": _edit_vxz_header(vxz, _claim(2**26))}, "o.vxz",
                    ("export",), bomb=True))
    bomb = json.loads(gltf_text)
    bomb["accessors"][bomb["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["count"] = 10**8
    bomb["bufferViews"][0]["byteLength"] = 12 * 10**8
    bomb["buffers"][0]["byteLength"] = 12 * 10**8
    out.append(Case("gltf_count_bomb", {"m.gltf": json.dumps(bomb).encode(), "buffer.bin": buffer}, "m.gltf",
                    convert, bomb=True))
    return out


def _ply_from(stl: Path) -> bytes:
    import numpy as np
    import trimesh

    mesh = trimesh.load(str(stl), process=False, force="mesh")
    mesh.visual.vertex_colors = np.tile(np.array([[200, 30, 30, 255]], np.uint8), (len(mesh.vertices), 1))
    return mesh.export(file_type="ply", encoding="binary")


def _ply_bad_face(ply: bytes) -> bytes:
    """The last face's last index set to 2^31 - 1."""
    return ply[:-4] + struct.pack("<i", 2**31 - 1)


def _split_vxz(data: bytes):
    start = struct.unpack(">I", data[4:8])[0]
    return data[:4], data[8:start], data[start:]


def _vxz_with_header(data: bytes, header: bytes) -> bytes:
    head, _, body = _split_vxz(data)
    return head + struct.pack(">I", 8 + len(header)) + header + body


def _edit_vxz_header(data: bytes, edit) -> bytes:
    _, header, _ = _split_vxz(data)
    document = json.loads(header)
    edit(document)
    return _vxz_with_header(data, json.dumps(document).encode())


def _claim(count: int):
    def edit(header):
        channels = sum(c for _, c in header["attr"])
        header.update(num_voxel=count, raw_size=count * (12 + channels), chunk_size=1024)
    return edit


def _vxz_header_edits():
    def chunk(**values):
        return lambda h: h["chunks"][0].update(values)

    return [
        ("count_more", lambda h: h.update(num_voxel=h["num_voxel"] + 1, raw_size=h["raw_size"] +
                                          h["raw_size"] // max(1, h["num_voxel"]))),
        ("count_negative", lambda h: h.update(num_voxel=-1)),
        ("ptr_past_end", chunk(ptr=[0, 2**40])),
        ("chunk_index_huge", chunk(idx=[2**31, 0, 0])),
        ("svo_range", chunk(svo=[2**31, 5])),
        ("codec", lambda h: h.update(compression="rar")),
        ("attr_channels", lambda h: h.update(attr=[["base_color", 10**9]])),
        ("nan_level", lambda h: h.update(compression_level=float("nan"))),
    ]
