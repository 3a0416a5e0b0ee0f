"""The synthetic world: determinism, geometric consistency of mesh and images, style, coverage, CLI round trips."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema.labels import SCANNET20
from pipeline.cli import main
from stages.extract.synthetic.camera_path import free_space
from stages.extract.synthetic.mesh import build_mesh
from stages.extract.synthetic.primitives import ray_box, ray_cylinder, ray_shell
from stages.extract.synthetic.render import cast_rays, hit_surfaces, render_view
from stages.extract.synthetic.rooms import (
    CABINET,
    COUNTER,
    DESK,
    DOOR,
    GRID_CELL,
    REFRIGERATOR,
    ROOM_TYPES,
    TABLE,
    generate_room,
)
from stages.extract.synthetic.style import MATERIAL_INDEX
from stages.extract.synthetic.world import camera_setup, make_scene, nyu40_to_s3dis13

TINY = (64, 48)


def _frames(scene, camera):
    return [scene.render_frame(i, camera)[0] for i in range(len(scene.poses))]


# ------------------------------------------------------------------------------------------- primitives
def test_ray_primitives_hit_where_expected():
    o = np.array([0.0, 0.0, 0.0])
    d = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # A unit box at x=3 rotated by 45 degrees: its near corner sits at x = 3 - sqrt(0.5).
    t, face = ray_box(o, d, np.array([3.0, 0.0, 0.0]), np.array([0.5, 0.5, 0.5]), np.pi / 4)
    assert t[0] == pytest.approx(3 - np.sqrt(0.5)) and np.isinf(t[1]) and np.isinf(t[2])
    t, face = ray_box(o, d[:1], np.array([3.0, 0.0, 0.0]), np.array([0.5, 0.5, 0.5]), 0.0)
    assert t[0] == pytest.approx(2.5) and face[0] == 0  # the -x face
    t, face = ray_cylinder(o, d, np.array([2.0, 0.0, -1.0]), 0.5, 2.0)
    assert t[0] == pytest.approx(1.5) and face[0] == 0 and np.isinf(t[1])
    t, face = ray_cylinder(np.array([0.0, 0.0, 5.0]), np.array([[0.0, 0.0, -1.0]]), np.zeros(3), 0.5, 1.0)
    assert t[0] == pytest.approx(4.0) and face[0] == 2  # the top cap
    t, face = ray_shell(np.array([1.0, 1.0, 1.0]), np.array([[0.0, 0.0, -2.0], [1.0, 0.0, 0.0]]),
                        np.array([4.0, 3.0, 2.5]))
    np.testing.assert_allclose(t, [0.5, 3.0])
    assert list(face) == [4, 1]  # floor, x = Lx wall


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_world_and_different_seed_differs():
    cam = camera_setup("scannet", TINY)
    a, b, c = (make_scene(seed, 1, frames=3) for seed in (7, 7, 8))
    ma, mb, mc = a.mesh(0.08), b.mesh(0.08), c.mesh(0.08)
    for field in ("vertices", "colors", "faces", "labels", "instances"):
        np.testing.assert_array_equal(getattr(ma, field), getattr(mb, field))
    for fa, fb in zip(_frames(a, cam), _frames(b, cam), strict=True):
        np.testing.assert_array_equal(fa.image, fb.image)
        np.testing.assert_array_equal(fa.depth, fb.depth)
        np.testing.assert_array_equal(fa.labels, fb.labels)
        np.testing.assert_array_equal(fa.pose, fb.pose)
    assert ma.vertices.shape != mc.vertices.shape or not np.array_equal(ma.vertices, mc.vertices)
    assert not np.array_equal(a.poses, c.poses)


# -------------------------------------------------------------------------------- geometric consistency
@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_visible_mesh_vertices_match_rendered_depth_and_labels(index):
    """Vertices visible from a camera (exact ray test) have the rendered depth and label at their pixel."""
    scene = make_scene(3, index, frames=3)
    mesh, normals = build_mesh(scene.layout, scene.style, 0.05)
    vertices = mesh.vertices.astype(np.float64)
    width, height = 160, 120
    K = camera_setup("scannet", (width, height)).color_K
    raw_err, plane_err, agree = [], [], []
    for pose in scene.poses:
        view = render_view(scene.layout, scene.style, pose, K, width, height, shade=False)
        cam = (vertices - pose[:3, 3]) @ pose[:3, :3]
        z = cam[:, 2]
        front = z > 0.1
        u = K[0, 0] * cam[:, 0] / np.where(front, z, 1) + K[0, 2]
        v = K[1, 1] * cam[:, 1] / np.where(front, z, 1) + K[1, 2]
        ui, vi = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
        # Near a pixel centre, so the pixel's ray passes (almost) through the vertex.
        sel = front & (ui >= 0) & (ui < width) & (vi >= 0) & (vi < height)
        sel &= (np.abs(u - ui) < 0.15) & (np.abs(v - vi) < 0.15)
        idx = np.flatnonzero(sel)
        # Exact visibility: the first surface along the ray from the camera centre is the vertex itself.
        origins = np.broadcast_to(pose[:3, 3], (len(idx), 3))
        hits = cast_rays(scene.layout, origins, vertices[idx] - pose[:3, 3])
        visible = idx[np.abs(hits.t - 1) < 1e-5]
        lab = view.labels
        interior = np.ones_like(lab, dtype=bool)
        padded = np.pad(lab, 1, mode="edge")
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] == lab
        # Edges excepted: a pixel whose 3x3 neighbourhood has one label lies inside one surface.
        inner = visible[interior[vi[visible], ui[visible]]]
        rendered = view.depth[vi[inner], ui[inner]].astype(np.float64)
        raw_err.append(np.abs(rendered - z[inner]))
        # The vertex's tangent plane met by the pixel-centre ray: removes the 0.15 px offset on slanted surfaces.
        d_pix = np.column_stack([(ui[inner] - K[0, 2]) / K[0, 0], (vi[inner] - K[1, 2]) / K[1, 1],
                                 np.ones(len(inner))]) @ pose[:3, :3].T
        n = normals[inner]
        plane_z = np.einsum("ij,ij->i", n, vertices[inner] - pose[:3, 3]) / np.einsum("ij,ij->i", n, d_pix)
        plane_err.append(np.abs(rendered - plane_z))
        agree.append(lab[vi[inner], ui[inner]] == mesh.labels[inner])
    raw, plane = np.concatenate(raw_err), np.concatenate(plane_err)
    assert len(raw) > 100
    assert np.mean(raw < 0.01) > 0.9 and np.median(raw) < 0.003, np.percentile(raw, [50, 90, 99])
    assert np.mean(plane < 0.01) > 0.99, np.percentile(plane, [50, 90, 99])
    assert np.concatenate(agree).mean() >= 0.95


def test_cast_rays_agrees_with_image_renderer():
    """The culled image renderer and the plain per-ray caster give the same surfaces."""
    scene = make_scene(4, 2, frames=2)
    K = camera_setup("scannet", TINY).color_K
    pose = scene.poses[1]
    view = render_view(scene.layout, scene.style, pose, K, *TINY, shade=False)
    u, v = np.meshgrid(np.arange(TINY[0]), np.arange(TINY[1]))
    dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], -1)
    dirs = dirs.reshape(-1, 3) @ pose[:3, :3].T
    hits = cast_rays(scene.layout, np.broadcast_to(pose[:3, 3], dirs.shape), dirs)
    np.testing.assert_allclose(hits.t.reshape(TINY[::-1]), view.depth, rtol=1e-5)
    labels = scene.layout.surfaces.label[hit_surfaces(scene.layout, hits)].reshape(TINY[::-1])
    np.testing.assert_array_equal(labels, view.labels)


def test_depth_camera_differs_from_colour_camera_for_scannet():
    scene = make_scene(2, 0, frames=1)
    frame = scene.render_frame(0, camera_setup("scannet", TINY))[0]
    assert frame.image.shape == (48, 64, 3) and frame.labels.shape == (48, 64)
    assert frame.depth.shape == (24, 32) and frame.depth.dtype == np.float32
    assert frame.depth_intrinsics[0, 0] == pytest.approx(571.623718 * 32 / 640)
    assert frame.intrinsics[0, 0] == pytest.approx(1170.187988 * 64 / 1296)
    assert np.all(frame.depth > 0.1) and np.all(frame.depth < 10)


# ------------------------------------------------------------------------------------------------ style
def test_style_changes_colours_only():
    a, b = make_scene(5, 0, frames=3, style="a"), make_scene(5, 0, frames=3, style="b")
    ma, mb = a.mesh(0.08), b.mesh(0.08)
    np.testing.assert_array_equal(ma.vertices, mb.vertices)
    np.testing.assert_array_equal(ma.labels, mb.labels)
    np.testing.assert_array_equal(ma.faces, mb.faces)
    assert np.abs(ma.colors.astype(float).mean(0) - mb.colors.astype(float).mean(0)).max() > 8
    cam = camera_setup("nyu", TINY)
    fa, fb = _frames(a, cam), _frames(b, cam)
    for x, y in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.depth, y.depth)
    ia = np.stack([f.image for f in fa]).reshape(-1, 3).astype(float)
    ib = np.stack([f.image for f in fb]).reshape(-1, 3).astype(float)
    assert np.abs(ia.mean(0) - ib.mean(0)).max() > 8 or np.abs(ia.std(0) - ib.std(0)).max() > 8


def test_confusable_classes_share_materials():
    """cabinet / refrigerator / door are all 'panel', table / desk / counter all 'wood'."""
    seen: dict[int, set[int]] = {}
    for i, rt in enumerate(ROOM_TYPES * 2):
        s = generate_room(np.random.default_rng([1, i]), rt).surfaces
        for lab, mat in zip(s.label.tolist(), s.material.tolist(), strict=True):
            seen.setdefault(lab, set()).add(mat)
    panel, wood = MATERIAL_INDEX["panel"], MATERIAL_INDEX["wood"]
    for lab in (CABINET, REFRIGERATOR, DOOR):
        assert panel in seen[lab]
    for lab in (TABLE, DESK, COUNTER):
        assert wood in seen[lab]


# --------------------------------------------------------------------------------------------- coverage
def test_camera_walk_stays_inside_and_clear_of_furniture():
    for index in range(5):
        scene = make_scene(9, index, frames=8)
        lay = scene.layout
        pos = scene.poses[:, :3, 3]
        assert np.all(pos[:, :2] > 0.2) and np.all(pos[:, :2] < lay.size[:2] - 0.2)
        assert np.all((pos[:, 2] >= 1.3) & (pos[:, 2] <= 1.6))
        cells = np.floor(pos[:, :2] / GRID_CELL).astype(int)
        near = free_space(lay, 0.2)
        assert near[cells[:, 0], cells[:, 1]].all()
        for pose in scene.poses:
            r = pose[:3, :3]
            np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
            assert np.linalg.det(r) == pytest.approx(1.0)
            assert r[2, 2] < -0.05  # looking slightly down
            assert abs(r[2, 0]) < 1e-9  # no roll: the camera x axis stays horizontal


def test_frames_see_structure_and_many_classes():
    cam = camera_setup("scannet", TINY)
    hist: dict[int, int] = {}
    per_frame = []
    for index in range(5):
        for f in _frames(make_scene(11, index, frames=4), cam):
            ids = set(np.unique(f.labels).tolist())
            assert ids & {1, 2}, "every frame sees wall or floor"
            per_frame.append(len(ids))
            for i in ids:
                hist[i] = hist.get(i, 0) + 1
    assert np.mean(per_frame) >= 3
    assert len(set(hist) & set(SCANNET20.ids)) >= 10, sorted(hist)


def test_mesh_size_and_labels():
    scene = make_scene(0, 0, frames=1)
    mesh = scene.mesh(0.04)
    assert 30_000 < len(mesh.vertices) < 400_000
    assert mesh.faces.max() < len(mesh.vertices) and mesh.faces.dtype == np.int32
    assert set(np.unique(mesh.labels).tolist()) >= {1, 2, 22}
    assert len(scene.mesh(0.08).vertices) < len(mesh.vertices) / 2.5
    assert mesh.instances is not None and mesh.instances.min() >= 1


def test_nyu40_to_s3dis13():
    np.testing.assert_array_equal(nyu40_to_s3dis13(np.array([22, 2, 1, 9, 8, 7, 14, 5, 6, 10, 11, 30, 33, 0])),
                                  [0, 1, 2, 5, 6, 7, 7, 8, 9, 10, 11, 11, 12, 255])


# ------------------------------------------------------------------------------------------ CLI + readers
def _synth(kind, out, *extra):
    r = CliRunner().invoke(main, ["synth", kind, str(out), "--scenes", "2", "--frames", "4", "--seed", "1",
                                  "--size", "64x48", "--quiet", *extra])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "wrote" in r.output
    return r


def test_synth_s3dis_reads_back(tmp_path):
    from stages.extract.formats.s3dis import S3DISDataset

    _synth("s3dis", tmp_path)
    ds = S3DISDataset(tmp_path)
    names = ds.scene_names()
    assert len(names) == 2 and names[0].startswith("Area_1/") and names[1].startswith("Area_2/")
    from stages.extract.synthetic.world import s3dis_scene_names

    for index, ((area, rtype, room), name) in enumerate(zip(s3dis_scene_names(1, 2), names, strict=True)):
        assert name == f"Area_{area}/{room}"
        scene = make_scene(1, index, frames=4, room_type=rtype, name=name)
        rec = ds.load_scene(name)
        mesh = scene.mesh(0.04)
        assert len(rec.points) == len(mesh.vertices)
        assert set(np.unique(rec.labels).tolist()) == set(np.unique(nyu40_to_s3dis13(mesh.labels)).tolist())
        frames = list(ds.frames(name))
        assert len(frames) == 4
        cam = camera_setup("s3dis", TINY)
        for fr, ref in zip(frames, _frames(scene, cam), strict=True):
            np.testing.assert_array_equal(fr.image, ref.image)
            np.testing.assert_array_equal(fr.labels, nyu40_to_s3dis13(ref.labels))
            np.testing.assert_allclose(fr.depth, ref.depth, atol=1 / 512)
            np.testing.assert_allclose(fr.pose, ref.pose, atol=1e-6)


def test_synth_nyu_reads_back(tmp_path):
    from stages.extract.formats.nyu import NYUDataset

    _synth("nyu", tmp_path, "--style", "b")
    train = list(NYUDataset(tmp_path, split="train").frames("nyu_train"))
    test = list(NYUDataset(tmp_path, split="test").frames("nyu_test"))
    assert len(train) == 4 and len(test) == 4  # scene 0 -> train, scene 1 -> test
    cam = camera_setup("nyu", TINY)
    refs = _frames(make_scene(1, 0, frames=4, style="b"), cam) + _frames(make_scene(1, 1, frames=4, style="b"), cam)
    for fr, ref in zip(train + test, refs, strict=True):
        np.testing.assert_array_equal(fr.image, ref.image)
        np.testing.assert_array_equal(fr.labels, ref.labels)
        np.testing.assert_allclose(fr.depth, ref.depth, rtol=1e-6)


def test_synth_scannet_reads_back(tmp_path):
    from stages.extract.formats.scannet import ScanNetDataset

    _synth("scannet", tmp_path, "--layouts", "sens,export,25k")
    assert (tmp_path / "scannetv2-labels.combined.tsv").is_file()
    assert (tmp_path / "scannetv2_train.txt").read_text() == "scene0000_00\n"
    assert (tmp_path / "scannetv2_val.txt").read_text() == "scene0001_00\n"
    cam = camera_setup("scannet", TINY)
    scenes = [make_scene(1, index, frames=4) for index in range(2)]
    refs = [_frames(scene, cam) for scene in scenes]
    for layout in ("sens", "export", "25k"):
        ds = ScanNetDataset(tmp_path, layout=layout)
        assert ds.scene_names() == ["scene0000_00", "scene0001_00"]
        for name, scene, ref_frames in zip(ds.scene_names(), scenes, refs, strict=True):
            if layout == "sens":
                mesh = scene.mesh(0.04)
                rec = ds.load_scene(name)
                np.testing.assert_allclose(rec.points, mesh.vertices, atol=1e-6)
                np.testing.assert_array_equal(rec.labels, mesh.labels)
            frames = list(ds.frames(name))
            assert len(frames) == 4
            for fr, ref in zip(frames, ref_frames, strict=True):
                assert fr.image.shape == ref.image.shape
                assert np.abs(fr.image.astype(int) - ref.image.astype(int)).mean() < 12  # JPEG
                np.testing.assert_allclose(fr.depth, ref.depth, atol=0.001)  # millimetres
                np.testing.assert_allclose(fr.pose, ref.pose, atol=1e-5)
                np.testing.assert_array_equal(fr.labels, ref.labels)


def test_synth_rejects_bad_size(tmp_path):
    r = CliRunner().invoke(main, ["synth", "nyu", str(tmp_path), "--size", "64by48"])
    assert r.exit_code != 0 and "size" in r.output


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_scannet_in_processes_is_byte_identical(tmp_path):
    """Rooms written by two worker processes: the same files, byte for byte, as one process writes (zip entries
    carry a fixed time, so two runs never differ by the clock either)."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--scenes", "3", "--frames", "2", "--seed", "4", "--size", "64x48", "--vertex-spacing", "0.1", "--quiet"]
    for root, extra in ((one, []), (two, ["--processes", "2"])):
        r = CliRunner().invoke(main, ["synth", "scannet", str(root), *args, *extra])
        assert r.exit_code == 0, r.output
    a, b = _tree(one), _tree(two)
    assert any(k.endswith("_2d-label-filt.zip") for k in a) and len(a) > 6
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_synth_processes_refused_where_files_are_shared(tmp_path):
    r = CliRunner().invoke(main, ["synth", "nyu", str(tmp_path), "--scenes", "2", "--frames", "1", "--size", "64x48",
                                  "--processes", "2", "--quiet"])
    assert r.exit_code != 0 and "scannet only" in r.output
