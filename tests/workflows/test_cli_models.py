import json

from click.testing import CliRunner

from rsrs.model.config import list_models, presets_dir
from rsrs.workflows.catalog import measure_preset, measured_table
from rsrs.workflows.cli import cli


def test_models_lists_every_preset_with_backbones_inputs_and_counts():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    for name in ("tiny", "rsrefseg-b", "rsrefseg-l"):
        assert f"{name}\n" in result.output
    assert "SAM ViT 768x12 (facebook/sam-vit-base), input 1024px" in result.output
    assert "SigLIP 1152x27 (google/siglip-so400m-patch14-384), input 384px" in result.output
    assert "969,006,482 total, 16,613,170 trainable" in result.output


def test_models_json_is_machine_readable():
    result = CliRunner().invoke(cli, ["models", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["rsrefseg-l"]["total_params"] == 1_191_550_098
    assert rows["tiny"]["mask_input"] == 256
    assert rows["rsrefseg2-l"]["total_params"] == 1_447_126_197
    assert rows["rsrefseg2-l"]["masks"] == "SAM 2 Hiera 144x48 (facebook/sam2.1-hiera-large)"
    assert (rows["rsrefseg2-l"]["image_text_input"], rows["rsrefseg2-l"]["mask_input"]) == (512, 1024)


def test_the_demo_is_described_as_trained_with_its_shipped_file_size():
    result = CliRunner().invoke(cli, ["models", "--json"])
    demo = {row["name"]: row for row in json.loads(result.output)}["demo"]
    size_mb = (presets_dir() / "demo.safetensors").stat().st_size / 1e6
    assert demo["checkpoint_mb"] == round(size_mb, 1) and 10 < size_mb < 20
    assert demo["weights"].startswith("trained by rsrs") and "random" not in demo["weights"]


def test_the_shipped_size_table_equals_a_measurement_on_the_meta_device():
    """`rsrs models` reads configs/models/presets.json; refresh it with `python -m rsrs.workflows.catalog`."""
    table = measured_table()
    assert set(table) == set(list_models())
    for name in list_models():
        assert table[name] == measure_preset(name), name


def test_every_command_has_help():
    runner = CliRunner()
    assert "rsrs models" in runner.invoke(cli, ["--help"]).output
    for name in cli.commands:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name
