"""``depth_scenes``: exact depth rebuilt from the scene's layers, ground geometry, edges, determinism."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from bench.data import load_dataset
from bench.data.common import item_rng
from bench.data.depth_scenes import (OBJECT_DEPTH_M, OBJECTS, WALL_DEPTH_M, DepthScenes, crop_fraction,
                                     draw_depth_scene)
from bench.data.scenes import DEFAULT_LENGTH

SIZES = [(96, 128), (224, 224), (70, 45)]


def scenes(size, n=6, split="train"):
    return [draw_depth_scene(size, item_rng(0, split, i)) for i in range(n)]


def test_same_seed_same_item_and_seed_index_split_change_it():
    def item(split="train", index=3, seed=0):
        return load_dataset("depth_scenes", split, (64, 80), limit=5, seed=seed)[index]

    a, b = item(), item()
    assert all(torch.equal(a[k], b[k]) for k in ("image", "depth", "valid"))
    for other in (item(seed=1), item(index=4), item(split="val")):
        assert not torch.equal(a["image"], other["image"])
        assert not torch.equal(a["depth"], other["depth"])


@pytest.mark.parametrize("size", [(96, 128), (70, 45)])
def test_items_have_the_depth_contract_at_non_square_sizes(size):
    data = load_dataset("depth_scenes", "train", size, limit=3)
    assert isinstance(data, DepthScenes) and data.kind == "depth" and len(data) == 3
    for item in data:
        assert set(item) == {"image", "depth", "valid"}
        assert item["image"].shape == (3, *size) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["depth"].shape == item["valid"].shape == size
        assert item["depth"].dtype == torch.float32 and item["valid"].dtype == torch.bool
        assert item["valid"].all() and torch.isfinite(item["depth"]).all()
        assert OBJECT_DEPTH_M[0] <= item["depth"].min() and item["depth"].max() <= WALL_DEPTH_M[1]
    with pytest.raises(IndexError):
        data[3]
    assert len(load_dataset("depth_scenes", "val", size)) == DEFAULT_LENGTH


def test_loads_through_bench_data_and_is_the_scene_drawn():
    data = load_dataset("depth_scenes", "val", (96, 128), limit=3)
    assert len(data) == 3 and data.name == "depth_scenes"
    for i, item in enumerate(data):
        scene = draw_depth_scene((96, 128), item_rng(0, "val", i))
        assert torch.equal(item["depth"], torch.from_numpy(scene.depth))
        assert torch.equal(item["image"], torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("size", SIZES)
def test_depth_and_image_are_the_nearest_layer_at_every_pixel(size):
    """Rebuilt independently of the painter's order: each pixel shows the nearest surface covering it."""
    for scene in scenes(size):
        layers = scene.layers
        assert [lay.kind for lay in layers[:2]] == ["wall", "ground"]
        assert OBJECTS[0] <= len(layers) - 2 <= OBJECTS[1]
        object_depths = [float(lay.depth.flat[0]) for lay in layers[2:]]
        assert object_depths == sorted(object_depths, reverse=True)
        assert all(OBJECT_DEPTH_M[0] <= d <= OBJECT_DEPTH_M[1] for d in object_depths)
        assert WALL_DEPTH_M[0] <= scene.wall_depth <= WALL_DEPTH_M[1] and layers[0].mask.all()
        for lay in layers:
            assert lay.mask.shape == lay.depth.shape == size and lay.rgb.shape == (*size, 3)
        z = np.stack([np.where(lay.mask, lay.depth, np.inf) for lay in layers])
        nearest = z.argmin(0)
        assert np.array_equal(scene.layer, nearest)
        assert np.array_equal(scene.depth, z.min(0)) and scene.depth.dtype == np.float32
        rgb = np.stack([lay.rgb for lay in layers])
        assert np.array_equal(scene.image, np.take_along_axis(rgb, nearest[None, ..., None], 0)[0])


@pytest.mark.parametrize("size", SIZES)
def test_ground_rows_follow_focal_times_height_over_rows_below_horizon(size):
    for scene in scenes(size):
        assert scene.focal == min(size)
        rows = np.arange(size[0])
        expected = np.full(size[0], np.inf, dtype=np.float32)
        below = rows > scene.horizon
        expected[below] = (scene.focal * scene.camera_height / (rows[below] - scene.horizon)).astype(np.float32)
        is_ground = expected < np.float32(scene.wall_depth)
        assert np.array_equal(scene.layers[1].mask, np.broadcast_to(is_ground[:, None], size))
        ground = scene.layer == 1
        assert ground.any()
        y, _ = np.nonzero(ground)
        assert np.array_equal(scene.depth[ground], expected[y])
        assert (scene.depth[scene.layer == 0] == np.float32(scene.wall_depth)).all()
        # everything nearer than the wall on a row above the ground is an object, never ground
        assert not ground[~is_ground].any()


@pytest.mark.parametrize("size", SIZES)
def test_objects_stand_on_the_ground_and_never_sink_into_it(size):
    for scene in scenes(size):
        for lay in scene.layers[2:]:
            rows = np.nonzero(lay.mask.any(1))[0]
            d = lay.depth.flat[0]
            below = rows > scene.horizon
            ground_depth = scene.focal * scene.camera_height / (rows[below] - scene.horizon)
            assert (ground_depth.astype(np.float32) > d).all()


@pytest.mark.parametrize("size", SIZES)
def test_depth_edges_are_object_silhouettes_and_image_edges(size):
    colour_at_depth_edges, colour_inside = [], []
    for scene in scenes(size, 8):
        textures = np.array([lay.texture for lay in scene.layers])
        image = scene.image.astype(np.float32)
        for axis in (0, 1):
            def pairs(a):
                n = a.shape[axis]
                return np.take(a, range(n - 1), axis), np.take(a, range(1, n), axis)

            (d0, d1), (l0, l1) = pairs(scene.depth), pairs(scene.layer)
            depth_edge, layer_edge = d0 != d1, l0 != l1
            # a depth step is a change of surface, except down the ground, whose depth changes every row
            assert not (depth_edge & ~layer_edge & (l0 != 1)).any()
            if axis == 1:
                assert np.array_equal(depth_edge, layer_edge)
            # and a change of surface is always a depth step, between different textures
            assert (depth_edge[layer_edge]).all()
            assert (textures[l0[layer_edge]] != textures[l1[layer_edge]]).all()
            step = np.abs(np.diff(image, axis=axis)).sum(-1)
            colour_at_depth_edges.append(step[layer_edge])
            colour_inside.append(step[~layer_edge])
    assert np.concatenate(colour_at_depth_edges).mean() > 2 * np.concatenate(colour_inside).mean()


def test_object_silhouettes_have_thin_parts_at_224():
    thin = 0
    for scene in scenes((224, 224), 8, split="val"):
        for k in range(2, len(scene.layers)):
            seen = scene.layer == k
            thin += int((seen & ~ndimage.binary_opening(seen, structure=np.ones((4, 4)))).sum())
    assert thin > 500


def test_nearer_surfaces_show_coarser_texture():
    fractions = [crop_fraction(d) for d in (1.0, 2.0, 5.0, 10.0, 20.0)]
    assert fractions == sorted(fractions) and fractions[0] < 0.5 and fractions[-1] == 1.0
