"""``rgb.freeze_means`` (OpenGaussian --frozen_init_pts, the ScanNet protocol): the trained model has
exactly one Gaussian per scene point, at that point, while its other parameters are trained."""
import numpy as np

from scene.colmap import read_model
from scene.gaussian_model import load_ply
from scene_factory import known_gaussians, one_line_error, write_gaussian_scene
from train import main as train_main

SHORT = ["--set", "rgb.iterations=40", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
         "--set", "run.progress=false", "--set", "run.num_threads=1"]


def test_frozen_points_stay_at_the_points(tmp_path):
    scene = write_gaussian_scene(tmp_path / "scene", known_gaussians(), n_views=6, n_points=300)
    _, _, pts = read_model(scene / "sparse" / "0", tracks=False)
    run = tmp_path / "run"
    assert train_main(["--stage", "rgb", "-s", str(scene), "-m", str(run), *SHORT, "--set", "rgb.freeze_means=true",
                       "--set", "rgb.densify.enabled=false"]) == 0
    got = load_ply(run / "rgb" / "point_cloud.ply")
    np.testing.assert_array_equal(got["means"].numpy(), pts.xyz.astype(np.float32))
    free = tmp_path / "free"                                   # the same run without the freeze moves them
    assert train_main(["--stage", "rgb", "-s", str(scene), "-m", str(free), *SHORT,
                       "--set", "rgb.densify.enabled=false"]) == 0
    moved = load_ply(free / "rgb" / "point_cloud.ply")
    assert moved["means"].shape == got["means"].shape
    assert not np.array_equal(moved["means"].numpy(), got["means"].numpy())
    init_opacity = np.log(0.1 / 0.9)                           # rgb.init_opacity 0.1, as a logit
    assert np.abs(got["opacities"].numpy() - init_opacity).max() > 1e-3   # the rest was trained


def test_frozen_points_refuse_densification(tmp_path, capsys):
    scene = write_gaussian_scene(tmp_path / "scene", known_gaussians(), n_views=6, n_points=300)
    assert train_main(["--stage", "rgb", "-s", str(scene), "-m", str(tmp_path / "run"), *SHORT,
                       "--set", "rgb.freeze_means=true"]) == 2
    one_line_error(capsys, "rgb.freeze_means", "densify.enabled=True")
